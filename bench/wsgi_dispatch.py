"""How a WSGI request reaches its thread: the alternatives of issue 11, measured on one core.

    python -m bench.wsgi_dispatch [--rounds 5] [--duration 4] [--app bench.apps:hello_wsgi] [--threads 4]

Each variant serves the same app with one worker pinned to cpu 0 while wrk (-t1 -c64) loads it from cpu 1,
in interleaved rounds. Reported per variant: requests/s, the server's CPU time per request (user + system,
every process and thread of the server: steadier than requests/s on a shared machine) and context switches
per request, medians (min-max).

    corral-pool        the worker's threads, handed work in batches (corral.worker.wsgi.threads: the default)
    corral-connection  one thread per connection, gunicorn gthread's model (BENCH_WSGI_DISPATCH=connection)
    corral-inline      the application called on the event loop itself (BENCH_WSGI_DISPATCH=inline)
    corral-adapter     the path before the native one: WsgiToAsgi on the ASGI worker (BENCH_WSGI_DISPATCH=adapter)
    corral-asgi        corral's ASGI hello-world (bench.apps:hello): the floor the WSGI path is held to
    corral-...-plain   a corral variant with the hot path compiled by Cython, untyped or typed
    corral-...-typed   (python -m bench.compiled builds them and runs these against the Python ones)
    granian-wsgi, gunicorn-gthread: the peers, same threads
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from bench import compiled, load, procs

PORT = 8811
HOST = "127.0.0.1"
PY = sys.executable


def _command(variant: str, app: str, threads: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    build = None
    for kind in ("-plain", "-typed"):  # the same corral with a build of bench.compiled's modules
        if variant.endswith(kind):
            build = str(compiled.built(kind[1:]))
            variant = variant[: -len(kind)]
    if variant.startswith("corral"):
        if variant == "corral-asgi":
            app = "bench.apps:hello"
        mode = variant.partition("-")[2]
        if mode in ("connection", "inline", "adapter"):
            env["BENCH_WSGI_DISPATCH"] = mode
        launcher = ["corral.master"] if build is None else ["bench.compiled", "serve", build, "--"]
        return [
            PY,
            "-m",
            *launcher,
            app,
            "-w",
            "1",
            "-b",
            f"{HOST}:{PORT}",
            "--log-level",
            "warning",
            "--threads",
            str(threads),
        ], env
    if variant == "granian-wsgi":
        return [
            PY,
            "-m",
            "granian",
            "--interface",
            "wsgi",
            "--workers",
            "1",
            "--host",
            HOST,
            "--port",
            str(PORT),
            "--log-level",
            "warning",
            "--blocking-threads",
            str(threads),
            app,
        ], env
    if variant == "gunicorn-gthread":
        return [
            PY,
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "-w",
            "1",
            "--threads",
            str(threads),
            "-b",
            f"{HOST}:{PORT}",
            "--log-level",
            "warning",
            app,
        ], env
    raise ValueError(variant)


def _usage(pids: list[int]) -> tuple[float, float, int]:
    """User and system CPU seconds and context switches of every thread of `pids`."""
    user, system, switches = 0.0, 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/status") as fh:
                    switches += sum(int(line.split()[1]) for line in fh if "ctxt_switches" in line)
        except (OSError, IndexError):
            pass
    return user, system, switches


def _wrk(seconds: float) -> str:
    return subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds:g}s", "--latency", f"http://{HOST}:{PORT}/"],
        capture_output=True,
        text=True,
    ).stdout


def _ms(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]  # wrk's format
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _answers() -> bool:
    try:
        return load.probe(PORT) == 200
    except OSError:
        return False


def measure(variant: str, app: str, threads: int, seconds: float) -> dict[str, float]:
    argv, env = _command(variant, app, threads)
    server = procs.spawn(argv, {0}, env)
    try:
        deadline = time.monotonic() + 30
        while not _answers():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{variant} did not start")
            time.sleep(0.1)
        _wrk(1)  # warm up
        pids = [server.pid] + [p.pid for p in procs.descendants(server.pid)]
        user0, sys0, sw0 = _usage(pids)
        out = _wrk(seconds)
        user1, sys1, sw1 = _usage(pids)
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]  # wrk's format
        return {
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]  # wrk's format
            "us_cpu": 1e6 * (user1 - user0 + sys1 - sys0) / requests,
            "us_user": 1e6 * (user1 - user0) / requests,
            "us_sys": 1e6 * (sys1 - sys0) / requests,
            "switches": (sw1 - sw0) / requests,
            "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)),
        }  # type: ignore[union-attr]  # wrk's format
    finally:
        procs.stop(server, timeout=15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--app", default="bench.apps:hello_wsgi")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--variants",
        default="corral-pool,corral-connection,corral-inline,corral-adapter,corral-asgi,granian-wsgi,gunicorn-gthread",
    )
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for rnd in range(args.rounds):
        for variant in variants:
            result = measure(variant, args.app, args.threads, args.duration)
            results[variant].append(result)
            print(
                f"round {rnd + 1} {variant}: {result['rps']:,.0f}/s, {result['us_cpu']:.1f} us CPU/request, "
                f"{result['switches']:.2f} switches/request, p99 {result['p99_ms']:.2f} ms",
                file=sys.stderr,
            )

    def cell(rows: list[dict[str, float]], key: str, fmt: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    print(
        f"`python -m bench.wsgi_dispatch {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({args.app}, {args.threads} threads, {args.rounds} interleaved rounds of {args.duration:g} s; "
        "medians, min-max)\n"
    )
    print("| variant | req/s | CPU us/request | of which user | of which system | context switches/request | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for variant, rows in results.items():
        print(
            f"| {variant} | {cell(rows, 'rps', ',.0f')} | {cell(rows, 'us_cpu', '.1f')} | "
            f"{cell(rows, 'us_user', '.1f')} | {cell(rows, 'us_sys', '.1f')} | "
            f"{cell(rows, 'switches', '.2f')} | {cell(rows, 'p99_ms', '.2f')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
