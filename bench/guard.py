"""The CPU-cost regression guard: instructions corral's worker executes per request, counted by valgrind.

    python -m bench guard                        # measure every path, compare with bench/cost_baseline.json
    python -m bench guard --paths asgi-keepalive,websocket
    python -m bench guard --update --reason "why the figures moved"     # record them (a reviewed edit)

Request rates swing 2x between rounds on a shared machine, CPU time per request by several per cent, and this VM has
no hardware counters; an instruction count under valgrind holds still. Each server is a real `serve` (one worker,
default settings, PYTHONHASHSEED=0) under `valgrind --tool=callgrind --instr-atstart=no`: start-up runs uncounted.
For each path a sequential client (bench/sequential.py: one unit in flight, so the server sees the same reads in the
same order every time) opens a connection and warms it up; then counting is switched on through valgrind's gdbserver
(`vgdb`), a fixed number of units is sent, the worker is let go quiet, and its instructions (every thread) are read
and counting switched off again. An empty window as long as the units took (on, nothing sent, quiet, read, off)
follows each: what switching costs and the work that follows the clock (the worker's once-a-second tick and
heartbeat) are subtracted with it. Each path is measured in --windows such windows; their mean is the figure, and
the spread between windows is reported (a path whose spread exceeds the tolerance is flagged).

The master is not counted: it does no per-request work.

Figures depend on the Python build, valgrind, OpenSSL and the compiled dependencies (uvloop, httptools, h2,
websockets), so the baseline keeps one entry per machine, Python minor version and valgrind version, with the
exact versions it was recorded with; a comparison names any that differ. Exit status: 0 no path rose by more
than the tolerance, 1 some did, 2 bad usage or no valgrind, 3 no baseline for this environment (measured,
nothing compared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench import procs, sequential, servers

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cost_baseline.json")
TOLERANCE_PCT = 3.0
WINDOWS = 3
QUIET_CPU_S = 0.002  # the worker is quiet when it used less than this in QUIET_GAP_S
QUIET_GAP_S = 0.03
PACKAGES = ("uvloop", "httptools", "h2", "hpack", "websockets")


@dataclass(frozen=True)
class GuardPath:
    name: str
    server: str  # a key of SERVER_KINDS
    client: str  # a key of sequential.CLIENTS
    units: int  # per window (HTTP/2: batches of 16 streams)
    warm: int  # units on the connection before counting starts
    title: str
    # Send each unit only once the worker is quiet. The WSGI paths need it: a request that arrives while the
    # previous one's thread is still on its way back to sleep takes another hand-off than one that finds
    # every thread asleep, and which one happens is the OS scheduler's choice (windows then differ by 3 %).
    quiet_each: bool = False


PATHS: dict[str, GuardPath] = {
    p.name: p
    for p in (
        GuardPath("asgi-keepalive", "asgi", "h1", 200, 10, "ASGI hello-world, HTTP/1.1 keep-alive"),
        GuardPath("asgi-close", "asgi", "h1-close", 80, 100, "ASGI hello-world, Connection: close (a connection each)"),
        GuardPath("h2c", "asgi", "h2", 12, 4, "ASGI hello-world over h2c, 16 streams per write"),
        GuardPath("websocket", "asgi", "ws", 600, 10, "ASGI WebSocket echo, 16-byte messages"),
        GuardPath("tls-keepalive", "tls", "h1", 150, 10, "ASGI hello-world over TLS, HTTP/1.1 keep-alive"),
        GuardPath("h2-tls", "tls", "h2", 10, 4, "ASGI hello-world over h2 (TLS, ALPN), 16 streams per write"),
        GuardPath(
            "wsgi-keepalive",
            "wsgi",
            "h1",
            200,
            10,
            "WSGI hello-world, HTTP/1.1 keep-alive (--threads 10)",
            quiet_each=True,
        ),
        GuardPath("wsgi-close", "wsgi", "h1-close", 80, 100, "WSGI hello-world, Connection: close", quiet_each=True),
        GuardPath(
            "wsgi-threads1",
            "wsgi1",
            "h1",
            200,
            10,
            "WSGI hello-world, HTTP/1.1 keep-alive, --threads 1 (the app on the worker's own thread)",
        ),
    )
}

# One server per kind, started once for all of its paths: (app, TLS). bench.apps:ws_echo answers plain HTTP
# with the hello-world (the same two messages as bench.apps:hello) and echoes WebSocket messages.
SERVER_KINDS: dict[str, tuple[str, bool]] = {
    "asgi": ("bench.apps:ws_echo", False),
    "tls": ("bench.apps:ws_echo", True),
    "wsgi": ("bench.apps:hello_wsgi", False),
    "wsgi1": ("bench.apps:hello_wsgi", False),  # --threads 1 (KIND_OPTIONS)
}
# What a kind's `serve` gets beyond the defaults (bench/servers.py's options).
KIND_OPTIONS: dict[str, dict[str, Any]] = {"wsgi1": {"threads": 1}}


# ---------------------------------------------------------------------------- the environment


def valgrind_version() -> str | None:
    if shutil.which("valgrind") is None:
        return None
    out = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.strip().removeprefix("valgrind-") or "?"


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    found = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "valgrind": valgrind_version() or "not installed",
        "openssl": ssl.OPENSSL_VERSION,
    }
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    # The served corral parses request heads in C where its module was built and CORRAL_NO_EXTENSIONS is
    # unset (the guarded `serve` inherits this environment): two sets of figures, each guarded.
    from corral.worker.http1 import native

    found["request_parser"] = "compiled" if native.parse_head is not None else "pure Python"
    return found


def env_key(env: dict[str, Any]) -> str:
    """What a baseline entry is kept per: figures from another key are not comparable at all."""
    minor = ".".join(env["python"].split(".")[:2])
    vg = ".".join(env["valgrind"].split(".")[:2])
    key = f"{env['machine']} python {minor} valgrind {vg}"
    return key + " pure-python" if env.get("request_parser") == "pure Python" else key


def describe_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "-C", procs.ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "?"
        )
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---------------------------------------------------------------------------- counting through vgdb


class Callgrind:
    """One process under callgrind, driven through its embedded gdbserver (vgdb monitor commands)."""

    def __init__(self, pid: int, prefix: str) -> None:
        self.pid, self.prefix = pid, prefix

    def command(self, *words: str) -> str:
        # --max-invoke-ms: how long vgdb waits for the process to poll before waking it from a blocking
        # system call (an idle worker sits in epoll_wait); 10 ms instead of 100 keeps each command short.
        argv = ["vgdb", f"--vgdb-prefix={self.prefix}", f"--pid={self.pid}", "--max-invoke-ms=10", *words]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def instructions(self) -> int:
        """Instructions counted since the last zero, summed over the process's threads."""
        total, threads = 0, 0
        for line in self.command("status", "internal").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith("events-") and name[7:].isdigit():  # events-<thread>: the thread's total
                total += int(value)
                threads += 1
        if not threads:
            raise RuntimeError("callgrind reported no thread's events (is instrumentation on?)")
        return total

    def window_on(self) -> None:
        self.command("zero")
        self.command("instrumentation", "on")

    def window_off(self) -> int:
        count = self.instructions()
        self.command("instrumentation", "off")
        return count


def _cpu_ns(pid: int) -> tuple[int, bool]:
    """Time on CPU of every thread of `pid` (schedstat, nanoseconds), and whether one of them is running or
    waiting for a CPU (state R): on a busy machine a starved worker uses no CPU without being done."""
    total, running = 0, False
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                running |= f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total, running


def wait_quiet(pid: int, gap: float = QUIET_GAP_S, cpu: float = QUIET_CPU_S, timeout: float = 30.0) -> None:
    """Until the process used less than `cpu` seconds of CPU in `gap` with no thread running or runnable
    (it finished with the last unit: a closed connection's teardown, a thread's hand-back), bounded."""
    deadline = time.monotonic() + timeout
    before, _ = _cpu_ns(pid)
    while time.monotonic() < deadline:
        time.sleep(gap)
        now, running = _cpu_ns(pid)
        if now - before <= cpu * 1e9 and not running:
            return
        before = now
    raise RuntimeError(f"pid {pid} did not go quiet within {timeout:g}s")


# ---------------------------------------------------------------------------- a server under callgrind


def _callgrind_spec(folder: str, serve_args: list[str]) -> servers.Spec:
    corral = servers.SPECS["corral"]
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        f"--vgdb-prefix={folder}/vgdb",
        f"--log-file={folder}/valgrind.%p.log",
        f"--callgrind-out-file={folder}/callgrind.%p",
    ]

    def argv(app: str, port: int, workers: int, options: dict[str, Any]) -> list[str]:
        return valgrind + corral.argv(app, port, workers, options) + serve_args

    return servers.Spec("corral-callgrind", "asgi", corral.module, argv)


def fixed_env() -> dict[str, str | None]:
    """What every counted server's environment changes (servers.base_env): no PYTHON* knob of the caller's
    (PYTHONMALLOC, PYTHONDEVMODE, ...), a fixed hash seed, a fixed zone and locale."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PYTHON") and k != "PYTHONPATH"}
    env.update(PYTHONHASHSEED="0", TZ="UTC", LC_ALL="C.UTF-8")
    return env


def start(kind: str, folder: str, serve_args: list[str]) -> tuple[servers.Server, Callgrind]:
    """A `serve` of this kind under callgrind (one worker), answering; and its worker, to count."""
    app, tls = SERVER_KINDS[kind]
    options: dict[str, Any] = dict(KIND_OPTIONS.get(kind, {}))
    if tls:
        from bench.throughput import self_signed

        options["tls"] = self_signed(folder)
    server = servers.Server(
        _callgrind_spec(folder, serve_args), app, 1, None, folder, options, fixed_env(), label=f"guard-{kind}"
    )
    server.start()
    deadline = time.monotonic() + 60
    while True:
        workers = [w for w in procs.workers(server.pid) if w.pid != server.pid]
        if len(workers) == 1:
            return server, Callgrind(workers[0].pid, f"{folder}/vgdb")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"expected one worker under pid {server.pid}, found {[w.pid for w in workers]}")
        time.sleep(0.1)


def measure_path(path: GuardPath, server: servers.Server, worker: Callgrind, windows: int) -> dict[str, Any]:
    """`windows` counted windows of `path.units` units, each followed by an empty window as long as its units
    took: what switching counting on and off costs, and the work that follows the clock (the worker's tick and
    heartbeat, about 100k instructions a second here), is subtracted window by window."""
    tls = bool(server.options.get("tls"))
    per_request, seconds, empties = [], [], []
    # Between units: no CPU used for 2 ms and no thread runnable (an idle worker uses none between ticks).
    before = (lambda: wait_quiet(worker.pid, gap=0.002, cpu=0.0)) if path.quiet_each else None
    requests = 0
    for _ in range(windows):
        client = sequential.CLIENTS[path.client](server.port, tls=tls)
        requests = path.units * client.requests_per_unit
        try:
            client.run(path.warm)
            wait_quiet(worker.pid)
            worker.window_on()
            t0 = time.monotonic()
            client.run(path.units, before)
            took = time.monotonic() - t0
            wait_quiet(worker.pid)
            count = worker.window_off()
            worker.window_on()  # the empty window: the same connection open, nothing sent, as long
            time.sleep(took)
            wait_quiet(worker.pid)
            empty = worker.window_off()
        finally:
            client.close()
        wait_quiet(worker.pid)
        per_request.append((count - empty) / requests)
        seconds.append(took)
        empties.append(empty)
    # The mean, not the median: Python's collector runs every so many allocations, and its bigger passes fall
    # into every second or third window; the windows together hold whole cycles of it.
    figure = statistics.fmean(per_request)
    return {
        "instructions": round(figure),
        "windows": [round(x) for x in per_request],
        "spread_pct": (max(per_request) - min(per_request)) / figure * 100,
        "requests_per_window": requests,
        "empty_window": round(statistics.median(empties)),
        "window_s": round(statistics.median(seconds), 2),
        "title": path.title,
    }


def measure(names: list[str], windows: int, serve_args: list[str], progress: Any = None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    folder = tempfile.mkdtemp(prefix="corral-guard-")
    try:
        for kind in SERVER_KINDS:
            wanted = [n for n in names if PATHS[n].server == kind]
            if not wanted:
                continue
            t0 = time.monotonic()
            server, worker = start(kind, folder, serve_args)
            if progress:
                progress(f"{kind} server under callgrind: worker {worker.pid}, up in {time.monotonic() - t0:.1f}s")
            try:
                for name in wanted:
                    t0 = time.monotonic()
                    results[name] = measure_path(PATHS[name], server, worker, windows)
                    if progress:
                        r = results[name]
                        progress(
                            f"{name}: {r['instructions']:,} instructions/request "
                            f"(windows {', '.join(f'{w:,}' for w in r['windows'])}; "
                            f"spread {r['spread_pct']:.2f} %) in {time.monotonic() - t0:.1f}s"
                        )
            finally:
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------- the baseline and the verdict


def load_baseline(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"tolerance_pct": TOLERANCE_PCT, "environments": {}}


def compare(
    measured: dict[str, Any],
    env: dict[str, Any],
    baseline: dict[str, Any],
    tolerance: float,
) -> tuple[int, list[str]]:
    """(exit status, report lines) for `measured` (path -> result) against the baseline's entry for `env`."""
    key = env_key(env)
    entry = baseline.get("environments", {}).get(key)
    lines: list[str] = []
    if entry is None:
        known = ", ".join(baseline.get("environments", {})) or "none"
        lines.append(
            f"no baseline for this environment ({key}; the baseline has: {known}): nothing compared. "
            f"Record one with: python -m bench guard --update --reason 'first figures for {key}'"
        )
        return 3, lines
    differ = [
        f"{k} {entry['versions'].get(k, '?')} in the baseline, {v} here"
        for k, v in env.items()
        if entry.get("versions", {}).get(k) != v
    ]
    if differ:
        lines.append(
            "note: versions differ from the baseline's (a change in the figures may be theirs): " + "; ".join(differ)
        )
    head = f"{'path':16} {'baseline':>10} {'now':>10} {'change':>8}  verdict"
    lines += [head, "-" * len(head)]
    rises, drops = [], []
    for name, result in measured.items():
        base = entry["paths"].get(name, {}).get("instructions")
        now = result["instructions"]
        if base is None:
            lines.append(f"{name:16} {'-':>10} {now:>10,} {'':>8}  not in the baseline (--update records it)")
            continue
        change = (now - base) / base * 100
        verdict = "ok"
        if change > tolerance:
            verdict = f"ROSE by more than {tolerance:g} %"
            rises.append((name, base, now, change))
        elif change < -tolerance:
            verdict = "dropped: --update keeps the gain"
            drops.append(name)
        noisy = result.get("spread_pct", 0) > tolerance
        if noisy:
            verdict += f" (windows spread {result['spread_pct']:.1f} %: noisier than the tolerance)"
        lines.append(f"{name:16} {base:>10,} {now:>10,} {change:>+7.2f}%  {verdict}")
    if rises:
        lines.append("")
        for name, base, now, change in rises:
            lines.append(
                f"FAIL {name}: {now:,} instructions per request, baseline {base:,} ({change:+.1f} %, "
                f"tolerance {tolerance:g} %)."
            )
        lines.append(
            "If the rise is deliberate, record it: python -m bench guard --update --reason '<why>' "
            "and commit bench/cost_baseline.json with the reason in the commit message."
        )
        return 1, lines
    return 0, lines


def update(baseline: dict[str, Any], measured: dict[str, Any], env: dict[str, Any], reason: str) -> dict[str, Any]:
    key = env_key(env)
    entry = baseline.setdefault("environments", {}).setdefault(key, {"paths": {}})
    entry["paths"].update(
        {
            name: {"instructions": r["instructions"], "spread_pct": round(r["spread_pct"], 2)}
            for name, r in measured.items()
        }
    )
    entry.update(
        recorded=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        corral=describe_commit(),
        reason=reason,
        versions=env,
    )
    entry["paths"] = dict(
        sorted(entry["paths"].items(), key=lambda kv: list(PATHS).index(kv[0]) if kv[0] in PATHS else len(PATHS))
    )
    baseline.setdefault("tolerance_pct", TOLERANCE_PCT)
    return baseline


# ---------------------------------------------------------------------------- the command


def parse(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="python -m bench guard",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--paths", help=f"comma-separated (default: all of {','.join(PATHS)})")
    p.add_argument("--windows", type=int, default=WINDOWS, help=f"counted windows per path (default {WINDOWS})")
    p.add_argument("--baseline", default=BASELINE, help="the baseline file (default bench/cost_baseline.json)")
    p.add_argument(
        "--tolerance",
        type=float,
        help=f"percent a path may rise (default: the baseline's tolerance_pct, else {TOLERANCE_PCT:g})",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="write the figures measured into the baseline (this environment's entry; needs --reason)",
    )
    p.add_argument("--reason", help="why the figures moved: stored with them (say it in the commit too)")
    p.add_argument("--json", metavar="FILE", help="also write the figures and the environment to FILE")
    p.add_argument("--compare", metavar="FILE", help="take the figures from a --json FILE instead of measuring")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for every `serve` (repeat; e.g. --serve-arg=--access-logfile=/dev/null: "
        "what a setting costs in instructions)",
    )
    args = p.parse_args(argv)
    errors = []
    args.names = [n.strip() for n in args.paths.split(",")] if args.paths else list(PATHS)
    unknown = [n for n in args.names if n not in PATHS]
    if unknown:
        errors.append(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")
    if args.update and not (args.reason or "").strip():
        errors.append("--update needs --reason '<why the figures moved>' (kept in the baseline beside them)")
    if args.update and args.serve_arg:
        errors.append("--update with --serve-arg would record figures of non-default settings; drop one of them")
    if args.windows < 1:
        errors.append("--windows must be at least 1")
    if not args.compare and valgrind_version() is None:
        errors.append("valgrind is not installed (apt-get install valgrind)")
    if not args.compare and shutil.which("vgdb") is None:
        errors.append("vgdb (valgrind's gdbserver client) is not installed (it comes with valgrind)")
    if errors:
        p.print_usage(sys.stderr)
        for message in errors:
            print(f"python -m bench guard: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    baseline = load_baseline(args.baseline)
    tolerance = args.tolerance if args.tolerance is not None else baseline.get("tolerance_pct", TOLERANCE_PCT)
    if args.compare:
        with open(args.compare) as f:
            got = json.load(f)
        env, measured = got["environment"], {n: r for n, r in got["paths"].items() if n in args.names}
    else:
        env = environment()
        procs.install()
        t0 = time.monotonic()
        try:
            measured = measure(
                args.names,
                args.windows,
                args.serve_arg,
                progress=lambda m: print(f"[{time.monotonic() - t0:5.0f}s] {m}", file=sys.stderr),
            )
        finally:
            procs.stop_all()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "environment": env,
                    "environment_key": env_key(env),
                    "corral": describe_commit(),
                    "serve_args": args.serve_arg,
                    "windows": args.windows,
                    "paths": measured,
                },
                f,
                indent=2,
            )
    code, lines = compare(measured, env, baseline, tolerance)
    print("\n".join(lines))
    if args.update:
        with open(args.baseline, "w") as f:
            json.dump(update(baseline, measured, env, args.reason.strip()), f, indent=2)
            f.write("\n")
        print(f"recorded {len(measured)} path(s) for {env_key(env)} in {args.baseline}")
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
