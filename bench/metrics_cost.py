"""The Python-side cost of metrics per request, measured in-process: no kernel, no client, no other server.

Requests are fed to a worker's protocol (the class `serve` uses: with `--metrics-bind`, the metered one)
through a transport that only counts writes, on a uvloop loop, and the CPU time of this process per
request is compared, metrics off vs on, in interleaved rounds. A shared machine moves wrk's throughput by
tens of percent from run to run; this figure moves much less, and it is what the counting adds (the
kernel's share of a real request, which it leaves out, is the same with and without metrics).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n"


class _Transport:
    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass  # (the HTTP/2 detector hands an HTTP/1.1 connection to its transport again)


async def _round(metrics: bool, requests: int) -> float:
    from bench.apps import hello
    from corral.shared.settings import Settings
    from corral.worker.edge.counters import meter
    from corral.worker.serve.server import WorkerServer

    options: dict[str, Any] = {"max_requests_per_connection": 0}
    if metrics:
        options["metrics_bind"] = "127.0.0.1:9"  # only read, never bound here
    server = WorkerServer(hello, Settings(**options))
    server.loop = asyncio.get_running_loop()
    if metrics:
        server.access_log = meter(server.counters)  # what worker/serve/boot.py installs with metrics on
    protocol = server.protocol_class(server)
    transport = _Transport()
    protocol.connection_made(transport)
    start = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the application task runs
        await asyncio.sleep(0)
    spent = time.process_time() - start
    if transport.writes < requests:
        raise RuntimeError(f"only {transport.writes} of {requests} responses were written")
    return spent / requests * 1e6


def measure(rounds: int = 9, requests: int = 20000) -> dict[str, Any]:
    """µs of CPU per request with metrics off and on (medians of interleaved rounds), and their ratio."""
    import uvloop

    async def run() -> tuple[list[float], list[float]]:
        off, on = [], []
        for _ in range(rounds):
            off.append(await _round(False, requests))
            on.append(await _round(True, requests))
        return off, on

    off, on = uvloop.run(run())
    ratios = [b / a for a, b in zip(off, on)]
    return {
        "off_us": statistics.median(off),
        "on_us": statistics.median(on),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": rounds,
        "requests": requests,
    }


if __name__ == "__main__":
    print(measure())
