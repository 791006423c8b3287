"""Start real `python -m corral.master` processes for tests, watch them, and always stop them by pid.

Every wait is bounded and waits for a condition (a status document, an HTTP answer, a log line), never
for a fixed time. Teardown stops the master (TERM, then KILL) and then every worker pid it ever had.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from corral.master.status.control import ControlError, query
from corral.master.status.pidfile import read_pid  # noqa: F401  (re-exported for tests)

WAIT = 60.0  # generous: a busy 2-core machine shared with other test runs
STOP_WAIT = 30.0

#: The lifespan half of the ASGI apps the e2e tests write to files: `LIFESPAN + APP_TEXT`, and in the app
#: `if scope["type"] == "lifespan": return await lifespan(receive, send)`.
LIFESPAN = """
async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return
"""

APP = (
    LIFESPAN
    + """
import asyncio, os, sys, time

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    path = scope["path"]
    if path == "/slow":
        print(f"slow request started in {os.getpid()}", flush=True)
        await asyncio.sleep(float(scope["query_string"] or b"2"))
    elif path == "/block":
        print(f"blocking the loop of {os.getpid()}", flush=True)
        block_the_event_loop()
    elif path == "/exit":
        os._exit(7)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})

def block_the_event_loop():
    time.sleep(120)

async def refuses_to_start(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
"""
)


def write_apps(folder: Path) -> Path:
    (folder / "apps.py").write_text(textwrap.dedent(APP))
    (folder / "broken.py").write_text("import no_such_module_anywhere\n")
    return folder


def free_port() -> int:
    """A port free right now (the master must bind a fixed port: it cannot report port 0 back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def get(port: int, path: str = "/", timeout: float = WAIT, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def set_subreaper(on: bool) -> None:
    """Orphans of our descendants (the new master after USR2) become our children, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)


def complete_lines(path: Path) -> list[str] | None:
    """The complete lines of a file a server hook appends to, or None while it has none: a hook's
    open(..., "a") creates the file before its line is written, so a reader can see it empty or half-written."""
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return complete.splitlines() if complete else None


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # CORRAL_NO_EXTENSIONS stays: CI runs the whole suite once with it (the pure-Python request parser).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CORRAL_", "_CORRAL_", "LISTEN_")) or k == "CORRAL_NO_EXTENSIONS"
    }
    env.update(extra or {})
    return env


def start_master(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Master:
    """`serve -b 127.0.0.1:<a free port> --pid cwd/serve-<port>.pid ARGS`, run in `cwd` (the app last in ARGS);
    a test may start several in one folder. The `masters` fixture (conftest.py) also stops them."""
    port = free_port()
    pidfile = cwd / f"serve-{port}.pid"
    return Master(["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), *args], cwd, port, pidfile, env=env)


class Master:
    """A running `serve` master: output, status, signals, and a bounded stop of it and its workers."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        port: int | None = None,
        pidfile: Path | None = None,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.port = port
        self.pidfile = pidfile
        self.cwd = cwd
        command = argv or [sys.executable, "-m", "corral.master", *args]
        self.proc = subprocess.Popen(
            command,
            cwd=str(cwd),
            env=clean_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self.seen_pids: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, text: str, timeout: float = WAIT) -> None:
        wait_until(lambda: text in self.output or self._died(), f"{text!r} in the output", timeout)
        if text not in self.output:
            raise AssertionError(f"master exited before {text!r} appeared:\n{self.output}")

    def _died(self) -> bool:
        return self.proc.poll() is not None and not self._reader.is_alive()

    def status(self, pidfile: Path | None = None) -> dict[str, Any] | None:
        try:
            document = query(str(pidfile or self.pidfile), timeout=10)
        except ControlError:
            return None
        self.seen_pids.update(w["pid"] for w in document["workers"])
        return document

    def wait_workers(
        self,
        count: int,
        condition: Callable[[list[dict[str, Any]]], bool] = lambda ws: True,
        pidfile: Path | None = None,
        timeout: float = WAIT,
    ) -> list[dict[str, Any]]:
        """Wait until exactly `count` workers are ready (and none other) and `condition` holds."""

        def check() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None and pidfile is None:
                raise AssertionError(f"master exited with {self.proc.returncode}:\n{self.output}")
            document = self.status(pidfile)
            if document is None:
                return None
            workers = document["workers"]
            if len(workers) == count and all(w["state"] == "ready" for w in workers) and condition(workers):
                return workers
            return None

        return wait_until(check, f"{count} ready workers", timeout)

    def wait_serving(self, timeout: float = WAIT) -> None:
        def answers() -> bool:
            try:
                return get(self.port, "/", timeout=5)[0] == 200  # type: ignore[arg-type]  # the status is an int
            except OSError:
                return False

        wait_until(answers, "an HTTP answer", timeout)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = STOP_WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> int | None:
        """TERM, bounded wait, KILL; then every worker pid this master was seen with."""
        try:
            self.seen_pids.update(child.pid for child in psutil.Process(self.pid).children())
        except psutil.Error:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_WAIT)
        kill_pids(self.seen_pids)
        self._reader.join(STOP_WAIT)
        return self.proc.returncode


def kill_pids(pids: set[int]) -> None:
    """SIGKILL whichever of these pids still run (and are ours), and wait for them, bounded."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and "corral" in " ".join(proc.cmdline() or [proc.name()]):
                proc.kill()
                procs.append(proc)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=STOP_WAIT)


class Load:
    """A few threads doing keep-alive GETs until stopped; counts answers and failures.

    A GET that the server closed without sending a single byte back (`RemoteDisconnected`, reset, broken
    pipe) is retried on a new connection and counted in `retried`; RFC 9112 section 9.3.1 allows it for
    idempotent requests, and urllib3 and browsers do it. Two cases could reach it: a reused keep-alive
    connection that a stopping worker closed as idle as the client sent on it (`retried_reused`), and a
    connection a stopping worker had just accepted but not yet read (`retried_fresh`). A graceful stop
    serves both (worker/serve/server.py: the request is answered with `connection: close`; an idle connection is
    closed only after a grace with nothing sent), so the reload tests assert both stay 0. Anything else (a
    refused connection, a timeout, an error after the response began, a non-200 answer) is a failure.
    """

    def __init__(self, port: int, threads: int = 3) -> None:
        self.port = port
        self.ok = 0
        self.retried = 0
        self.retried_reused = 0
        self.retried_fresh = 0
        self.failures: list[str] = []
        self.pids: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        reused = False
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
                reused = False
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                status = response.status
                if response.will_close:
                    conn.close()
                    conn = None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                conn = None
                with self._lock:
                    self.retried += 1
                    if reused:
                        self.retried_reused += 1
                    else:
                        self.retried_fresh += 1
                continue
            except OSError as exc:
                conn.close()
                conn = None
                with self._lock:
                    self.failures.append(repr(exc))
                continue
            reused = True
            with self._lock:
                if status == 200:
                    self.ok += 1
                    self.pids.add(body)
                else:
                    self.failures.append(f"status {status}")
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)
