"""A flood of stalled connections against a real `serve -w 2` (default settings: 1,000 application instances in
all), ASGI and WSGI: 1,100 raw sockets that send a request head and stall in the body, or that ask for a
10 MiB response and never read it. An ordinary request on a fresh connection, queued behind the whole flood,
is answered within 5 s (the minimum data rates end the stalled transfers, and a full pool cuts their grace
to a second), and no worker is restarted."""

from __future__ import annotations

import os
import re
import resource
import socket
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import LIFESPAN, WAIT, wait_until

FLOOD = 1100
ANSWER_WITHIN = 5.0  # the bound this defence promises (README "Limits and defences"), not a speed figure

APP = """
CHUNK = b"x" * 65536
SIZE = 160 * len(CHUNK)  # 10 MiB


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["path"] == "/download":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % SIZE)]})
        for _ in range(160):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
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
    if environ["PATH_INFO"] == "/download":
        start_response("200 OK", [("Content-Length", str(SIZE))])
        return (CHUNK for _ in range(160))  # streamed from the app's thread
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok:%d" % len(body)]
"""

REQUESTS = {
    "upload": b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc",  # 3 of 1,000 bytes
    "download": b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.fixture(scope="module", autouse=True)
def enough_files():
    """FLOOD sockets in this process: raise the soft limit on open files up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOOD + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard limit on open files is {hard}; {need} are needed")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def serve(tmp_path, masters):
    (tmp_path / "flood.py").write_text(LIFESPAN + textwrap.dedent(APP))

    def serve(app: str):
        master = masters(tmp_path, "-w", "2", app)
        master.wait_workers(2)
        master.wait_serving()
        return master

    return serve


def flood(port: int, kind: str) -> list[socket.socket]:
    socks = []
    try:
        for _ in range(FLOOD):
            sock = socket.socket()
            if kind == "download":
                # A client that reads nothing keeps little on its side; and an internet-sized segment (loopback's
                # is 64 KiB, which makes the kernel give each connection a send buffer of over a megabyte
                # before anything waits, a gigabyte and more of this machine's memory for the flood).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
            socks.append(sock)
            sock.settimeout(WAIT)
            sock.connect(("127.0.0.1", port))
            sock.sendall(REQUESTS[kind])
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def ordinary_request(port: int) -> tuple[float, bytes]:
    """GET on a fresh connection: (seconds from sending it to the end of the answer, the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        start = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return time.monotonic() - start, answer
            answer += chunk


TCP_CLOSE_WAIT, TCP_CLOSE = 8, 7  # tcp_info.tcpi_state: the server sent its FIN, or reset the connection


def ended_by_server(sock: socket.socket, kind: str) -> bool:
    """Whether the server ended this flood connection (an upload's with a 408 first). Nothing blocks, and a
    download's bytes are never read (reading them would make it a client that reads)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    if state != TCP_CLOSE_WAIT and state != TCP_CLOSE:
        return False
    if kind == "download":
        return True
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT).startswith(b"HTTP/1.1 408 ")
    except (BlockingIOError, ConnectionResetError):
        return False


@pytest.mark.parametrize("kind", ["upload", "download"])
@pytest.mark.parametrize("app", ["flood:app", "flood:wsgi"])
def test_an_ordinary_request_is_answered_during_a_flood_of_stalled_connections(serve, app, kind):
    master = serve(app)
    pids = sorted(w["pid"] for w in master.wait_workers(2))
    flooded = time.monotonic()
    socks = flood(master.port, kind)
    try:
        elapsed, answer = ordinary_request(master.port)  # behind all 1,100 in the listening socket's queue
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok:0"), answer[:200]
        assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.2f} s"
        # The flood did fill both pools, and was ended: a 408 each for the uploads, a reset for the downloads.
        # (The ~100 that waited in the listening socket's queue were admitted after: their grace is 5 s.)
        waiting = list(socks)

        def most_ended() -> bool:
            waiting[:] = [sock for sock in waiting if not ended_by_server(sock, kind)]
            return len(waiting) <= FLOOD - 1000

        wait_until(most_ended, f"the server to end most of the {kind} flood", timeout=30, interval=0.2)
        # Reported in a line per worker per 10 s at most, not one per connection.
        wait_until(lambda: "below the minimum data rate" in master.output, "the workers' report")
        reports = re.findall(
            r"\[(\d+)\] \[WARNING\] Ended (\d+) connection\(s\) below the minimum data rate", master.output
        )
        allowed = 1 + int((time.monotonic() - flooded) / 10)
        assert reports and all(sum(p == pid for p, _ in reports) <= allowed for pid, _ in reports), reports
    finally:
        for sock in socks:
            sock.close()
    assert sorted(w["pid"] for w in master.wait_workers(2)) == pids  # no worker was restarted
