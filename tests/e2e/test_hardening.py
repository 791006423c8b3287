"""A real `serve -w 2` with an echo application (ASGI and WSGI) under hostile clients: memory and CPU measured
in the worker processes (psutil) against generous absolute caps, never timings; and a socket-level smoke of a
few thousand mutated requests with no worker restart and no 5xx."""

from __future__ import annotations

import os
import random
import socket
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import LIFESPAN, WAIT, Master, wait_until

ECHO = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message["body"]
        if not message["more_body"]:
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok:%d" % len(body)})


def wsgi(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok:%d" % len(body)]
"""

MIB = 1024 * 1024


@pytest.fixture
def serve(tmp_path, masters):
    (tmp_path / "echo.py").write_text(LIFESPAN + textwrap.dedent(ECHO))

    def serve(*args: str, app: str = "echo:app") -> Master:
        master = masters(tmp_path, "-w", "2", *args, app)
        master.wait_workers(2)
        master.wait_serving()
        return master

    return serve


def workers(master: Master) -> list[psutil.Process]:
    return [psutil.Process(w["pid"]) for w in master.wait_workers(2)]


def rss(procs: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in procs)


def cpu(procs: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def ask(port: int, data: bytes, timeout: float = WAIT, half_close: bool = True) -> bytes:
    """Send `data`, half-close (the server then closes once it has answered what it read; a client's EOF
    counts as its disconnect), read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed while this was being sent
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def test_unread_pipelining_keeps_worker_memory_bounded(serve):
    master = serve("--max-requests-per-connection", "0")
    procs = workers(master)
    before = rss(procs)
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 1000
    socks = []
    try:
        for _ in range(100):  # 100 connections x 1,000 pipelined GETs, none of the answers read
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", master.port))
            sock.setblocking(False)
            try:
                sock.send(request)
            except BlockingIOError:
                pass
            socks.append(sock)
        # Wait until the workers have stopped making progress (every connection stalls on its unread
        # answers), then measure: before the bound this was ~0.85 MiB per connection.
        last = [-1.0]

        def settled() -> bool:
            now = cpu(procs)
            quiet = now - last[0] < 0.02
            last[0] = now
            return quiet

        wait_until(settled, "the workers to stall on unread answers", interval=0.5)
        grown = rss(procs) - before
        assert grown < 40 * MIB, f"worker RSS grew by {grown / MIB:.1f} MiB"
    finally:
        for sock in socks:
            sock.close()
    assert ask(master.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").endswith(b"ok:0")


@pytest.mark.parametrize("app", ["echo:app", "echo:wsgi"])
def test_a_body_in_one_byte_chunks_costs_little_cpu(serve, app):
    master = serve(app=app)
    procs = workers(master)
    before = cpu(procs)
    # 2 million one-byte chunks (12 MB on the wire): before the bound ~2.5 s of worker CPU.
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = ask(master.port, head + b"1\r\nx\r\n" * 2_000_000)
    assert answer.startswith(b"HTTP/1.1 400 ")
    used = cpu(procs) - before
    assert used < 1.0, f"{used:.2f} s of worker CPU"
    assert [p.pid for p in procs] == [p.pid for p in workers(master)]  # no worker restarted


@pytest.mark.parametrize("app", ["echo:app", "echo:wsgi"])
def test_stalled_uploads_cannot_starve_an_ordinary_request(serve, app):
    # More stalled uploads than the pool has slots (2 workers x 10); each is cut off by the body timeout.
    master = serve("--max-applications", "20", "--threads", "4", "--body-timeout", "1", app=app)
    stalled = []
    try:
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", master.port), timeout=WAIT)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc")
            stalled.append(sock)
        answer = ask(master.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", half_close=False)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok:0")
        for sock in stalled:  # every stalled upload was answered 408 and closed
            received = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
            assert received.startswith(b"HTTP/1.1 408 "), received[:60]
    finally:
        for sock in stalled:
            sock.close()


# ---------------------------------------------------------------------------- mutated requests

SEEDS = [
    b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
]
TOKENS = [
    b"\r\n",
    b"\n",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\xff",
    b"Host: b\r\n",
    b"Content-Length: 99\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"HTTP/2.0",
    b"%00",
    b"*",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # bit flip
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # splice a token in
            data[at:at] = rng.choice(TOKENS)
        elif kind == 2:  # truncate
            del data[at:]
        elif kind == 3 and data:  # delete a run
            del data[at : at + rng.randint(1, 8)]
        else:  # splice a piece of another seed
            other = rng.choice(SEEDS)
            start = rng.randrange(len(other))
            data[at:at] = other[start : start + rng.randint(1, 40)]
    if rng.random() < 0.3:  # and change header casing
        data = bytearray(bytes(data).swapcase() if rng.random() < 0.5 else bytes(data).upper())
    return bytes(data)


@pytest.mark.parametrize("app", ["echo:app", "echo:wsgi"])
def test_thousands_of_mutated_requests_restart_no_worker(serve, app):
    master = serve("--header-timeout", "2", "--body-timeout", "2", app=app)
    before = {p.pid for p in workers(master)}
    rng = random.Random(20261206)
    cases = [mutate(rng, rng.choice(SEEDS)) for _ in range(2500)]
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def one(data: bytes) -> None:
        answer = ask(master.port, data)
        for line in answer.split(b"\r\n"):
            if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit():
                with lock:
                    statuses[int(line[9:12])] = statuses.get(int(line[9:12]), 0) + 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, cases))
    assert not [s for s in statuses if s >= 500 and s != 505], statuses
    assert statuses.get(200) and statuses.get(400), statuses  # both kinds were exercised
    assert {p.pid for p in workers(master)} == before  # no worker died or was replaced
    for marker in ("Traceback", "Error while handling request bytes", "Exception in ASGI application"):
        assert marker not in master.output, master.output[-3000:]
