"""`--metrics-bind`: the master answers `GET /metrics` itself, on its own loop, without a thread.

The master is one `select` loop; this adds a listening socket and its connections to that loop's
selector. Everything is non-blocking and bounded: a request head may be 8 KiB and must arrive within
`DEADLINE` seconds, the response goes out as the socket takes it, one request per connection
(`Connection: close`), at most `MAX_CONNECTIONS` at a time. A client that stalls costs a file descriptor
until the deadline, never the loop's time. Not served by a worker on purpose: a saturated worker (its
pool full, its loop blocked) cannot hide its own figures, and the figures are the sum of all workers.
The page and its content type come from `render(accept)`, given the request's Accept header (content
negotiation: the text format or OpenMetrics, corral.master.observe.exposition).
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from corral.master.listen.sockets import bind, parse_address

__all__ = ["MetricsServer"]

logger = logging.getLogger("corral.master")

DEADLINE = 10.0
MAX_HEAD = 8192
MAX_CONNECTIONS = 32

#: `render(accept)`: the request's Accept header ("" without one) -> the page and its content type.
Render = Callable[[str], tuple[bytes, str]]


class _Conn:
    __slots__ = ("sock", "inbox", "outbox", "deadline")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.deadline = time.monotonic() + DEADLINE


def _response(status: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\ncache-control: no-store\r\n{extra}\r\n"
    ).encode("latin-1") + body


def _accept(head: bytes) -> str:
    """The Accept header's value (several Accept lines joined, as HTTP allows); "" without one."""
    values = []
    for line in head.split(b"\n")[1:]:
        if not line.strip():
            break  # the end of the head
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"accept":
            values.append(value.strip().decode("latin-1"))
    return ", ".join(values)


class MetricsServer:
    """A tiny HTTP/1.1 server for /metrics inside the master's selector loop."""

    def __init__(self, address: str, render: Render, backlog: int = 64) -> None:
        self.render = render
        # SO_REUSEPORT on TCP: after USR2 the new master binds the same address while the old one still
        # serves it (either answers a scrape during the overlap). BindError: the CLI's exit 6.
        self.sock = bind(parse_address(address), backlog, reuse_port=True)
        self.sock.setblocking(False)
        self.selector: selectors.BaseSelector | None = None
        self.conns: dict[int, _Conn] = {}

    def register(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        selector.register(self.sock.fileno(), selectors.EVENT_READ, self._accept)

    def _accept(self, key: Any) -> None:
        while len(self.conns) < MAX_CONNECTIONS:
            try:
                sock, _ = self.sock.accept()
            except OSError:  # nothing pending (EAGAIN) or a failed accept: wait for the next readiness
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[sock.fileno()] = conn
            assert self.selector is not None
            self.selector.register(sock.fileno(), selectors.EVENT_READ, self._readable)

    def _readable(self, key: Any) -> None:
        conn = self.conns.get(key.fd)
        if conn is None:
            return
        try:
            data = conn.sock.recv(MAX_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.inbox += data
        if b"\r\n\r\n" not in conn.inbox and b"\n\n" not in conn.inbox:
            if len(conn.inbox) > MAX_HEAD:
                self._reply(conn, _response("431 Request Header Fields Too Large", b"", "text/plain"))
            return
        self._reply(conn, self.answer(conn.inbox))

    def answer(self, head: bytes) -> bytes:
        line = head.split(b"\n", 1)[0].decode("latin-1").strip().split()
        if len(line) != 3 or not line[2].startswith("HTTP/1."):
            return _response("400 Bad Request", b"bad request\n", "text/plain; charset=utf-8")
        method, target = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET /metrics\n", "text/plain; charset=utf-8")
        if target not in ("/metrics", "/"):
            return _response("404 Not Found", b"GET /metrics\n", "text/plain; charset=utf-8")
        try:
            body, content_type = self.render(_accept(head))
        except Exception:
            logger.exception("Rendering the metrics failed")
            return _response("500 Internal Server Error", b"error\n", "text/plain; charset=utf-8")
        response = _response("200 OK", body, content_type, "vary: accept\r\n")
        return response[: len(response) - len(body)] if method == "HEAD" else response

    def _reply(self, conn: _Conn, data: bytes) -> None:
        conn.outbox = data
        assert self.selector is not None
        try:
            self.selector.modify(conn.sock.fileno(), selectors.EVENT_WRITE, self._writable)
        except (KeyError, ValueError):
            self._close(conn)
            return
        self._writable(None, conn)

    def _writable(self, key: Any, conn: _Conn | None = None) -> None:
        if conn is None:
            conn = self.conns.get(key.fd)
            if conn is None:
                return
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.outbox = conn.outbox[sent:]
        if not conn.outbox:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        if self.selector is not None:
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    def sweep(self, now: float) -> None:
        """Close connections past their deadline (called by the master's loop every pass)."""
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            self._close(conn)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.selector is not None:
            try:
                self.selector.unregister(self.sock.fileno())
            except (KeyError, ValueError):
                pass
        self.sock.close()
