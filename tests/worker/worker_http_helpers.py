"""Helpers for the HTTP/1.1 worker tests (imported by the tests of every room under tests/worker/; its
conftest.py puts this folder on sys.path): a real server on 127.0.0.1:0, raw sockets, a small response reader.

Every wait is bounded (WAIT seconds) and no test asserts on timings.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.shared.settings import Settings
from corral.worker.serve.testing import call_in_loop, run_server

WAIT = 5.0


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    trailer: bytes = field(default=b"")

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class Client:
    """A raw-socket HTTP/1.1 client: send bytes, parse responses (Content-Length, chunked, close-delimited)."""

    def __init__(self, host: str, port: int | None) -> None:
        if port is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(WAIT)
            self.sock.connect(host)
        else:
            self.sock = socket.create_connection((host, port), timeout=WAIT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, target: str = "/", headers: str = "", version: str = "1.1") -> Response:
        self.send(f"GET {target} HTTP/{version}\r\nHost: test\r\n{headers}\r\n".encode())
        return self.response()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("connection closed by the server")
        self.buf += data

    def _read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        data, _, self.buf = self.buf.partition(sep)
        return data

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, head_request: bool = False) -> Response:
        raw = self._read_until(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        _, status, reason = [*lines[0].split(" ", 2), ""][:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = Response(int(status), reason, headers, b"", raw)
        code = response.status
        if head_request or code < 200 or code in (204, 304):
            return response
        length = response.header("content-length")
        if length is not None:
            response.body = self._read_exact(int(length))
        elif response.header("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    response.trailer = self._read_until(b"\r\n")
                    break
                body += self._read_exact(size)
                assert self._read_exact(2) == b"\r\n"
            response.body = body
        else:
            response.body = self.read_to_eof()
        return response

    def read_to_eof(self) -> bytes:
        """Everything until the server closes (bounded by the socket timeout)."""
        while True:
            try:
                self._fill()
            except EOFError:
                data, self.buf = self.buf, b""
                return data
            except ConnectionResetError:
                data, self.buf = self.buf, b""
                return data

    def closed(self) -> bool:
        """Wait (bounded) for the server to close; True when it does and nothing more was sent."""
        try:
            return self.read_to_eof() == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def assert_error_and_close(client: Client, status: int) -> None:
    """The server answered `status` with `connection: close`, and closed."""
    response = client.response()
    assert response.status == status, response
    assert response.header("connection") == "close"
    assert client.closed()


def assert_still_serving(host: str, port: int) -> None:
    """A new connection is served (by an application answering `ok:<body length>`)."""
    with Client(host, port) as other:
        assert other.get().body == b"ok:0"


def settings(**values: Any) -> Settings:
    return Settings(**values)


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll a condition from the test thread (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Gate:
    """An asyncio.Event made on first use inside the server's loop, opened from the test thread."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None
        self.entered = threading.Event()  # set when an application reached the gate
        self.server: Any = None

    async def wait(self) -> None:
        if self.event is None:
            self.event = asyncio.Event()
        self.entered.set()
        await self.event.wait()

    def open(self, server: Any) -> None:
        def set_event() -> None:
            if self.event is None:
                self.event = asyncio.Event()
            self.event.set()

        call_in_loop(server, set_event)


__all__ = [
    "Client",
    "Response",
    "Gate",
    "WAIT",
    "run_server",
    "call_in_loop",
    "settings",
    "wait_until",
    "assert_error_and_close",
    "assert_still_serving",
]
