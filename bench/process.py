"""Process-model scenarios (the master issue's speed part), every server side by side in the same run.

coldstart  spawn to the first 200, for 1, 4 and 8 workers (fresh servers, interleaved)
fairness   how evenly the workers share accepted connections: `Connection: close` load (one connection per
           request), requests per worker counted by the app; max/min and the smallest share.
           corral runs twice: the shared socket and `--reuse-port`
crash      kill -9 a serving worker a third into a load run: time until a replacement answers its first
           request (counted by the app), requests lost (the generator's errors). corral runs twice: as is
           and with `--preload` (the app imported in the master: a replacement needs no import)
hup        SIGHUP to the server a third into a load run: failed requests, p99/p99.9/max over the run, time
           until new workers serve and until the old ones are gone
crash and hup load with `Connection: close` (a new connection per request), as fairness does: with
keep-alive connections a replacement worker would get no connection until a client reconnects.

The app is `bench.apps:counted`: each serving process counts its requests in a 16-byte file named after its
pid (and the time of its first request), so no server needs an API for this.
"""

from __future__ import annotations

import math
import os
import signal
import struct
import tempfile
import threading
import time
from typing import Any

import psutil

from bench import load
from bench.context import Ctx, start_each, stop_each

APP = "bench.apps:counted"
COLDSTART_WORKERS = (1, 4, 8)


def read_counts(folder: str) -> dict[int, tuple[int, float]]:
    """pid -> (requests, wall-clock time of its first request)."""
    found = {}
    for name in os.listdir(folder):
        try:
            with open(os.path.join(folder, name), "rb") as f:
                found[int(name)] = struct.unpack("<Qd", f.read(16))
        except (OSError, ValueError, struct.error):
            pass
    return found


def _servers(ctx: Ctx, name: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for server in ctx.process:
        out.append((server, {}))
        if server == "corral" and name == "fairness":
            out.append((server, {"reuse_port": True, "label": "corral --reuse-port"}))
        if server == "corral" and name == "crash":
            out.append((server, {"preload": True, "label": "corral --preload"}))
    return out


def steps(ctx: Ctx, name: str) -> int:
    counts = _coldstart_counts(ctx)
    return len(_servers(ctx, name)) * ctx.rounds * (len(counts) if name == "coldstart" else 1)


def _coldstart_counts(ctx: Ctx) -> tuple[int, ...]:
    return (1,) if ctx.quick else COLDSTART_WORKERS


def run(ctx: Ctx, name: str) -> dict[str, Any]:
    return {"coldstart": coldstart, "fairness": fairness, "crash": crash, "hup": hup}[name](ctx)


def coldstart(ctx: Ctx) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for workers in _coldstart_counts(ctx):
        for rnd in range(1, ctx.rounds + 1):
            for server_name, _ in _servers(ctx, "coldstart"):
                server = ctx.server(server_name, "bench.apps:hello", workers=workers)
                try:
                    if start_each(ctx, [server]):
                        runs.setdefault(f"{server.name} -w {workers}", []).append(
                            {"first_200_s": server.started_s, "workers": workers, "errors": 0}
                        )
                        ctx.progress.step(
                            f"coldstart -w {workers} round {rnd}/{ctx.rounds} {server.name}: "
                            f"{server.started_s * 1000:.0f} ms"
                        )
                finally:
                    stop_each(ctx, [server])
    return {"title": "Cold start: spawn to the first 200", "kind": "coldstart", "runs": runs}


def _under_load(ctx: Ctx, server: Any, duration: float, close: bool = False) -> tuple[threading.Thread, dict]:
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = load.run_load(ctx.tool, server.url, duration, ctx.connections, ctx.load_cpus, close=close)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, box


def fairness(ctx: Ctx) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for rnd in range(1, ctx.rounds + 1):
        for server_name, options in _servers(ctx, "fairness"):
            folder = tempfile.mkdtemp(dir=ctx.logdir, prefix="counts-")
            options = dict(options)
            server = ctx.server(server_name, APP, workers=ctx.process_workers, count_dir=folder, **options)
            try:
                if not start_each(ctx, [server], wait_workers=True):
                    continue
                start = {pid: n for pid, (n, _) in read_counts(folder).items()}  # start-up probes
                thread, box = _under_load(ctx, server, ctx.duration, close=True)
                thread.join(ctx.duration + 90)
                if "error" in box or "result" not in box:
                    ctx.note(f"fairness: {server.name}", str(box.get("error", "load did not finish")))
                    continue
                live = set(server.worker_pids())
                counts = sorted(
                    (n - start.get(pid, 0) for pid, (n, _) in read_counts(folder).items() if pid in live), reverse=True
                )
                counts += [0] * max(0, ctx.process_workers - len(counts))
                total = sum(counts) or 1
                result = {
                    **box["result"],
                    "per_worker": counts,
                    "max_min": counts[0] / counts[-1] if counts[-1] else float("inf"),
                    "min_share": counts[-1] / total * ctx.process_workers,
                }
                runs.setdefault(server.name, []).append(result)
                ctx.progress.step(f"fairness round {rnd}/{ctx.rounds} {server.name}: per worker {counts}")
            finally:
                stop_each(ctx, [server])
    return {
        "title": f"Worker fairness, {ctx.process_workers} workers, Connection: close load",
        "kind": "fairness",
        "workers": ctx.process_workers,
        "runs": runs,
    }


def _disrupt(ctx: Ctx, name: str) -> dict[str, Any]:
    """crash / hup: a load run with a kill -9 of a worker (crash) or a SIGHUP (hup) a third into it."""
    duration = max(ctx.duration, 4.0)
    runs: dict[str, list[dict[str, Any]]] = {}
    for rnd in range(1, ctx.rounds + 1):
        for server_name, options in _servers(ctx, name):
            folder = tempfile.mkdtemp(dir=ctx.logdir, prefix="counts-")
            server = ctx.server(server_name, APP, workers=ctx.process_workers, count_dir=folder, **options)
            try:
                if not start_each(ctx, [server], wait_workers=True):
                    continue
                before = set(server.worker_pids())
                thread, box = _under_load(ctx, server, duration, close=True)
                time.sleep(duration / 3)
                serving = [pid for pid in read_counts(folder) if pid in before] or sorted(before)
                t0 = time.time()
                if name == "crash":
                    victim = psutil.Process(serving[0])
                    victim.kill()
                    gone = {victim.pid}
                else:
                    os.kill(server.pid, signal.SIGHUP)
                    gone = before
                spawned = old_gone = float("nan")
                while thread.is_alive():
                    now = set(server.worker_pids())
                    if math.isnan(spawned) and now - before:
                        spawned = time.time() - t0
                    if math.isnan(old_gone) and not (now & gone):
                        old_gone = time.time() - t0
                    thread.join(0.01)
                if "error" in box or "result" not in box:
                    ctx.note(f"{name}: {server.name}", str(box.get("error", "load did not finish")))
                    continue
                fresh = [first for pid, (n, first) in read_counts(folder).items() if pid not in before and n]
                result = {
                    **box["result"],
                    "replacement_s": min(fresh) - t0 if fresh else float("nan"),
                    "spawned_s": spawned,
                    "old_gone_s": old_gone,
                    "server_alive": server.alive(),
                    "workers_after": len(server.worker_pids()) if server.alive() else 0,
                }
                runs.setdefault(server.name, []).append(result)
                ctx.progress.step(
                    f"{name} round {rnd}/{ctx.rounds} {server.name}: {result['errors']} errors, new worker serving "
                    f"after {result['replacement_s'] * 1000:.0f} ms, p99 {result.get('p99_ms', float('nan')):.1f} ms"
                )
            finally:
                stop_each(ctx, [server])
    what = "kill -9 of one worker" if name == "crash" else "SIGHUP to the server"
    return {
        "title": f"{'Crash recovery' if name == 'crash' else 'HUP reload'} under load ({what} at "
        f"{duration / 3:.1f} s of {duration:g} s, {ctx.process_workers} workers)",
        "kind": name,
        "workers": ctx.process_workers,
        "duration": duration,
        "runs": runs,
    }


def crash(ctx: Ctx) -> dict[str, Any]:
    return _disrupt(ctx, "crash")


def hup(ctx: Ctx) -> dict[str, Any]:
    return _disrupt(ctx, "hup")
