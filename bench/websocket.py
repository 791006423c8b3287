"""WebSocket echo benchmark: one corral worker side by side with uvicorn, interleaved, in the same run.

    python -m bench.websocket                       # from the repository root
    python -m bench.websocket --seconds 5 --rounds 3 --clients 50 --idle 2000

What is measured (each server pinned to core 0 with `taskset -c 0`, the client pinned to core 1):
- round trips per second: `--clients` connections, each sending a small pre-masked binary frame and waiting
  for its echo before the next (no pipelining);
- throughput of 1 MiB binary messages (MiB/s of echoed payload, 4 connections, one message in flight each);
- memory per idle open socket: the server's RSS growth for `--idle` open, idle WebSockets, per socket.

The client is frame-level and lean on purpose: the `websockets` client library costs ~32 us of CPU per round
trip and saturates its core before either server does. By default it is bench/ws_client.c (compiled with the
system's `cc`; one thread, epoll, pre-masked frames, echoes counted in bytes); `--python-client` (or no C
compiler) uses an asyncio Protocol on uvloop doing the same, which costs about as much CPU per round trip as
corral does. Every echo has a known size; neither server sends anything else within a round (pings are every
20 s, connections are fresh per round).

Besides round trips per second, the server's CPU time per round trip (user + system, from /proc) is
reported: on a shared machine other load moves the rates a lot and this figure very little.

Servers: corral (`bench/launch.py bench.apps:ws_echo`, one worker, default settings) and uvicorn
(`--ws websockets-sansio`, and the legacy `--ws websockets`, with uvloop and httptools, no access log).
Rounds alternate between the servers; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.servers import base_env, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = "bench.apps:ws_echo"
SMALL = os.urandom(16)
BIG = os.urandom(1 << 20)


# ---------------------------------------------------------------------------- frames


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    from websockets.speedups import apply_mask  # C masking: building the 1 MiB frame once is fast

    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def echo_size(payload: bytes) -> int:
    n = len(payload)
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key)
    )


class EchoClient(asyncio.Protocol):
    """One connection: handshake, then send `frame`, wait for `expect` bytes, repeat while running."""

    def __init__(self, port: int, frame: bytes, expect: int, opened: asyncio.Future, state: dict) -> None:
        self.port = port
        self.frame = frame
        self.expect = expect
        self.opened = opened
        self.state = state
        self.transport: Any = None
        self.head = b""
        self.open = False
        self.got = 0
        self.count = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(handshake(self.port))

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(RuntimeError(self.head[:200]))
                return
            self.open = True
            data = self.head[end + 4 :]
            self.head = b""
            self.opened.set_result(self)
            if not data:
                return
        self.got += len(data)
        expect = self.expect
        while self.got >= expect:
            self.got -= expect
            self.count += 1
            if self.state["run"]:
                self.transport.write(self.frame)

    def go(self) -> None:
        self.transport.write(self.frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))


async def open_clients(port: int, count: int, payload: bytes, state: dict) -> list[EchoClient]:
    loop = asyncio.get_running_loop()
    frame = masked_frame(payload)
    clients = []
    for start in range(0, count, 200):
        batch = []
        for _ in range(start, min(count, start + 200)):
            opened = loop.create_future()
            await loop.create_connection(
                lambda opened=opened: EchoClient(port, frame, echo_size(payload), opened, state), "127.0.0.1", port
            )
            batch.append(opened)
        clients += await asyncio.wait_for(asyncio.gather(*batch), 60)
    return clients


_C_CLIENT: list[str | None] = []


def c_client() -> str | None:
    """bench/ws_client.c compiled (once, into a temporary folder), or None without a C compiler."""
    if not _C_CLIENT:
        import atexit
        import shutil
        import tempfile

        path = None
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler:
            folder = tempfile.mkdtemp(prefix="corral-bench-")
            atexit.register(shutil.rmtree, folder, True)  # the binary lives as long as this process
            path = os.path.join(folder, "ws_client")
            result = subprocess.run(
                [compiler, "-O2", "-o", path, os.path.join(ROOT, "bench", "ws_client.c")],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                print(f"warning: could not compile bench/ws_client.c:\n{result.stderr}", file=sys.stderr)
                path = None
        _C_CLIENT.append(path)
    return _C_CLIENT[0]


async def measure_c(
    client: str, port: int, pid: int, clients: int, payload: int, seconds: float
) -> tuple[float, float]:
    """As `measure`, with the C client (its own process, pinned to core 1)."""
    cpu = cpu_seconds(pid)
    proc = await asyncio.create_subprocess_exec(
        "taskset",
        "-c",
        "1",
        client,
        str(port),
        str(clients),
        str(payload),
        "0",
        str(seconds),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    cpu = cpu_seconds(pid) - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"ws_client failed: {err.decode()}")
    done, elapsed = out.split()
    return int(done) / float(elapsed), cpu / max(int(done), 1) * 1e6


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(port: int, pid: int, clients: int, payload: bytes, seconds: float) -> tuple[float, float]:
    """Round trips per second over `seconds` (after a short warm-up), and the server's CPU microseconds
    per round trip (user + system): the figure that other load on a shared machine disturbs least."""
    state = {"run": True}
    conns = await open_clients(port, clients, payload, state)
    for conn in conns:
        conn.go()
    await asyncio.sleep(min(1.0, seconds / 4))  # warm-up
    before = sum(c.count for c in conns)
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    done = sum(c.count for c in conns) - before
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu
    state["run"] = False
    await asyncio.sleep(0.2)
    for conn in conns:
        conn.transport.abort()
    await asyncio.sleep(0.2)
    return done / elapsed, cpu / max(done, 1) * 1e6


async def idle_memory(port: int, pid: int, count: int) -> float:
    """KiB of server RSS per open idle WebSocket."""
    import psutil

    proc = psutil.Process(pid)
    await asyncio.sleep(0.5)
    before = proc.memory_info().rss
    state = {"run": False}
    conns = await open_clients(port, count, SMALL, state)
    await asyncio.sleep(1.0)
    after = proc.memory_info().rss
    for conn in conns:
        conn.transport.abort()
    await asyncio.sleep(0.5)
    return (after - before) / count / 1024


# ---------------------------------------------------------------------------- servers


class Server:
    def __init__(self, name: str, command: list[str], port: int | None, env: dict | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", *command],
            cwd=ROOT,
            env=base_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if port is None:  # bench/launch.py prints the port it bound
            line = self.proc.stdout.readline()  # type: ignore[union-attr]  # stdout=PIPE
            if not line.startswith("listening on "):
                raise RuntimeError(f"{name} did not start: {line}{self.proc.stdout.read()}")  # type: ignore[union-attr]  # stdout=PIPE
            port = int(line.split()[-1])
        self.port = port
        if not wait_port(port, self.proc):
            raise RuntimeError(f"{name} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_servers(uvicorn_ws: list[str]) -> list[Server]:
    servers = [Server("corral", [sys.executable, "-m", "bench.launch", APP], None)]
    for ws in uvicorn_ws:
        port = free_port()
        servers.append(
            Server(
                f"uvicorn --ws {ws}",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    APP,
                    "--port",
                    str(port),
                    "--ws",
                    ws,
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    "--lifespan",
                    "off",
                ],
                port,
            )
        )
    return servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--idle", type=int, default=2000, help="idle sockets for the memory figure (0: skip)")
    parser.add_argument(
        "--uvicorn-ws",
        default="websockets-sansio,websockets",
        help="uvicorn --ws implementations to compare with (comma-separated)",
    )
    parser.add_argument(
        "--python-client", action="store_true", help="use the Python client even when bench/ws_client.c compiles"
    )
    args = parser.parse_args(argv)
    try:
        os.sched_setaffinity(0, {1})  # the client on core 1; the servers are on core 0
    except (AttributeError, OSError):
        print("warning: could not pin the client to core 1", file=sys.stderr)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    client = None if args.python_client else c_client()
    print(f"client: {'bench/ws_client.c (C, epoll)' if client else 'Python (asyncio Protocol on uvloop)'}")
    servers = start_servers([w for w in args.uvicorn_ws.split(",") if w])
    results: dict[str, dict[str, list[float]]] = {s.name: {"rt": [], "mib": [], "cpu": []} for s in servers}
    memory: dict[str, float] = {}
    try:
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]  # interleaved, alternating order
            for server in order:
                pid = server_pid(server)
                if client is not None:
                    rt, cpu = loop.run_until_complete(
                        measure_c(client, server.port, pid, args.clients, len(SMALL), args.seconds)
                    )
                    messages, _ = loop.run_until_complete(
                        measure_c(client, server.port, pid, 4, len(BIG), args.seconds / 2)
                    )
                else:
                    rt, cpu = loop.run_until_complete(measure(server.port, pid, args.clients, SMALL, args.seconds))
                    messages, _ = loop.run_until_complete(measure(server.port, pid, 4, BIG, args.seconds / 2))
                mib = messages  # one 1 MiB message echoed per round trip
                results[server.name]["rt"].append(rt)
                results[server.name]["mib"].append(mib)
                results[server.name]["cpu"].append(cpu)
                print(
                    f"round {round_ + 1} {server.name:28} {rt:10.0f} rt/s {cpu:7.1f} us CPU/rt {mib:8.1f} MiB/s",
                    flush=True,
                )
        if args.idle:
            for server in servers:
                memory[server.name] = loop.run_until_complete(idle_memory(server.port, server_pid(server), args.idle))
    finally:
        for server in servers:
            server.stop()
        loop.close()
    print()
    print(f"{'server':28} {'rt/s (median)':>14} {'us CPU/rt':>10} {'1 MiB MiB/s':>12} {'KiB/idle socket':>16}")
    base = statistics.median(results["corral"]["rt"])
    base_cpu = statistics.median(results["corral"]["cpu"])
    for server in servers:
        rt = statistics.median(results[server.name]["rt"])
        cpu = statistics.median(results[server.name]["cpu"])
        mib = statistics.median(results[server.name]["mib"])
        mem = memory.get(server.name)
        print(f"{server.name:28} {rt:14.0f} {cpu:10.1f} {mib:12.1f} {(f'{mem:.1f}' if mem is not None else '-'):>16}")
    for server in servers[1:]:
        ratio = base / statistics.median(results[server.name]["rt"])
        cpu_ratio = statistics.median(results[server.name]["cpu"]) / base_cpu
        print(
            f"corral vs {server.name}: {ratio:.2f}x round trips per second, "
            f"{cpu_ratio:.2f}x less server CPU per round trip"
        )
    return 0


def server_pid(server: Server) -> int:
    """The serving process (taskset execs the command, so the Popen pid is the server's)."""
    return server.proc.pid


if __name__ == "__main__":
    sys.exit(main())
