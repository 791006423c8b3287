"""Load-test corral next to its peers: python -m bench [--quick] [options]

Starts corral and every installed peer (uvicorn, gunicorn + uvicorn worker, hypercorn, granian; for WSGI
gunicorn sync/gthread and granian wsgi) on the same apps with the same worker count, loads them in
interleaved rounds (A B C A B C ...), and writes results.md (tables: medians, min-max over rounds, ratio to
--baseline), results.json and throughput.png / latency.png into --out. Every server it starts is stopped,
whatever happens. Scenarios:

  plaintext close json echo stream wsgi websocket websocket-1mib   throughput (bench/throughput.py);
                                              close: the hello-world with `Connection: close` on every request
  h2 h2-json                                   HTTP/2 (h2c, h2load -c 16 -m 32) vs hypercorn and granian
  tls                                          hello-world over TLS (wrk, HTTPS keep-alive) vs uvicorn, gunicorn
  loadgen                                     the built-in load generator next to wrk on the same server
  metrics                                     corral plaintext with --metrics-bind vs without (the cost of
                                              counting every request), same rounds
  idle                                        RSS with many idle keep-alive connections (bench/memory.py)
  latency                                     p50/p99/mean of sequential requests on one keep-alive
                                              connection (bench/latency.py)
  coldstart fairness crash hup                the process model (bench/process.py)

Load comes from wrk when installed (apt-get install wrk), else from the built-in generator (bench/load.py).

  python -m bench cost [...]                  CPU, system calls and context switches per request for each
                                              path, corral and its peers, pinned and saturated (bench/cost.py)
  python -m bench guard [...]                 instructions per request under valgrind against
                                              bench/cost_baseline.json: the CI regression guard (bench/guard.py)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import latency, load, memory, process, procs, report, servers, throughput
from bench.context import Ctx, Progress, med

FAMILIES = {
    **dict.fromkeys(throughput.SCENARIOS, throughput),
    "loadgen": throughput,
    "idle": memory,
    "latency": latency,
    **dict.fromkeys(("coldstart", "fairness", "crash", "hup"), process),
}
DEFAULT = [
    "plaintext",
    "close",
    "json",
    "echo",
    "stream",
    "wsgi",
    "django",
    "websocket",
    "websocket-1mib",
    "h2",
    "h2-json",
    "tls",
    "idle",
    "latency",
    "loadgen",
    "metrics",
    "coldstart",
    "fairness",
    "crash",
    "hup",
]
QUICK = ["plaintext", "wsgi", "idle", "coldstart"]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for module in ("uvicorn", "gunicorn", "hypercorn", "granian", "uvloop", "httptools"):
        try:
            from importlib.metadata import version

            found[module] = version(module)
        except Exception:  # noqa: BLE001 - a version that cannot be read is left out of the report
            pass
    try:
        found["corral"] = (
            subprocess.run(
                ["git", "-C", procs.ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "?"
        )
    except Exception:  # noqa: BLE001 - no git, no checkout: the version shows as ?
        found["corral"] = "?"
    found["wrk"] = "installed" if load.has_wrk() else "not installed"
    return found


def parse(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"1 round of 1 s, scenarios {','.join(QUICK)} unless --scenarios: under a minute",
    )
    p.add_argument("--scenarios", help=f"comma-separated (default: {','.join(DEFAULT)})")
    p.add_argument(
        "--servers",
        help=f"comma-separated (default: every installed one of {','.join(servers.SPECS)}; "
        "'corral' also selects corral-wsgi and corral-wsgi1)",
    )
    p.add_argument(
        "--process-servers",
        default="corral,uvicorn,gunicorn-uvicorn",
        help="servers in coldstart/fairness/crash/hup, among those selected (default "
        "corral,uvicorn,gunicorn-uvicorn; 'all': every ASGI server selected)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="workers per server in the throughput and memory scenarios (default: the number of --cpus)",
    )
    p.add_argument("--process-workers", type=int, help="workers in fairness/crash/hup (default 4; quick 2)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds of load per server per round (default 2; quick 1)")
    p.add_argument("--connections", type=int, default=64, help="load connections (default 64; echo/stream 8)")
    p.add_argument("--idle-connections", type=int, help="connections held in `idle` (default 2000; quick 300)")
    p.add_argument("--cpus", help="cores for the servers, e.g. 0 or 0-3 (default: the first half; -1: unpinned)")
    p.add_argument("--load-cpus", help="cores for the load generator (default: the second half; -1: unpinned)")
    p.add_argument(
        "--generator",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="auto: wrk when installed, else the built-in generator",
    )
    p.add_argument("--baseline", default="uvicorn", help="the ratio column's reference (default uvicorn)")
    p.add_argument("--wsgi-baseline", default="gunicorn-gthread", help="the WSGI table's (default gunicorn-gthread)")
    p.add_argument("--out", default="bench-results", help="folder for results.md/.json and the plots")
    p.add_argument(
        "--disturbed",
        type=float,
        default=0.5,
        metavar="CORES",
        help="a throughput run during which other processes used more than CORES cores is run again "
        "(up to --retries times; the least disturbed is kept) (default 0.5)",
    )
    p.add_argument("--retries", type=int, help="see --disturbed (default 2; quick 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    args.scenarios = (
        [s.strip() for s in args.scenarios.split(",")] if args.scenarios else (QUICK if args.quick else DEFAULT)
    )
    unknown = [s for s in args.scenarios if s not in FAMILIES]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.duration = args.duration or (1.0 if q else 2.0)
    args.idle_connections = args.idle_connections or (300 if q else 2000)
    args.process_workers = args.process_workers or (2 if q else 4)
    args.retries = args.retries if args.retries is not None else (0 if q else 2)
    available = sorted(os.sched_getaffinity(0))
    half = max(1, len(available) // 2)
    try:
        if args.cpus is None:
            args.server_cpus = set(available[:half]) if len(available) > 1 else None
        else:
            args.server_cpus = procs.parse_cpus(args.cpus)
        if args.load_cpus is None:
            args.load_cpus_set = set(available[half:]) if len(available) > 1 else None
        else:
            args.load_cpus_set = procs.parse_cpus(args.load_cpus)
    except ValueError as exc:
        p.error(str(exc))
    args.workers = args.workers or (len(args.server_cpus) if args.server_cpus else 1)
    if args.generator == "wrk" and not load.has_wrk():
        p.error("wrk is not installed (apt-get install wrk), use --generator builtin")
    args.tool = "wrk" if args.generator == "wrk" or (args.generator == "auto" and load.has_wrk()) else "builtin"
    return args


def select_servers(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, str]]:
    wanted = [name for name in servers.SPECS if name not in servers.OPT_IN]
    if args.servers:
        wanted = []
        for name in (s.strip() for s in args.servers.split(",")):
            wanted += [name, "corral-wsgi", "corral-wsgi1"] if name == "corral" else [name]
    skipped = {}
    asgi, wsgi = [], []
    for name in wanted:
        reason = servers.available(name)
        if reason:
            skipped[name] = reason
            print(f"skipping {name}: {reason}", file=sys.stderr)
            continue
        (asgi if servers.SPECS[name].interface == "asgi" else wsgi).append(name)
    return asgi, wsgi, skipped


SUBCOMMANDS = {"cost": "bench.cost", "guard": "bench.guard"}  # python -m bench cost|guard [...]: their own options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = parse(argv)
    asgi, wsgi, skipped = select_servers(args)
    os.makedirs(args.out, exist_ok=True)
    logdir = tempfile.mkdtemp(prefix="logs-", dir=os.path.abspath(args.out))
    ctx = Ctx(
        asgi=asgi,
        wsgi=wsgi,
        workers=args.workers,
        process_workers=args.process_workers,
        rounds=args.rounds,
        duration=args.duration,
        connections=args.connections,
        idle_connections=args.idle_connections,
        server_cpus=args.server_cpus,
        load_cpus=args.load_cpus_set,
        tool=args.tool,
        logdir=logdir,
        quick=args.quick,
    )
    ctx.disturbed, ctx.retries = args.disturbed, args.retries
    ctx.process = [s for s in asgi if args.process_servers == "all" or s in args.process_servers.split(",")]
    ctx.progress = Progress(sum(FAMILIES[s].steps(ctx, s) for s in args.scenarios))
    if args.load_cpus_set:
        os.sched_setaffinity(0, args.load_cpus_set)  # this process is a client too (idle connections)
    procs.install()
    started, load0 = time.time(), os.getloadavg()
    scenarios: dict[str, Any] = {}
    code = 0
    try:
        for name in args.scenarios:
            if (
                not wsgi
                if throughput.SCENARIOS.get(name, {}).get("iface") == "wsgi"
                else not ctx.process
                if FAMILIES[name] is process
                else not asgi
            ):
                skipped[name] = "no server selected for it"
                continue
            try:
                scenarios[name] = FAMILIES[name].run(ctx, name)
            except Exception as exc:  # noqa: BLE001 - one scenario's failure must not lose the others' results
                import traceback

                ctx.note(f"{name} failed", traceback.format_exc()[-2000:])
                scenarios[name] = {"title": f"failed: {type(exc).__name__}: {exc}", "kind": "failed", "runs": {}}
    except procs.Interrupted as exc:
        code = int(exc.code or 1)
        print("\ninterrupted: stopping every server started; partial results follow", file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    finally:
        procs.stop_all()
        ctx.progress.end()
    other = [
        r["other_cores"] for sc in scenarios.values() for rs in sc["runs"].values() for r in rs if "other_cores" in r
    ]
    command = "python -m bench " + " ".join(argv)
    results = {
        "meta": {
            "command": command.strip(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "seconds": time.time() - started,
            "rounds": args.rounds,
            "duration": args.duration,
            "workers": args.workers,
            "process_workers": args.process_workers,
            "server_cpus": procs.cpu_list(args.server_cpus),
            "load_cpus": procs.cpu_list(args.load_cpus_set),
            "generator": args.tool,
            "cpus": os.cpu_count(),
            "loadavg_start": load0[0],
            "loadavg_end": os.getloadavg()[0],
            "other_cores": med(other) if other else 0.0,
            "versions": versions(),
            "baseline": args.baseline,
            "interrupted": bool(code),
            "pids": sorted(procs.started),
            "left_running": procs.live_pids(),
        },
        "scenarios": scenarios,
        "skipped": skipped,
        "notes": ctx.notes,
    }
    text = report.markdown(results, args.baseline, args.wsgi_baseline)
    if ctx.notes:
        text += (
            "\nNotes (server output, failures):\n\n"
            + "\n".join(f"- {k}:\n\n```\n{v.strip()}\n```" for k, v in ctx.notes.items())
            + "\n"
        )
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    report.write_json(results, os.path.join(args.out, "results.json"))
    written = [] if args.no_plots else report.plots(results, args.out)
    print(text)
    print(
        "written: "
        + ", ".join([os.path.join(args.out, "results.md"), os.path.join(args.out, "results.json"), *written]),
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
