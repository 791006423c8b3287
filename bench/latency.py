"""Latency scenario `latency`: sequential requests on one keep-alive connection, nothing else in flight.

Every server on the hello-world (ASGI), in interleaved rounds (A B C A B C ...). Each round opens one
connection (TCP_NODELAY), sends WARMUP requests, then REQUESTS more, one at a time: each request is written
once the previous response is read in full. A raw-socket client (no event loop, a minimal response reader)
in this process, which `python -m bench` pins to the load cores. Per round: p50, p99 and the mean in µs.
This is the service time of one request (the server's per-request path plus two loopback hops), not
queueing: the throughput scenarios' p99 at 64 connections is mostly the latter. A server that closes the
connection (`Connection: close`, e.g. corral's --max-requests-per-connection, 1,000 by default) is
reconnected to before the next request, outside the timing; the table counts the reconnections.
"""

from __future__ import annotations

import re
import socket
import statistics
import time
from typing import Any

from bench import load, procs
from bench.context import Ctx, interleave, least_disturbed, start_each, stop_each

APP = "bench.apps:hello"
REQUESTS = 5000
WARMUP = 200
QUICK_REQUESTS = 1000
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: corral-bench\r\n\r\n"
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)


def steps(ctx: Ctx, name: str) -> int:
    return len(ctx.asgi) * ctx.rounds


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bool]:
    """Read one response (Content-Length framed) from `sock`; leftovers stay in `buf`. (status, closing)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            match = _LENGTH.search(buf, 0, end + 2)
            if match is None:
                raise RuntimeError(f"no Content-Length in {bytes(buf[:end])!r}")
            total = end + 4 + int(match.group(1))
            while len(buf) < total:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed in a response body")
                buf += chunk
            status, closing = int(buf[9:12]), _CLOSE.search(buf, 0, end + 2) is not None
            del buf[:total]
            return status, closing
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk


def measure(port: int, requests: int = REQUESTS, warmup: int = WARMUP) -> dict[str, Any]:
    """`warmup` then `requests` sequential requests on one connection: p50/p99/mean µs and the errors."""
    clock = time.perf_counter_ns
    times: list[int] = []
    errors: dict[str, int] = {}
    reconnects = 0

    def connect() -> socket.socket:
        sock = socket.create_connection((load.HOST, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    sock = connect()
    try:
        buf = bytearray()
        for i in range(warmup + requests):
            t0 = clock()
            sock.sendall(REQUEST)
            status, closing = _read_response(sock, buf)
            elapsed = clock() - t0
            if status != 200:
                errors["non-2xx"] = errors.get("non-2xx", 0) + 1
            if i >= warmup:
                times.append(elapsed)
            if closing:  # a server's cap on requests per connection: reconnect (not timed), as a client would
                sock.close()
                sock, buf = connect(), bytearray()
                reconnects += 1
    finally:
        sock.close()
    times.sort()
    us = [t / 1000 for t in times]
    return {
        "tool": "raw socket",
        "requests": len(us),
        "p50_us": us[len(us) // 2],
        "p99_us": us[min(len(us) - 1, int(len(us) * 0.99))],
        "mean_us": statistics.fmean(us),
        "max_us": us[-1],
        "reconnects": reconnects,
        "errors": sum(errors.values()),
        "error_detail": errors,
    }


def run(ctx: Ctx, name: str) -> dict[str, Any]:
    requests = QUICK_REQUESTS if ctx.quick else REQUESTS
    made = [ctx.server(n, APP) for n in ctx.asgi]
    runs: dict[str, list[dict[str, Any]]] = {}
    running = start_each(ctx, made, wait_workers=True)

    def one_round(server: Any) -> dict[str, Any]:
        def measured() -> dict[str, Any]:
            other, core = procs.OtherLoad(), procs.CoreLoad(ctx.server_cpus, server.pid)
            result = measure(server.port, requests)
            result["other_cores"], result["other_on_server_cpus"] = other.stop(), core.stop()
            return result

        return least_disturbed(ctx, "latency", server, measured)

    try:
        runs = interleave(
            ctx,
            "latency",
            running,
            one_round,
            lambda r: f"p50 {r['p50_us']:.0f} µs, p99 {r['p99_us']:.0f} µs, mean {r['mean_us']:.0f} µs",
        )
    finally:
        stop_each(ctx, made)
    return {
        "title": f"Sequential requests on one keep-alive connection ({requests:,} per round after "
        f"{WARMUP} warm-up; hello-world, ASGI)",
        "kind": "latency",
        "requests": requests,
        "runs": runs,
    }
