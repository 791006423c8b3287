"""A served request leaves no reference cycle behind: reference counting frees all it made, and Python's cyclic
collector has nothing to find (its passes are what a cycle per request would cost). Checked with the
collector off while requests are served, then one collection, which must find nothing."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from bench.apps import hello, hello_wsgi
from worker_http_helpers import WAIT, run_server, settings

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
CLOSE = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


async def suspending(scope, receive, send):
    """Runs as a task: its first step suspends (corral.worker.app.eager goes on with a task)."""
    await receive()
    await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


def streamed(environ, start_response):
    start_response("200 OK", [("Content-Length", "13")])
    return iter([b"Hello, ", b"world!"])


def _answer(sock: socket.socket) -> None:
    data = b""
    while not data.endswith(b"Hello, world!"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk


def _serve(sock_factory, requests: int) -> None:
    sock = None
    for _ in range(requests):
        sock, close = sock_factory(sock)
        sock.sendall(CLOSE if close else REQUEST)
        _answer(sock)
        if close:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


@pytest.mark.parametrize(
    "app, wsgi, close, values",
    [
        (hello, False, False, {}),
        (hello, False, True, {}),
        (suspending, False, False, {}),
        (hello_wsgi, True, False, {}),
        (hello_wsgi, True, False, {"threads": 1}),
        (streamed, True, False, {"threads": 1}),
        (hello_wsgi, True, True, {}),
    ],
    ids=["asgi", "asgi-close", "asgi-task", "wsgi", "wsgi-threads1", "wsgi-threads1-streamed", "wsgi-close"],
)
def test_requests_leave_no_cycles(app, wsgi, close, values):
    with run_server(app, settings(**values), wsgi=wsgi) as (host, port, _):

        def connect(sock):
            return (sock or socket.create_connection((host, port), timeout=WAIT)), close

        _serve(connect, 20)  # warm-up: first-use caches and imports
        gc.collect()
        gc.disable()
        try:
            _serve(connect, 200)
            found = gc.collect()
        finally:
            gc.enable()
    assert found == 0
