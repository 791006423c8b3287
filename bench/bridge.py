"""Per-call cost of the bridging layer, corral's next to asgiref's, in the same run.

    python bench/bridge.py [--rounds 7] [--calls 3000] [--cpu 0] [--json out.json]

Cases (all on uvloop, the process pinned to one core):
  hop          a bare `await loop.run_in_executor(executor, f)` round trip: the floor for any thread hop
  s2a          `await sync_to_async(f)()`, thread-sensitive (the default)
  s2a-pool     `await sync_to_async(f, thread_sensitive=False)()`
  a2s          `async_to_sync(coro_fn)()` called from a plain thread with no event loop
  wsgi         a hello-world WSGI request through `WsgiToAsgi`, in-process (asgiref's message shape: the
               body, then a closing message)
  wsgi-coalesce  the same with `WsgiToAsgi(app, coalesce=True)`, the worker's shape (one body message)

Rounds are interleaved (every case once per round, in turn), and the table gives the median per-call cost
in microseconds with the min-max over rounds, and the ratios the targets are stated in. asgiref comes from
the `bench` extra (`pip install -e '.[bench]'`); without it only corral's column is filled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop

from corral.shared import sync as corral_sync
from corral.shared.wsgi import WsgiToAsgi as CorralWsgiToAsgi

try:
    import asgiref
    from asgiref import sync as asgiref_sync
    from asgiref.wsgi import WsgiToAsgi as AsgirefWsgiToAsgi
except ImportError:  # the bench extra is not installed
    asgiref = None


def noop() -> None:
    return None


async def anoop() -> None:
    return None


def hello_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"localhost"), (b"user-agent", b"bench")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}
REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> dict[str, Any]:
    return REQUEST


async def send(message: dict[str, Any]) -> None:
    return None


# ----------------------------------------------------------------------------- one case = N calls


def run_async(calls: int, make: Callable[[], Callable[[], Any]]) -> float:
    """Per-call µs of awaiting `make()()` `calls` times on a fresh uvloop loop."""

    async def main() -> float:
        call = make()
        for _ in range(50):  # warm up: threads started, caches filled
            await call()
        start = time.perf_counter()
        for _ in range(calls):
            await call()
        return (time.perf_counter() - start) / calls * 1e6

    return uvloop.run(main())


def case_hop(calls: int) -> float:
    executor = ThreadPoolExecutor(1)
    try:

        def make():
            loop = asyncio.get_running_loop()
            return lambda: loop.run_in_executor(executor, noop)

        return run_async(calls, make)
    finally:
        executor.shutdown()


def case_s2a(module: Any, calls: int, thread_sensitive: bool) -> float:
    return run_async(calls, lambda: module.sync_to_async(noop, thread_sensitive=thread_sensitive))


def case_a2s(module: Any, calls: int) -> float:
    """async_to_sync from a plain thread: measured inside a new thread that has no event loop."""
    result: list[float] = []

    def body() -> None:
        call = module.async_to_sync(anoop)
        for _ in range(20):
            call()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        result.append((time.perf_counter() - start) / calls * 1e6)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return result[0]


def case_wsgi(cls: Any, calls: int, **options: Any) -> float:
    app = cls(hello_wsgi, **options)
    return run_async(calls, lambda: lambda: app(dict(SCOPE), receive, send))


# ----------------------------------------------------------------------------- rounds and the table


def cases(calls: int) -> dict[tuple[str, str], Callable[[], float]]:
    table: dict[tuple[str, str], Callable[[], float]] = {
        ("hop", "bare"): lambda: case_hop(calls),
        ("s2a", "corral"): lambda: case_s2a(corral_sync, calls, True),
        ("s2a-pool", "corral"): lambda: case_s2a(corral_sync, calls, False),
        ("a2s", "corral"): lambda: case_a2s(corral_sync, calls // 3),
        ("wsgi", "corral"): lambda: case_wsgi(CorralWsgiToAsgi, calls),
        ("wsgi-coalesce", "corral"): lambda: case_wsgi(CorralWsgiToAsgi, calls, coalesce=True),
    }
    if asgiref is not None:
        table.update(
            {
                ("s2a", "asgiref"): lambda: case_s2a(asgiref_sync, calls, True),
                ("s2a-pool", "asgiref"): lambda: case_s2a(asgiref_sync, calls, False),
                ("a2s", "asgiref"): lambda: case_a2s(asgiref_sync, calls // 3),
                ("wsgi", "asgiref"): lambda: case_wsgi(AsgirefWsgiToAsgi, calls),
            }
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--calls", type=int, default=3000, help="calls per case per round (default 3000)")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to; -1 to not pin (default 0)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    # asgiref makes its loops with asyncio.new_event_loop(): give it uvloop too, so loops compare alike.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    table = cases(args.calls)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in table}
    for round_no in range(1, args.rounds + 1):
        for key, measure in table.items():
            print(f"\rround {round_no}/{args.rounds}: {key[0]} ({key[1]})        ", end="", file=sys.stderr)
            samples[key].append(measure())
    print("\r" + " " * 60 + "\r", end="", file=sys.stderr)

    medians = {key: statistics.median(values) for key, values in samples.items()}
    hop = medians[("hop", "bare")]
    print(
        f"pinned to cpu {args.cpu}, uvloop {uvloop.__version__}, "
        f"asgiref {asgiref.__version__ if asgiref else 'not installed'}, "
        f"{args.rounds} rounds x {args.calls} calls (a2s: {args.calls // 3})\n"
    )
    print("| case | corral µs (min-max) | asgiref µs (min-max) | corral / hop | asgiref / hop | corral / asgiref |")
    print("|---|---|---|---|---|---|")
    for case in ("hop", "s2a", "s2a-pool", "a2s", "wsgi", "wsgi-coalesce"):
        mine = ("bare" if case == "hop" else "corral", "asgiref")
        cells = []
        for who in mine:
            values = samples.get((case, who))
            cells.append(f"{medians[(case, who)]:.1f} ({min(values):.1f}-{max(values):.1f})" if values else "-")
        corral_m = medians[(case, mine[0])]
        asgiref_m = medians.get((case, "asgiref"))
        print(
            f"| {case} | {cells[0]} | {cells[1]} | {corral_m / hop:.2f}x | "
            f"{f'{asgiref_m / hop:.2f}x' if asgiref_m else '-'} | "
            f"{f'{corral_m / asgiref_m:.2f}' if asgiref_m else '-'} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "args": vars(args),
                    "samples_us": {f"{c}/{w}": v for (c, w), v in samples.items()},
                    "median_us": {f"{c}/{w}": v for (c, w), v in medians.items()},
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
