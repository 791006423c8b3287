"""Sequential clients for instruction counts (bench/guard.py): one unit of work at a time, each answered in
full before the next is sent, so the server sees the same reads and writes in the same order on every run.

A unit is one request (HTTP/1.1), one batch of `streams` concurrent streams written in one go (HTTP/2: the
unit counts `streams` requests), or one WebSocket echo. Every client checks what comes back (status 200, the
body's length, the echo's size): a server that answers with an error must not count as a cheap one.

    client = CLIENTS["h1"](port, tls=False)     # connects (and handshakes) here
    client.run(100)                             # 100 units
    client.close()
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Protocol

Before = Callable[[], None] | None  # called before each unit (bench/guard.py: wait until the worker is quiet)

HOST = "127.0.0.1"
TIMEOUT = 60.0  # a server under callgrind answers ~50x slower than natively
WS_PAYLOAD = b"0123456789abcdef"  # 16 bytes, as the cost bench's WebSocket client sends


class Client(Protocol):
    requests_per_unit: int

    def run(self, units: int, before: Before = None) -> None: ...

    def close(self) -> None: ...


def _connect(port: int, tls: bool, alpn: list[str] | None = None) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not tls:
        return sock
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bench's own self-signed certificate
    if alpn:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(sock)


class _Reader:
    """Buffered reads of HTTP/1.1 responses (Content-Length bodies) from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self, until_eof: bool = False) -> bytes:
        """One response's body; raises when the status is not 200."""
        while b"\r\n\r\n" not in self.buf:
            if not self.fill():
                raise ConnectionError(f"closed before a response head: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if head[9:12] != b"200":
            raise RuntimeError(f"expected 200, got {head[:200]!r}")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"no content-length in {head[:300]!r}")
        while len(self.buf) < length:
            if not self.fill():
                raise ConnectionError("closed inside a body")
        body, self.buf = self.buf[:length], self.buf[length:]
        if until_eof:
            while self.fill():
                pass
        return body


class H1:
    """HTTP/1.1 keep-alive: GET / on one connection (the request wrk sends)."""

    requests_per_unit = 1

    def __init__(self, port: int, tls: bool = False) -> None:
        self.request = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        self.sock = _connect(port, tls)
        self.reader = _Reader(self.sock)

    def run(self, units: int, before: Before = None) -> None:
        for _ in range(units):
            if before:
                before()
            self.sock.sendall(self.request)
            self.reader.response()

    def close(self) -> None:
        self.sock.close()


class H1Close:
    """HTTP/1.1 with `Connection: close`: a new connection per request, read until the server closes it."""

    requests_per_unit = 1

    def __init__(self, port: int, tls: bool = False) -> None:
        self.port, self.tls = port, tls
        self.request = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()

    def run(self, units: int, before: Before = None) -> None:
        for _ in range(units):
            if before:
                before()
            with _connect(self.port, self.tls) as sock:
                sock.sendall(self.request)
                _Reader(sock).response(until_eof=True)

    def close(self) -> None:
        pass


class H2:
    """HTTP/2 (h2c prior knowledge, or ALPN h2 over TLS): `streams` GETs written in one go, then every
    response read to its end; flow-control credit is returned with the next batch's write."""

    def __init__(self, port: int, tls: bool = False, streams: int = 16) -> None:
        import h2.config
        import h2.connection

        self.requests_per_unit = streams
        self.sock = _connect(port, tls, alpn=["h2"])
        if tls and self.sock.selected_alpn_protocol() != "h2":  # type: ignore[attr-defined]  # an SSLSocket
            raise RuntimeError(f"the server chose {self.sock.selected_alpn_protocol()!r} over h2")  # type: ignore[attr-defined]  # an SSLSocket here
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.headers = [
            (b":method", b"GET"),
            (b":path", b"/"),
            (b":scheme", b"https" if tls else b"http"),
            (b":authority", f"{HOST}:{port}".encode()),
        ]
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self._settle_settings()

    def _events(self) -> list:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the HTTP/2 connection")
        events = self.conn.receive_data(data)
        pending = self.conn.data_to_send()  # SETTINGS acks, PING answers
        if pending:
            self.sock.sendall(pending)
        return events

    def _settle_settings(self) -> None:
        import h2.events

        acked = remote = False
        while not (acked and remote):
            for event in self._events():
                acked |= isinstance(event, h2.events.SettingsAcknowledged)
                remote |= isinstance(event, h2.events.RemoteSettingsChanged)

    def run(self, units: int, before: Before = None) -> None:
        import h2.events

        for _ in range(units):
            if before:
                before()
            open_ = {}
            for _ in range(self.requests_per_unit):
                stream = self.conn.get_next_available_stream_id()
                self.conn.send_headers(stream, self.headers, end_stream=True)
                open_[stream] = [0, 0]  # status, body bytes
            self.sock.sendall(self.conn.data_to_send())
            while open_:
                for event in self._events():
                    if isinstance(event, h2.events.ResponseReceived):
                        open_[event.stream_id][0] = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        open_[event.stream_id][1] += len(event.data)
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        status, size = open_.pop(event.stream_id)
                        if status != 200 or not size:
                            raise RuntimeError(f"stream {event.stream_id}: status {status}, {size} body bytes")
                    elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise RuntimeError(f"HTTP/2: {event}")
            # WINDOW_UPDATEs go out with the next batch (data_to_send above): one write per unit.

    def close(self) -> None:
        self.sock.close()


class WebSocket:
    """WebSocket echo: a masked 16-byte binary message, then its echo (18 bytes) read whole, on /ws."""

    requests_per_unit = 1

    def __init__(self, port: int, tls: bool = False) -> None:
        self.sock = _connect(port, tls)
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the WebSocket handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"no 101 to the WebSocket handshake: {head[:200]!r}")
        if head.index(b"\r\n\r\n") + 4 != len(head):
            raise RuntimeError("the server sent a frame before any message")
        key = b"\x12\x34\x56\x78"
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(WS_PAYLOAD))
        self.frame = bytes((0x82, 0x80 | len(WS_PAYLOAD))) + key + masked
        self.echo = bytes((0x82, len(WS_PAYLOAD))) + WS_PAYLOAD

    def run(self, units: int, before: Before = None) -> None:
        for _ in range(units):
            if before:
                before()
            self.sock.sendall(self.frame)
            got = b""
            while len(got) < len(self.echo):
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the server closed the WebSocket")
                got += chunk
            if got != self.echo:
                raise RuntimeError(f"bad echo {got!r}")

    def close(self) -> None:
        self.sock.close()


CLIENTS = {"h1": H1, "h1-close": H1Close, "h2": H2, "ws": WebSocket}
