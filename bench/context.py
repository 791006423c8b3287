"""What every scenario gets: the settings of the run, the pinning, the notes, and the progress line."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import procs, servers


class Progress:
    """One line on a terminal (rewritten in place), one line per step otherwise."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def step(self, message: str) -> None:
        self.done += 1
        self.show(message)

    def show(self, message: str) -> None:
        line = f"[{time.monotonic() - self.t0:5.0f}s {self.done}/{self.total}] {message}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:200])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


@dataclass
class Ctx:
    asgi: list[str]  # servers to compare on ASGI apps (installed, selected)
    wsgi: list[str]  # servers to compare on the WSGI app
    workers: int
    process_workers: int
    rounds: int
    duration: float
    connections: int
    idle_connections: int
    server_cpus: set[int] | None
    load_cpus: set[int] | None
    tool: str  # "wrk" or "builtin"
    logdir: str
    quick: bool = False
    process: list[str] = field(default_factory=list)  # servers in coldstart/fairness/crash/hup
    disturbed: float = 0.5  # a run during which other processes used more cores than this is run again
    retries: int = 2
    notes: dict[str, str] = field(default_factory=dict)
    progress: Progress = field(default_factory=lambda: Progress(1))

    def server(
        self,
        name: str,
        app: str,
        workers: int | None = None,
        label: str = "",
        **options: Any,
    ) -> servers.Server:
        spec = servers.SPECS[name]
        env = {}
        if "count_dir" in options:
            env["BENCH_COUNT_DIR"] = options.pop("count_dir")
        return servers.Server(spec, app, workers or self.workers, self.server_cpus, self.logdir, options, env, label)

    def note(self, key: str, text: str) -> None:
        self.notes[key] = text
        self.progress.show(f"note: {key}: {text.splitlines()[0][:120] if text else ''}")


def med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def start_each(ctx: Ctx, made: list[servers.Server], wait_workers: bool = False) -> list[servers.Server]:
    """Start the servers one by one; one that fails is noted and left out (the others go on)."""
    running = []
    for server in made:
        procs.check_signalled()
        try:
            server.start(wait_workers)
            running.append(server)
        except Exception as exc:  # noqa: BLE001 - a server that fails to start is noted, and the others measured
            server.stop()
            ctx.note(f"{server.name} did not start", str(exc)[-1500:])
    return running


def stop_each(ctx: Ctx, running: list[servers.Server]) -> None:
    for server in running:
        if server.proc is not None and server.proc.poll() is not None:
            ctx.notes[f"{server.name}: exited by itself"] = f"code {server.proc.returncode}\n{server.log_tail()}"
        server.stop()


def least_disturbed(
    ctx: Ctx, label: str, server: servers.Server, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """`measure()` once, again (up to ctx.retries times) while other processes were busy; the least
    disturbed result wins. `measure` must fill `other_cores` and `other_on_server_cpus`."""

    def disturbance(r: dict[str, Any]) -> float:
        on_server = r["other_on_server_cpus"]
        return max(r["other_cores"] - ctx.disturbed, 0) + (on_server if on_server is not None else 0)

    tries = []
    for _ in range(ctx.retries + 1):
        procs.check_signalled()
        tries.append(measure())
        on_server = tries[-1]["other_on_server_cpus"]
        if tries[-1]["other_cores"] <= ctx.disturbed and (on_server is None or on_server <= 0.1):
            break
        ctx.progress.show(
            f"{label} {server.name}: other processes used {tries[-1]['other_cores']:.2f} cores "
            f"({on_server or 0:.2f} on the servers' cores), running it again"
        )
    best = min(tries, key=disturbance)
    best["retried"] = len(tries) - 1
    return best


def interleave(
    ctx: Ctx,
    label: str,
    running: list[servers.Server],
    one_round: Callable[[servers.Server], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
) -> dict[str, list[dict[str, Any]]]:
    """Rounds of A B C A B C ...: a server that fails is noted, stopped and left out of later rounds."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for rnd in range(1, ctx.rounds + 1):
        for server in list(running):
            try:
                result = one_round(server)
            except Exception as exc:  # noqa: BLE001 - a server that fails a round is noted, and the others measured
                ctx.note(f"{label}: {server.name} failed in round {rnd}", f"{type(exc).__name__}: {exc}"[-1500:])
                running.remove(server)
                server.stop()
                continue
            runs.setdefault(server.name, []).append(result)
            ctx.progress.step(f"{label} round {rnd}/{ctx.rounds} {server.name}: {describe(result)}")
    return runs
