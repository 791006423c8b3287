"""Load generators: wrk (when installed) and a built-in one, with one result shape.

Both return {tool, rps, requests, errors, error_detail, p50_ms, p90_ms, p99_ms, p999_ms, max_ms, mib_s, gen_cores}.

The built-in generator is `python -m bench.load --url ...`: one process per load core (asyncio + uvloop,
httptools to parse responses), keep-alive connections, optional pipelining (--pipeline N requests in flight
per connection), optional `Connection: close`, and a log-bucket latency histogram (1 % wide buckets) that the
processes' results are merged from. It prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # `python bench/load.py`: serve the package from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import procs

HOST = "127.0.0.1"


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


# ---------------------------------------------------------------------------- a probe request


def probe(port: int, path: str = "/", timeout: float = 1.0, tls: bool = False) -> int:
    """Status of one GET on a fresh connection (raises OSError when nothing answers); `tls`: over TLS,
    the certificate unchecked (the bench's own, self-signed)."""
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        sock = raw
        if tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(raw)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before a status line")
            data += chunk
        return int(data[9:12])


# ---------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}

WRK_SCRIPT = """
%(setup)s
done = function(summary, latency, requests)
  io.write(string.format("BENCH-LATENCY %%d %%d %%d %%d %%d\\n", latency:percentile(50), latency:percentile(90),
           latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """wrk's text output (with the BENCH-LATENCY line our script prints) -> the common result shape."""
    result: dict[str, Any] = {"tool": "wrk", "error_detail": {}}
    match = re.search(r"Requests/sec:\s*([\d.]+)", output)
    if not match:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    result["rps"] = float(match.group(1))
    m = re.search(r"^BENCH-LATENCY (\d+) (\d+) (\d+) (\d+) (\d+)", output, re.MULTILINE)
    if m:
        for key, us in zip(("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"), m.groups()):
            result[key] = int(us) / 1000
    else:  # no script output: wrk's own --latency table
        for q in ("50", "90", "99"):
            m = re.search(rf"^\s*{q}(?:\.000)?%\s+(\S+)", output, re.MULTILINE)
            if m:
                result[f"p{q}_ms"] = _ms(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Transfer/sec:\s*([\d.]+)(B|KB|MB|GB)", output)
    if m:
        result["mib_s"] = float(m.group(1)) * _BYTES[m.group(2)] / 1024**2
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        result["error_detail"].update(
            {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups()) if int(v)}
        )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m and int(m.group(1)):
        result["error_detail"]["non-2xx"] = int(m.group(1))
    result["errors"] = sum(result["error_detail"].values())
    return result


def run_wrk(
    url: str,
    duration: float,
    connections: int,
    cpus: set[int] | None,
    *,
    body: int = 0,
    close: bool = False,
    timeout_s: int = 5,
) -> dict[str, Any]:
    setup = []
    if body:
        setup += [
            'wrk.method = "POST"',
            f'wrk.body = string.rep("x", {body})',
            'wrk.headers["Content-Type"] = "application/octet-stream"',
        ]
    if close:
        setup.append('wrk.headers["Connection"] = "close"')
    threads = max(1, min(len(cpus) if cpus else 1, connections))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % {"setup": "\n".join(setup)})
        script = f.name
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "-s",
        script,
        url,
    ]
    try:
        code, text, gen_cores = _run_external(argv, cpus, duration)
    finally:
        os.unlink(script)
    if code != 0:
        raise RuntimeError(f"wrk exited with {code}:\n{text}")
    result = parse_wrk(text)
    result["gen_cores"] = gen_cores
    return result


def _run_external(argv: list[str], cpus: set[int] | None, duration: float) -> tuple[int, str, float]:
    """Run an external load generator on `cpus` for about `duration` s (bounded): its exit code, its output,
    and the cores it kept busy (its CPU time over the wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = procs.spawn(argv, cpus, log=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    finally:
        procs.stop(proc, graceful=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cores = ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / max(time.monotonic() - t0, 1e-6)
    return proc.returncode, out.decode("utf-8", "replace"), cores


# ---------------------------------------------------------------------------- h2load (HTTP/2)


def has_h2load() -> bool:
    return shutil.which("h2load") is not None


def run_h2load(url: str, duration: float, connections: int, streams: int, cpus: set[int] | None) -> dict[str, Any]:
    """h2load (nghttp2-client) over h2c prior knowledge: `connections` connections with `streams` concurrent
    streams each, for `duration` seconds."""
    threads = max(1, min(len(cpus) if cpus else 1, connections))
    argv = [
        "h2load",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-D",
        str(max(1, round(duration))),
        url,
    ]
    code, text, gen_cores = _run_external(argv, cpus, duration)
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    done = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored",
        text,
    )
    if code != 0 or m is None or done is None:
        raise RuntimeError(f"h2load exited with {code}:\n{text[-2000:]}")
    detail = {k: int(v) for k, v in (("failed", done.group(4)), ("errored", done.group(5))) if int(v)}
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if codes and int(codes.group(3)) + int(codes.group(4)):
        detail["non-2xx"] = int(codes.group(3)) + int(codes.group(4))
    return {
        "tool": "h2load",
        "rps": float(m.group(1)),
        "errors": sum(detail.values()),
        "error_detail": detail,
        "requests": int(done.group(3)),
        "p99_ms": float("nan"),
        "gen_cores": gen_cores,
    }


# ---------------------------------------------------------------------------- the built-in generator

BUCKETS = 2200  # 1.01 ** 2200 µs: far beyond any timeout


def bucket(us: float) -> int:
    return min(BUCKETS - 1, max(0, int(math.log(max(us, 1.0)) / math.log(1.01))))


def percentile_from(hist: dict[int, int], q: float) -> float:
    """The q-th percentile (ms) of a merged histogram: the upper edge of the bucket it falls in."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = total * q / 100
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return 1.01 ** (index + 1) / 1000
    return 1.01 ** (max(hist) + 1) / 1000


def build_request(url: str, body: int, close: bool) -> bytes:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"{'POST' if body else 'GET'} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: corral-bench\r\n"
    if body:
        head += f"Content-Type: application/octet-stream\r\nContent-Length: {body}\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode() + b"x" * body


async def _generate(
    url: str, connections: int, duration: float, pipeline: int, body: int, close: bool, ws: bool = False
) -> dict[str, Any]:
    import httptools

    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    request = b"" if ws else build_request(url, body, close)
    loop = asyncio.get_running_loop()
    hist = [0] * BUCKETS
    stats = {"requests": 0, "bytes": 0, "errors": {}}
    deadline = loop.time() + duration
    clock = time.perf_counter

    def error(kind: str) -> None:
        stats["errors"][kind] = stats["errors"].get(kind, 0) + 1

    class Client(asyncio.Protocol):
        def __init__(self, done: asyncio.Future) -> None:
            self.done = done
            self.parser = httptools.HttpResponseParser(self)
            self.inflight = 0
            self.t0 = 0.0
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.send()

        def send(self) -> None:
            if loop.time() >= deadline:
                self.transport.close()
                return
            self.inflight = pipeline
            self.t0 = clock()
            self.transport.write(request * pipeline)

        def on_message_complete(self) -> None:
            hist[bucket((clock() - self.t0) * 1e6)] += 1
            stats["requests"] += 1
            if self.parser.get_status_code() >= 400:
                error("non-2xx")
            self.inflight -= 1
            if not self.parser.should_keep_alive():
                self.inflight = 0
                self.transport.close()
            elif self.inflight == 0:
                self.send()

        def data_received(self, data: bytes) -> None:
            stats["bytes"] += len(data)  # heads and bodies, as wrk's Transfer/sec
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
            except httptools.HttpParserError:
                error("parse")
                self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.inflight and loop.time() < deadline:
                error("read")  # the server dropped requests in flight
            if not self.done.done():
                self.done.set_result(None)

    async def one_connection() -> None:
        while loop.time() < deadline:
            done = loop.create_future()
            try:
                await asyncio.wait_for(loop.create_connection(lambda done=done: protocol(done), host, port), 5)
            except (OSError, asyncio.TimeoutError):
                error("connect")
                await asyncio.sleep(0.01)
                continue
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(asyncio.shield(done), max(remaining, 0) + 0.05)
            except asyncio.TimeoutError:
                return  # in flight at the end: not counted, like wrk

    class WSClient(asyncio.Protocol):
        """WebSocket echo: handshake, then one message in flight (or `pipeline`), each echo timed."""

        def __init__(self, done: asyncio.Future) -> None:
            self.done = done
            self.buf = bytearray()
            self.open = False
            self.inflight = 0
            self.t0 = 0.0
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport.write(ws_handshake)

        def send(self) -> None:
            if loop.time() >= deadline:
                self.transport.close()
                return
            self.inflight = pipeline
            self.t0 = clock()
            self.transport.write(ws_frame * pipeline)

        def data_received(self, data: bytes) -> None:
            stats["bytes"] += len(data)
            self.buf += data
            if not self.open:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                if self.buf[9:12] != b"101":
                    error("handshake")
                    self.transport.abort()
                    return
                del self.buf[: end + 4]
                self.open = True
                self.send()
            while len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                at = 2
                if n == 126:
                    if len(self.buf) < 4:
                        return
                    n, at = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127:
                    if len(self.buf) < 10:
                        return
                    n, at = int.from_bytes(self.buf[2:10], "big"), 10
                if len(self.buf) < at + n:
                    return
                opcode = self.buf[0] & 0x0F
                del self.buf[: at + n]
                if opcode == 0x8:  # close
                    self.transport.close()
                    return
                hist[bucket((clock() - self.t0) * 1e6)] += 1
                stats["requests"] += 1
                self.inflight -= 1
                if self.inflight == 0:
                    self.send()

        def connection_lost(self, exc: Exception | None) -> None:
            if (self.inflight or not self.open) and loop.time() < deadline:
                error("read")
            if not self.done.done():
                self.done.set_result(None)

    if ws:
        path = parts.path or "/"
        ws_handshake = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        size = body or 16
        length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
        ws_frame = b"\x82" + length + b"\0\0\0\0" + b"x" * size  # a zero mask: the payload goes as is

    protocol = WSClient if ws else Client
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return {
        "requests": stats["requests"],
        "bytes": stats["bytes"],
        "errors": stats["errors"],
        "hist": {i: n for i, n in enumerate(hist) if n},
    }


def run_builtin(
    url: str,
    duration: float,
    connections: int,
    cpus: set[int] | None,
    *,
    body: int = 0,
    close: bool = False,
    pipeline: int = 1,
    processes: int | None = None,
    ws: bool = False,
) -> dict[str, Any]:
    """Run the built-in generator: one process per load core (or `processes`), connections split among them."""
    count = max(1, min(processes or (len(cpus) if cpus else 1), connections))
    children = []
    t0 = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        for i in range(count):
            share = connections // count + (1 if i < connections % count else 0)
            argv = [
                sys.executable,
                "-m",
                "bench.load",
                "--url",
                url,
                "--connections",
                str(share),
                "--duration",
                str(duration),
                "--pipeline",
                str(pipeline),
                "--body",
                str(body),
            ]
            if close:
                argv.append("--close")
            if ws:
                argv.append("--ws")
            children.append(procs.spawn(argv, cpus, env=dict(os.environ, PYTHONPATH=procs.ROOT), log=subprocess.PIPE))
        outputs = []
        for child in children:
            out, _ = child.communicate(timeout=duration + 60)
            if child.returncode != 0:
                raise RuntimeError(f"built-in generator exited with {child.returncode}:\n{out.decode()[-2000:]}")
            outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for child in children:
            procs.stop(child, graceful=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = max(time.monotonic() - t0, 1e-6)
    hist: dict[int, int] = {}
    errors: dict[str, int] = {}
    for out in outputs:
        for k, v in out["hist"].items():
            hist[int(k)] = hist.get(int(k), 0) + v
        for k, v in out["errors"].items():
            errors[k] = errors.get(k, 0) + v
    requests = sum(o["requests"] for o in outputs)
    return {
        "tool": "builtin",
        "rps": requests / duration,
        "requests": requests,
        "errors": sum(errors.values()),
        "error_detail": errors,
        "p50_ms": percentile_from(hist, 50),
        "p90_ms": percentile_from(hist, 90),
        "p99_ms": percentile_from(hist, 99),
        "p999_ms": percentile_from(hist, 99.9),
        "max_ms": 1.01 ** (max(hist) + 1) / 1000 if hist else float("nan"),
        "mib_s": sum(o["bytes"] for o in outputs) / duration / 1024**2,
        "gen_cores": ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / wall,
    }


def run_load(
    tool: str,
    url: str,
    duration: float,
    connections: int,
    cpus: set[int] | None,
    **kw: Any,
) -> dict[str, Any]:
    """`tool` is 'wrk' or 'builtin'; keyword arguments: body, close (and pipeline for the built-in one)."""
    if tool == "wrk":
        kw.pop("pipeline", None)
        return run_wrk(url, duration, connections, cpus, **kw)
    return run_builtin(url, duration, connections, cpus, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One process of the built-in load generator (prints JSON).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--body", type=int, default=0, help="POST a body of this many bytes")
    parser.add_argument("--close", action="store_true", help="send Connection: close")
    parser.add_argument("--ws", action="store_true", help="WebSocket echo: messages of --body bytes (16)")
    args = parser.parse_args(argv)
    procs.raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        _generate(args.url, args.connections, args.duration, args.pipeline, args.body, args.close, args.ws)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
