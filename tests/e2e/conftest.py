"""Fixtures that start real corral processes and always stop them, by pid, with bounded waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Master, start_master

RUN_WORKER = Path(__file__).with_name("run_worker.py")
START_TIMEOUT = 60.0  # importing Django on a busy 2-core machine can take a while
STOP_TIMEOUT = 30.0


class WorkerProcess:
    """A `run_worker.py` child: its port, its output so far, and a bounded stop."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._new_line = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._new_line.set()

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Wait (bounded) until the process has printed a line containing `text`."""
        self._reader.join(0)
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self._reader.is_alive()):
                raise AssertionError(f"{text!r} never appeared in the output:\n{self.output}")
            self._new_line.wait(0.05)
            self._new_line.clear()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the worker and wait for it; SIGKILL after STOP_TIMEOUT. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        return self.proc.returncode


def start_worker(app: str, cwd: Path | str, env: dict[str, str] | None = None) -> WorkerProcess:
    """Start a worker serving `app` from `cwd`; waits (bounded) for its port."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_") or k == "CORRAL_NO_EXTENSIONS"}
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, str(RUN_WORKER), app],
        cwd=str(cwd),
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    line = first[0] if first else ""
    if not line.startswith("listening on "):
        proc.kill()
        rest = proc.communicate(timeout=STOP_TIMEOUT)[0]
        raise RuntimeError(f"worker for {app} did not start: {line}{rest}")
    return WorkerProcess(proc, int(line.split()[-1]))


@pytest.fixture
def worker() -> Iterator:
    """`worker(app, cwd, env)` starts a worker process; every one started is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(app: str, cwd: Path | str, env: dict[str, str] | None = None) -> WorkerProcess:
        process = start_worker(app, cwd, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def masters() -> Iterator[Callable[..., Master]]:
    """start(cwd, *args, env=None): a `serve` master (serve_harness.start_master); every one started is
    stopped at teardown, by pid, with bounded waits."""
    started: list[Master] = []

    def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Master:
        master = start_master(cwd, *args, env=env)
        started.append(master)
        return master

    yield start
    for master in started:
        master.stop()
