"""What a request costs each server, path by path, in two settings: python -m bench cost [options]

    python -m bench cost                                   # every path, both settings: ~15 minutes on 2 cores
    python -m bench cost --paths asgi,h2c --settings pinned --rounds 5 --duration 5

Paths (each against the peers that serve it; a peer that is not installed is skipped, with the reason):
  asgi, asgi-close     ASGI hello-world over HTTP/1.1, keep-alive / `Connection: close` (wrk)
  wsgi, wsgi-close     WSGI hello-world, the same two ways (wrk; thread pools of 4, and corral with --threads 1)
  tls                  ASGI hello-world over TLS, HTTP/1.1 keep-alive (wrk)
  h2c, h2-tls          ASGI hello-world over HTTP/2, cleartext prior knowledge / TLS with ALPN, --streams
                       concurrent streams per connection (h2load)
  websocket            ASGI WebSocket echo of 16-byte messages, one in flight per connection
                       (bench/ws_client.c, a lean C client)

Settings:
  pinned     one worker pinned to one core (--cpus), the load generator on the others (--load-cpus)
  saturated  -w = the number of cores, nothing pinned: the load generator shares the machine with the server,
             as users benchmark on a laptop

For every run (servers interleaved A B C A B C ... for --rounds rounds): requests/s as the load generator
counts them; CPU per request, user and system, from /proc/PID/stat of every process of the server's tree
(master and workers; a process's figure covers all its threads); context switches per request, voluntary and
involuntary, from /proc/PID/task/*/status summed over every thread of the tree. System calls per request
come from a separate, shorter round per server under `strace -c -f` (attached to every process of the tree):
strace slows the server a lot, so its rate is not used, only its count of calls per request. Writes
cost.md (the tables, ready for the docs), cost.json and cost-cpu.png / cost-rps.png into --out.

CPU per request is the figure to compare: on a shared machine the rates swing (2x between rounds here), the
CPU a request takes much less. The ratio columns are per round, corral against each peer in the same round.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench import load, procs, servers
from bench.context import Ctx, Progress, interleave, least_disturbed, start_each, stop_each

# corral-pure and corral-wsgi1-pure (opt-in: only when named in --servers): corral without its C parser;
# corral-before and corral-wsgi1-before (opt-in too): corral from another checkout's venv ($CORRAL_BENCH_BEFORE);
# corral-inherit and corral-wsgi-inherit (opt-in): the workers under SCHED_OTHER, not SCHED_BATCH.
ASGI_PEERS = (
    "corral",
    "corral-pure",
    "corral-before",
    "corral-inherit",
    "uvicorn",
    "gunicorn-uvicorn",
    "hypercorn",
    "granian",
)
H2_PEERS = ("corral", "hypercorn", "granian")  # the peers that speak HTTP/2
# corral-wsgi1: corral with --threads 1 (the app on the worker's own thread, as gunicorn's sync worker runs it).
WSGI_PEERS = (
    "corral-wsgi",
    "corral-wsgi-inherit",
    "corral-wsgi1",
    "corral-wsgi1-pure",
    "corral-wsgi1-before",
    "gunicorn-gthread",
    "granian-wsgi",
)
WSGI_CLOSE_PEERS = (
    "corral-wsgi",
    "corral-wsgi1",
    "gunicorn-sync",
    "gunicorn-gthread",
    "granian-wsgi",
)  # sync: no keep-alive


@dataclass(frozen=True)
class CostPath:
    name: str
    title: str
    app: str
    peers: tuple[str, ...]  # the first one is corral: every ratio is against it
    load: str = "wrk"  # "wrk", "h2load" or "ws"
    close: bool = False
    tls: bool = False


PATHS: dict[str, CostPath] = {
    p.name: p
    for p in (
        CostPath("asgi", "ASGI hello-world, HTTP/1.1 keep-alive", "bench.apps:hello", ASGI_PEERS),
        CostPath("asgi-close", "ASGI hello-world, Connection: close", "bench.apps:hello", ASGI_PEERS, close=True),
        CostPath("wsgi", "WSGI hello-world, HTTP/1.1 keep-alive", "bench.apps:hello_wsgi", WSGI_PEERS),
        CostPath(
            "wsgi-close", "WSGI hello-world, Connection: close", "bench.apps:hello_wsgi", WSGI_CLOSE_PEERS, close=True
        ),
        CostPath("tls", "ASGI hello-world over TLS, HTTP/1.1 keep-alive", "bench.apps:hello", ASGI_PEERS, tls=True),
        CostPath("h2c", "ASGI hello-world over h2c (prior knowledge)", "bench.apps:hello", H2_PEERS, load="h2load"),
        CostPath(
            "h2-tls", "ASGI hello-world over h2 (TLS, ALPN)", "bench.apps:hello", H2_PEERS, load="h2load", tls=True
        ),
        CostPath("websocket", "ASGI WebSocket echo, 16-byte messages", "bench.apps:ws_echo", ASGI_PEERS, load="ws"),
    )
}
SETTINGS = ("pinned", "saturated")
WS_PAYLOAD = 16


# ---------------------------------------------------------------------------- counters from /proc

_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    return [pid] + [p.pid for p in procs.descendants(pid)]


def counters(pid: int) -> dict[str, float]:
    """CPU seconds (user, system) and context switches (voluntary, involuntary) of `pid` and its descendants
    alive now. /proc/PID/stat covers the process's threads, ended ones included; the switch counts are per
    thread (/proc/PID/status shows the main thread's only), so they are summed over /proc/PID/task/*."""
    total = {"user": 0.0, "system": 0.0, "vcsw": 0.0, "ivcsw": 0.0}
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total["user"] += int(fields[11]) / _TICK  # utime, field 14 of stat(5)
            total["system"] += int(fields[12]) / _TICK  # stime, field 15
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total["vcsw"] += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            total["ivcsw"] += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass  # a process or thread that ended meanwhile
    return total


# ---------------------------------------------------------------------------- load


def run_ws(url: str, duration: float, connections: int, cpus: set[int] | None) -> dict[str, Any]:
    """WebSocket echo with bench/ws_client.c (compiled once), else the built-in generator's WebSocket mode."""
    from bench.websocket import c_client

    client = c_client()
    if client is None:
        return load.run_builtin(url, duration, connections, cpus, ws=True, body=WS_PAYLOAD)
    port = url.rsplit(":", 1)[1].strip("/")
    argv = [client, port, str(connections), str(WS_PAYLOAD), "0", str(duration)]
    code, text, gen_cores = load._run_external(argv, cpus, duration)
    parts = text.split()
    if code != 0 or len(parts) < 2:
        raise RuntimeError(f"ws_client exited with {code}:\n{text[-2000:]}")
    done, elapsed = int(parts[-2]), float(parts[-1])
    return {
        "tool": "ws_client",
        "rps": done / max(elapsed, 1e-6),
        "requests": done,
        "errors": 0,
        "error_detail": {},
        "gen_cores": gen_cores,
    }


def run_load(
    path: CostPath,
    url: str,
    duration: float,
    args: argparse.Namespace,
    cpus: set[int] | None,
) -> dict[str, Any]:
    if path.load == "h2load":
        return load.run_h2load(url, duration, args.h2_connections, args.streams, cpus)
    if path.load == "ws":
        return run_ws(url, duration, args.connections, cpus)
    return load.run_wrk(url, duration, args.connections, cpus, close=path.close)


# ---------------------------------------------------------------------------- system calls, under strace

_TOTAL = re.compile(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)(?:\s+\d+)?\s+total\s*$", re.MULTILINE)


def _traced(pids: list[int]) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                if not any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f):
                    return False
        except OSError:
            pass  # gone: nothing to wait for
    return True


def syscalls(
    path: CostPath,
    server: servers.Server,
    duration: float,
    args: argparse.Namespace,
    cpus: set[int] | None,
    folder: str,
) -> dict[str, Any]:
    """System calls per request: `strace -c -f` attached to every process of the server's tree while a
    short load runs (its own round: strace slows the server many times over)."""
    pids = _tree(server.pid)
    out = os.path.join(folder, f"strace-{server.name}-{path.name}-{server.port}.txt")
    argv = ["strace", "-c", "-f", "-q", "-o", out] + [a for p in pids for a in ("-p", str(p))]
    tracer = procs.spawn(argv, None, log=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _traced(pids):
            if tracer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"strace did not attach to {pids} (exit {tracer.poll()})")
            time.sleep(0.02)
        result = run_load(path, server.url, duration, args, cpus)
        tracer.send_signal(signal.SIGINT)  # detach and write the summary
        tracer.wait(30)
    finally:
        procs.stop(tracer)
    with open(out) as f:
        text = f.read()
    match = _TOTAL.search(text)
    if not match or not result["requests"]:
        raise RuntimeError(f"no strace total or no request ({result['requests']}):\n{text[-1500:]}")
    return {
        "syscalls": int(match.group(1)),
        "requests": result["requests"],
        "per_request": int(match.group(1)) / result["requests"],
    }


# ---------------------------------------------------------------------------- one setting, one path


def one_run(path: CostPath, server: servers.Server, ctx: Ctx, args: argparse.Namespace) -> dict[str, Any]:
    """One measured run: the load for --duration, the server tree's counters before and after."""

    def measured() -> dict[str, Any]:
        other, core = procs.OtherLoad(), procs.CoreLoad(ctx.server_cpus, server.pid)
        before, t0 = counters(server.pid), time.monotonic()
        result = run_load(path, server.url, ctx.duration, args, ctx.load_cpus)
        after, wall = counters(server.pid), time.monotonic() - t0
        n = max(result["requests"], 1)
        result.update(
            other_cores=other.stop(),
            other_on_server_cpus=core.stop(),
            cpu_user_us=(after["user"] - before["user"]) / n * 1e6,
            cpu_sys_us=(after["system"] - before["system"]) / n * 1e6,
            vcsw=(after["vcsw"] - before["vcsw"]) / n,
            ivcsw=(after["ivcsw"] - before["ivcsw"]) / n,
            server_cores=(after["user"] + after["system"] - before["user"] - before["system"]) / wall,
        )
        result["cpu_us"] = result["cpu_user_us"] + result["cpu_sys_us"]
        result["csw"] = result["vcsw"] + result["ivcsw"]
        return result

    return least_disturbed(ctx, path.name, server, measured)


def run_path(
    setting: str,
    path: CostPath,
    ctx: Ctx,
    args: argparse.Namespace,
    names: list[str],
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if path.tls:
        from bench.throughput import self_signed

        options["tls"] = self_signed(ctx.logdir)
    if path.app.endswith("_wsgi"):
        options["threads"] = 4
    made = [ctx.server(name, path.app, **options) for name in names]
    running = start_each(ctx, made, wait_workers=True)
    label = f"{setting} {path.name}"
    calls: dict[str, Any] = {}
    try:
        for server in list(running):  # warm-up: imports, caches, connection pools; not measured
            try:
                run_load(path, server.url, 1.0, args, ctx.load_cpus)
            except Exception as exc:  # noqa: BLE001 - a server that fails its warm-up is noted, and the others measured
                ctx.note(f"{label}: {server.name} failed its warm-up", f"{type(exc).__name__}: {exc}"[-1500:])
                running.remove(server)
                server.stop()
        runs = interleave(
            ctx,
            label,
            running,
            lambda s: one_run(path, s, ctx, args),
            lambda r: f"{r['rps']:,.0f}/s, {r['cpu_us']:.1f} µs CPU/request",
        )
        if args.syscalls:
            for server in running:
                procs.check_signalled()
                try:
                    calls[server.name] = syscalls(path, server, args.strace_duration, args, ctx.load_cpus, ctx.logdir)
                    ctx.progress.step(
                        f"{label} strace {server.name}: {calls[server.name]['per_request']:.1f} syscalls/request"
                    )
                except Exception as exc:  # noqa: BLE001 - a failed strace is noted, and the others measured
                    ctx.note(f"{label}: strace of {server.name} failed", f"{type(exc).__name__}: {exc}"[-1500:])
    finally:
        stop_each(ctx, running)
    return {
        "title": path.title,
        "servers": names,
        "reference": names[0] if names else None,
        "runs": runs,
        "syscalls": calls,
    }


# ---------------------------------------------------------------------------- the command


def parse(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="python -m bench cost",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--paths", help=f"comma-separated (default: {','.join(PATHS)})")
    p.add_argument("--settings", default=",".join(SETTINGS), help="pinned, saturated or both (default both)")
    p.add_argument(
        "--servers",
        help="comma-separated: only these (default: every installed peer of each path; "
        "'corral' also selects corral-wsgi and corral-wsgi1)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per server per round (default 5)")
    p.add_argument("--connections", type=int, default=64, help="HTTP/1.1 and WebSocket connections (default 64)")
    p.add_argument("--h2-connections", type=int, default=8, help="HTTP/2 connections (default 8)")
    p.add_argument("--streams", type=int, default=16, help="concurrent streams per HTTP/2 connection (default 16)")
    p.add_argument("--cpus", help="pinned: the server's core (default: the first available)")
    p.add_argument("--load-cpus", help="pinned: the load generator's cores (default: the other available ones)")
    p.add_argument(
        "--no-syscalls", dest="syscalls", action="store_false", help="skip the strace round (system calls per request)"
    )
    p.add_argument("--strace-duration", type=float, default=2.0, help="seconds of the strace round (default 2)")
    p.add_argument(
        "--disturbed",
        type=float,
        default=0.5,
        metavar="CORES",
        help="a run during which other processes used more than CORES cores (or any of the pinned "
        "server's core) is run again, up to --retries times; the least disturbed is kept",
    )
    p.add_argument("--retries", type=int, default=1, help="see --disturbed (default 1)")
    p.add_argument(
        "--out",
        default=os.path.join("bench-results", "cost"),
        help="folder for cost.md, cost.json and the plots (default bench-results/cost)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    errors = []
    args.path_names = [s.strip() for s in args.paths.split(",")] if args.paths else list(PATHS)
    args.setting_names = [s.strip() for s in args.settings.split(",") if s.strip()]
    for kind, got, known in (("path", args.path_names, PATHS), ("setting", args.setting_names, SETTINGS)):
        unknown = [n for n in got if n not in known]
        if unknown:
            errors.append(f"unknown {kind}(s) {', '.join(unknown)}; known: {', '.join(known)}")
    available = sorted(os.sched_getaffinity(0))
    try:
        args.pin = procs.parse_cpus(args.cpus) if args.cpus else set(available[:1])
        args.load_pin = procs.parse_cpus(args.load_cpus) if args.load_cpus else set(available[1:]) or None
    except ValueError as exc:
        errors.append(str(exc))
    if "pinned" in args.setting_names and len(available) < 2 and not errors:
        errors.append(
            "the pinned setting needs two cores (one for the server, one for the load); use --settings saturated"
        )
    if args.rounds < 1 or args.duration <= 0:
        errors.append("--rounds must be at least 1 and --duration above 0")
    if shutil.which("wrk") is None and any(PATHS[n].load == "wrk" for n in args.path_names if n in PATHS):
        errors.append("wrk is not installed (apt-get install wrk); or choose --paths h2c,h2-tls,websocket")
    if not load.has_h2load() and any(PATHS[n].load == "h2load" for n in args.path_names if n in PATHS):
        errors.append("h2load is not installed (apt-get install nghttp2-client); or leave out --paths h2c,h2-tls")
    if args.syscalls and shutil.which("strace") is None:
        print("strace is not installed (apt-get install strace): no system-call column", file=sys.stderr)
        args.syscalls = False
    if errors:
        p.print_usage(sys.stderr)
        for message in errors:
            print(f"python -m bench cost: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    args.cores = len(available)
    return args


def select(args: argparse.Namespace, path: CostPath, skipped: dict[str, str]) -> list[str]:
    wanted = None
    if args.servers:
        wanted = set()
        for name in (s.strip() for s in args.servers.split(",")):
            wanted.update((name, "corral-wsgi", "corral-wsgi1") if name == "corral" else (name,))
    names = []
    for name in path.peers:
        if (wanted is None and name in servers.OPT_IN) or (wanted is not None and name not in wanted):
            continue
        reason = servers.available(name)
        if reason:
            skipped[name] = reason
            continue
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    from bench import cost_report
    from bench.__main__ import versions

    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    os.makedirs(args.out, exist_ok=True)
    logdir = tempfile.mkdtemp(prefix="logs-", dir=os.path.abspath(args.out))
    skipped: dict[str, str] = {}
    plan = {p: select(args, PATHS[p], skipped) for p in args.path_names}
    per_run = 1 + (1 if args.syscalls else 0) / max(args.rounds, 1)
    progress = Progress(round(sum(len(n) for n in plan.values()) * len(args.setting_names) * args.rounds * per_run))
    notes: dict[str, str] = {}
    results: dict[str, Any] = {"settings": {}}
    procs.install()
    started, load0 = time.time(), os.getloadavg()
    code = 0
    try:
        for setting in args.setting_names:
            pinned = setting == "pinned"
            ctx = Ctx(
                asgi=[],
                wsgi=[],
                workers=1 if pinned else args.cores,
                process_workers=1,
                rounds=args.rounds,
                duration=args.duration,
                connections=args.connections,
                idle_connections=0,
                server_cpus=args.pin if pinned else None,
                load_cpus=args.load_pin if pinned else set(os.sched_getaffinity(0)),
                tool="wrk",
                logdir=logdir,
                notes=notes,
                progress=progress,
            )
            ctx.disturbed, ctx.retries = args.disturbed, args.retries
            done = results["settings"][setting] = {
                "workers": ctx.workers,
                "server_cpus": procs.cpu_list(ctx.server_cpus),
                "load_cpus": procs.cpu_list(ctx.load_cpus) if pinned else "any (shared)",
                "paths": {},
            }
            for name in args.path_names:
                if not plan[name]:
                    notes[f"{setting} {name}"] = "skipped: no server selected for it"
                    continue
                try:
                    done["paths"][name] = run_path(setting, PATHS[name], ctx, args, plan[name])
                except procs.Interrupted:
                    raise
                except Exception as exc:  # noqa: BLE001 - one path's failure must not lose the others' results
                    import traceback

                    ctx.note(f"{setting} {name} failed", traceback.format_exc()[-2000:])
                    done["paths"][name] = {
                        "title": f"failed: {type(exc).__name__}: {exc}",
                        "runs": {},
                        "servers": plan[name],
                        "reference": None,
                        "syscalls": {},
                    }
    except procs.Interrupted as exc:
        code = int(exc.code or 1)
        print("\ninterrupted: stopping every server started; partial results follow", file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    finally:
        procs.stop_all()
        progress.end()
    results["meta"] = {
        "command": ("python -m bench cost " + " ".join(argv)).strip(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": time.time() - started,
        "rounds": args.rounds,
        "duration": args.duration,
        "connections": args.connections,
        "h2_connections": args.h2_connections,
        "streams": args.streams,
        "cores": args.cores,
        "loadavg_start": load0[0],
        "loadavg_end": os.getloadavg()[0],
        "versions": versions(),
        "syscalls": "strace -c -f (a separate round)" if args.syscalls else "not measured",
        "interrupted": bool(code),
        "pids": sorted(procs.started),
        "left_running": procs.live_pids(),
    }
    results["skipped"], results["notes"] = skipped, notes
    written = cost_report.write(results, args.out, plots=not args.no_plots)
    with open(written[0]) as fh:
        print(fh.read())
    print(f"written: {', '.join(written)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
