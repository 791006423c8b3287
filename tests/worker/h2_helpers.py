"""A raw HTTP/2 client for the worker tests: the `h2` library on a plain blocking socket, so a test can send
anything (floods, broken header blocks) and read exactly what the server answers. Every wait is bounded."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

WAIT = 10.0


@dataclass
class Reply:
    status: int = 0
    headers: list = field(default_factory=list)
    body: bytes = b""
    trailers: list = field(default_factory=list)
    ended: bool = False
    reset: int | None = None  # the error code of a RST_STREAM from the server


class H2Client:
    def __init__(
        self,
        port: int,
        settings: dict | None = None,
        host: str = "127.0.0.1",
        handshake: bool = True,
        prefix: bytes = b"",
        rcvbuf: int = 0,
        ack: bool = True,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # a small receive window: what the server writes soon stays in its own buffers
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect((host, port))
        if prefix:  # e.g. a PROXY protocol header
            self.sock.sendall(prefix)
        self.ack = ack  # give DATA's window back as it comes (False: the test opens the windows itself)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.replies: dict[int, Reply] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.server_settings = False
        self.flush()
        if handshake:  # the server's SETTINGS (its windows, its stream bound) before anything else
            self.until(lambda: self.server_settings)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        body: bytes | None = None,
        headers: list | None = None,
        end: bool = True,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        block = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"test"),
        ] + (headers or [])
        self.conn.send_headers(stream_id, block, end_stream=end and not body)
        self.replies[stream_id] = Reply()
        if body:
            self.send_body(stream_id, body, end)
        self.flush()
        return stream_id

    def send_body(self, stream_id: int, body: bytes, end: bool = True) -> None:
        """Send `body` as the server's windows allow (reading its WINDOW_UPDATEs meanwhile)."""
        while body:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.read()
                continue
            chunk, body = body[:window], body[window:]
            self.conn.send_data(stream_id, chunk, end_stream=end and not body)
            self.flush()

    def read(self) -> list:
        """One read from the socket, its events handled; [] and `closed` at EOF."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            reply = self.replies.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and reply is not None:
                headers = dict(event.headers)
                reply.status = int(headers[b":status"])
                reply.headers = event.headers
            elif isinstance(event, h2.events.DataReceived) and reply is not None:
                reply.body += event.data
                if self.ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived) and reply is not None:
                reply.trailers = event.headers
            elif isinstance(event, h2.events.StreamEnded) and reply is not None:
                reply.ended = True
            elif isinstance(event, h2.events.StreamReset) and reply is not None:
                reply.reset = event.error_code
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.server_settings = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                if event.error_code == 0:
                    # A graceful GOAWAY: the streams up to last_stream_id are still answered (RFC 9113 §6.8),
                    # but h2's client state machine closes at any GOAWAY: reopen it to read them.
                    self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        try:
            self.flush()
        except OSError:
            pass
        return events

    def until(self, condition: Any, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.closed:
                raise AssertionError("the server closed the connection")
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting")
            self.read()

    def response(self, stream_id: int) -> Reply:
        reply = self.replies[stream_id]
        self.until(lambda: reply.ended or reply.reset is not None)
        return reply

    def get(self, path: str = "/", **kwargs: Any) -> Reply:
        return self.response(self.request(path, **kwargs))

    def until_closed(self, timeout: float = WAIT) -> None:
        """Read (answering nothing) until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            if time.monotonic() > deadline:
                raise AssertionError("the server did not close the connection")
            try:
                self.read()
            except h2.exceptions.ProtocolError:
                pass  # frames after the server's GOAWAY: the client state machine complains, we read on

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
