"""The sending half of an HTTP/2 connection (`H2Protocol`'s base): response heads, bodies as the client's
flow-control windows and the socket allow, trailers, resets - each followed by one write of what `h2` framed.

A body goes out as soon as any window and any bytes are there: DATA is cut to whatever window the client
granted, one byte included (RFC 9113 §6.9: a sender never waits for more window than the peer gave). Small
frames still leave together, one write per loop iteration (`flush_soon`).

Window abuse is bounded without refusing small frames: a body waits at most `send_timeout` for a shut window
or for the client to read (then RST_STREAM, or the connection dropped when it reads nothing at all); a client
that reopens a shut window a few bytes at a time gets its bytes, and each such WINDOW_UPDATE counts as a flood
frame (`H2Protocol.on_window_updated`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import h2.connection
import h2.exceptions
from h2.errors import ErrorCodes

from corral.worker.conn.phases import CLOSED, Phase
from corral.worker.http2.stream import H2Stream

if TYPE_CHECKING:
    from corral.worker.http1.host import Host
    from corral.worker.http2.protocol import H2Limits

__all__ = ["H2Sender", "default_headers"]

logger = logging.getLogger("corral.error")

# Headers that are connection-specific in HTTP/1.1 and forbidden in HTTP/2 (RFC 9113 §8.2.2).
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_STATUS = {status: str(status).encode("ascii") for status in range(100, 600)}
_WRITE_NOW = 16384  # DATA frames this large are written at once, smaller ones with the iteration's others


class H2Sender:
    """Mixed into `H2Protocol`, whose slots these attributes are."""

    if not TYPE_CHECKING:  # mypy would take () for every slot and refuse the assignments below
        __slots__ = ()
    conn: h2.connection.H2Connection | None
    loop: Any
    flushing: bool
    transport: Any
    flow: Any
    phase: Phase
    limits: H2Limits
    client: tuple | None
    server: Host

    def close(self, code: int = ErrorCodes.NO_ERROR, goaway: bool = True) -> None:
        raise NotImplementedError

    @property
    def peer(self) -> str:
        return self.client[0] if self.client else "unix socket"

    def flush(self) -> None:
        conn = self.conn
        if conn is not None:
            data = conn.data_to_send()
            if data and self.phase != CLOSED:
                self.transport.write(data)

    def flush_soon(self) -> None:
        """Write what h2 framed once this loop iteration is done: the heads and bodies of the responses
        finished in one iteration (many streams of a connection, often) leave in one write - a system call
        per response less. Large bodies are written at once instead (`send_body`), for backpressure."""
        if not self.flushing:
            self.flushing = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self.flushing = False
        self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        if self.phase == CLOSED:
            return
        self.conn.acknowledge_received_data(size, stream_id)  # type: ignore[union-attr]  # set in connection_made
        self.flush_soon()

    def send_head(self, stream: H2Stream, status: int, headers: Any, end: bool) -> bool:
        """Send the response head; False (and the stream reset, logged) when it is not valid HTTP."""
        try:
            block = [(b":status", _STATUS[status])]
        except (KeyError, TypeError):
            logger.error("ASGI application sent an invalid status %r", status)
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return False
        for name, value in headers:
            name = name.lower()
            if name not in _HOP:
                block.append((name, value))
        block.extend(default_headers(self.server.default_header_bytes))
        try:
            self.conn.send_headers(stream.stream_id, block, end_stream=end)  # type: ignore[union-attr]  # set in connection_made
        except (h2.exceptions.ProtocolError, ValueError, TypeError) as exc:
            if not stream.disconnected:
                logger.error("Could not send the response head of %s: %s", stream.scope["path"], exc)
                self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return False
        self.flush_soon()
        return True

    async def send_body(self, stream: H2Stream, data: bytes, end: bool) -> None:
        conn = self.conn
        assert conn is not None
        flow = self.flow
        timeout = self.limits.send_timeout
        stream_id = stream.stream_id
        view = memoryview(data)
        sent, total = 0, len(data)
        while sent < total:
            if flow.write_paused:
                try:
                    await asyncio.wait_for(flow.drain(), timeout)
                except asyncio.TimeoutError:
                    logger.warning(
                        "HTTP/2 client %s read nothing for %.0f s: dropping the connection", self.peer, timeout
                    )
                    self.close(goaway=False)
                    self.transport.abort()
            if stream.disconnected or self.phase == CLOSED:
                return
            try:
                window = conn.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                stream.disconnect()
                return
            if window <= 0:
                # The window is shut (or negative, after a smaller SETTINGS_INITIAL_WINDOW_SIZE): wait, bounded,
                # for the client to open it - any amount will do.
                stream.window = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.wait_for(stream.window, timeout)
                except asyncio.TimeoutError:
                    logger.warning(
                        "HTTP/2 client %s kept a stream's window shut for %.0f s: resetting it", self.peer, timeout
                    )
                    self.reset(stream, ErrorCodes.FLOW_CONTROL_ERROR)
                    return
                finally:
                    stream.window = None
                continue
            left = total - sent
            size = min(window, left, conn.max_outbound_frame_size)
            try:
                conn.send_data(stream_id, view[sent : sent + size], end_stream=end and size == left)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                stream.disconnect()
                return
            sent += size
            if size >= _WRITE_NOW:
                self.flush()  # the transport's buffer, and so `write_paused`, follows the body
            else:
                self.flush_soon()

    def end_stream(self, stream: H2Stream) -> None:
        try:
            self.conn.end_stream(stream.stream_id)  # type: ignore[union-attr]  # set in connection_made
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.disconnect()
            return
        self.flush()

    def send_trailers(self, stream: H2Stream, trailers: Any) -> None:
        block = [(name.lower(), value) for name, value in trailers]
        try:
            self.conn.send_headers(stream.stream_id, block, end_stream=True)  # type: ignore[union-attr]  # set in connection_made
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.disconnect()
            return
        self.flush()

    def send_error(self, stream: H2Stream, status: int) -> None:
        body = b"Internal Server Error" if status == 500 else b"Bad Request"
        try:
            self.conn.send_headers(  # type: ignore[union-attr]  # set in connection_made
                stream.stream_id,
                [
                    (b":status", _STATUS[status]),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                ],
                end_stream=stream.is_head,
            )
            if not stream.is_head:
                self.conn.send_data(stream.stream_id, body, end_stream=True)  # type: ignore[union-attr]  # set in connection_made
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, h2.exceptions.FlowControlError):
            pass
        self.flush()

    def reset(self, stream: H2Stream, code: int) -> None:
        stream.disconnect()
        if self.phase == CLOSED:
            return
        try:
            self.conn.reset_stream(stream.stream_id, code)  # type: ignore[union-attr]  # set in connection_made
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()


_defaults: list[Any] = [None, []]  # the server's default header bytes -> their HTTP/2 header list


def default_headers(block: bytes) -> list:
    """`server` / `date` (HTTP/1.1 lines, refreshed by the server's tick) as header pairs, parsed once per change."""
    if block is not _defaults[0]:
        pairs = []
        for line in block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                pairs.append((name.strip().lower(), value.strip()))
        _defaults[0], _defaults[1] = block, pairs
    return _defaults[1]
