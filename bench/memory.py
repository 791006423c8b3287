"""Memory scenario `idle`: worker RSS with many idle keep-alive connections.

Fresh servers every round (A B C, then A B C again), each warmed up, measured idle, then holding
`--idle-connections` connections (one request each, then silent; keep-alive timeouts raised to 60 s
everywhere), measured again, and once more after the client has closed them all. KiB per idle connection =
(total worker RSS with - without) / connections the server's workers hold (counted from their sockets; it is
all of them unless a server caps its connections); KiB returned = (RSS with - RSS after the close) / the same.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import psutil

from bench import load, procs
from bench.context import Ctx, start_each, stop_each

MIB = 1024 * 1024
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: corral-bench\r\n\r\n"


def steps(ctx: Ctx, name: str) -> int:
    return len(ctx.asgi) * ctx.rounds


async def _hold(port: int, count: int, measure: Any, concurrency: int = 200, after: Any = None) -> dict[str, Any]:
    held: list[asyncio.StreamWriter] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(load.HOST, port), 10)
            except Exception as exc:  # noqa: BLE001 - every failure of a held connection is counted, by its type
                errors.append(f"connect: {type(exc).__name__}")
                return
            held.append(writer)
            try:
                writer.write(REQUEST)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                match = re.search(rb"\r\ncontent-length:\s*(\d+)", head.lower())
                await asyncio.wait_for(reader.readexactly(int(match.group(1)) if match else 0), 10)
                if head[9:12] != b"200":
                    errors.append(f"status {head[9:12].decode()}")
            except Exception as exc:  # noqa: BLE001 - every failure of a held connection is counted, by its type
                errors.append(f"request: {type(exc).__name__}")

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.sleep(0.5)
        result = measure()
        result.update(client_errors=len(errors), error_samples=sorted(set(errors))[:5])
    finally:
        for writer in held:
            writer.transport.abort()
        await asyncio.sleep(0)
    if after is not None:
        result.update(await asyncio.get_running_loop().run_in_executor(None, after))
    return result


def _total_rss(pid: int) -> tuple[int, int]:
    sizes = []
    for proc in procs.workers(pid):
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), len(sizes)


def _established(pid: int, port: int) -> int:
    total = 0
    for proc in procs.workers(pid):
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        total += sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
    return total


def _settled(pid: int, wait: float = 3.0) -> tuple[int, int]:
    deadline = time.monotonic() + wait
    last = _total_rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _total_rss(pid)
        if now[0] == last[0]:
            break
        last = now
    return last


def run(ctx: Ctx, name: str) -> dict[str, Any]:
    procs.raise_nofile()
    count = ctx.idle_connections
    runs: dict[str, list[dict[str, Any]]] = {}
    for rnd in range(1, ctx.rounds + 1):
        for server_name in ctx.asgi:
            server = ctx.server(server_name, "bench.apps:hello", keepalive=60)
            running = start_each(ctx, [server], wait_workers=True)
            try:
                if not running:
                    continue
                load.run_builtin(server.url, 0.5 if ctx.quick else 1.0, 8, ctx.load_cpus)  # warm up every worker
                time.sleep(0.3)
                idle, nworkers = _settled(server.pid)

                def measure(pid: int = server.pid, port: int = server.port) -> dict[str, Any]:
                    rss, _ = _settled(pid)
                    return {"rss_with": rss, "held": _established(pid, port)}

                def after(pid: int = server.pid, port: int = server.port) -> dict[str, Any]:
                    # The connections closed: what the workers gave back once they are gone (waited for,
                    # then settled: a few seconds, as servers free and trim on their own clock).
                    deadline = time.monotonic() + 10
                    while _established(pid, port) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    time.sleep(2.0)
                    return {"rss_after": _settled(pid, 4.0)[0]}

                result = asyncio.run(_hold(server.port, count, measure, after=after))
                held = max(result["held"] or count, 1)
                result.update(kib_returned=(result["rss_with"] - result["rss_after"]) / held / 1024)
                result.update(
                    rss_idle=idle,
                    workers=nworkers,
                    connections=count,
                    rss_mib=idle / max(nworkers, 1) / MIB,
                    rss_with_mib=result["rss_with"] / max(nworkers, 1) / MIB,
                    # per connection the server holds (granian caps them: --backpressure)
                    kib_per_conn=(result["rss_with"] - idle) / max(result["held"] or count, 1) / 1024,
                    errors=result["client_errors"],
                )
                runs.setdefault(server.name, []).append(result)
                ctx.progress.step(
                    f"idle round {rnd}/{ctx.rounds} {server.name}: {result['kib_per_conn']:.2f} "
                    f"KiB/conn, {result['held']} held, {result['kib_returned']:.2f} KiB/conn "
                    f"returned after the close, {result['client_errors']} errors"
                )
            finally:
                stop_each(ctx, [server])
    return {
        "title": f"{count:,} idle keep-alive connections: memory",
        "kind": "idle",
        "connections": count,
        "runs": runs,
    }
