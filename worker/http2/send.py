"""The sending half of an HTTP/2 connection (`H2Protocol`'s base): response heads, bodies as the client's
flow-control windows and the socket allow, trailers, resets - framed by the connection's state machine
(corral.worker.http2.machine) into one buffer, written once per loop iteration (or at once for large DATA).

A response head is an HPACK block encoded once per distinct header list (corral.worker.http2.fields). A body that
fits the windows and one frame - the common case - is one DATA frame, no loop; otherwise DATA is cut to
whatever window the client granted, one byte included (RFC 9113 §6.9: a sender never waits for more window
than the peer gave). Small frames still leave together, one write per loop iteration (`flush_soon`): the
heads and bodies of the responses finished in one iteration - many streams of a connection, often - leave
in one write.

Window abuse is bounded without refusing small frames: a body waits at most `send_timeout` for a shut window
or for the client to read (then RST_STREAM, or the connection dropped when it reads nothing at all); a client
that reopens a shut window a few bytes at a time gets its bytes, and each such WINDOW_UPDATE counts as a flood
frame (`H2Protocol.on_window`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import CLOSED, Phase
from corral.worker.http2.fields import fields_block, response_block
from corral.worker.http2.frames import ErrorCode
from corral.worker.http2.machine import H2Machine
from corral.worker.http2.stream import H2Stream

if TYPE_CHECKING:
    from corral.worker.http1.host import Host
    from corral.worker.http2.protocol import H2Limits

__all__ = ["H2Sender"]

logger = logging.getLogger("corral.error")

_WRITE_NOW = 16384  # DATA frames this large are written at once, smaller ones with the iteration's others
_INTERNAL_ERROR = ErrorCode.INTERNAL_ERROR.value
_FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR.value
_ERROR_BODIES = {500: b"Internal Server Error", 400: b"Bad Request"}
_ERROR_HEADERS = {
    status: [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    for status, body in _ERROR_BODIES.items()
}


class H2Sender:
    """Mixed into `H2Protocol`, whose slots these attributes are."""

    if not TYPE_CHECKING:  # mypy would take () for every slot and refuse the assignments below
        __slots__ = ()
    machine: H2Machine | None
    loop: Any
    flushing: bool
    transport: Any
    flow: Any
    phase: Phase
    limits: H2Limits
    client: tuple | None
    server: Host

    def close(self, code: int = ErrorCode.NO_ERROR, goaway: bool = True) -> None:
        raise NotImplementedError

    @property
    def peer(self) -> str:
        return self.client[0] if self.client else "unix socket"

    def flush(self) -> None:
        machine = self.machine
        if machine is not None and machine.out and self.phase != CLOSED:
            self.transport.write(machine.take())

    def flush_soon(self) -> None:
        """Write what was framed once this loop iteration is done. Large bodies are written at once instead
        (`send_body`), for backpressure."""
        if not self.flushing:
            self.flushing = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self.flushing = False
        self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        if self.phase == CLOSED:
            return
        machine = self.machine
        machine.acknowledge(stream_id, size)  # type: ignore[union-attr]  # set in connection_made
        if machine.out:  # type: ignore[union-attr]  # set in connection_made
            self.flush_soon()

    def send_head(self, stream: H2Stream, status: int, headers: Any, end: bool) -> bool:
        """Send the response head; False (and the stream reset, logged) when it is not valid HTTP."""
        try:
            block = response_block(status, headers, self.server.default_header_bytes)
        except ValueError as exc:
            logger.error(
                "ASGI application sent a response head HTTP/2 cannot carry for %s: %s", stream.scope["path"], exc
            )
            self.reset(stream, _INTERNAL_ERROR)
            return False
        flow = stream.flow
        if not flow.local_open or self.phase == CLOSED:
            stream.disconnect()
            return False
        self.machine.send_headers(flow, block, end)  # type: ignore[union-attr]  # set in connection_made
        self.flush_soon()
        return True

    async def send_body(self, stream: H2Stream, data: bytes, end: bool) -> None:
        machine = self.machine
        assert machine is not None
        flow = stream.flow
        total = len(data)
        if (
            total <= flow.send_window
            and total <= machine.send_window
            and total <= machine.max_frame_out
            and flow.local_open
            and not self.flow.write_paused
            and self.phase != CLOSED
        ):
            machine.send_data(flow, data, end)  # the common case: one frame, within every window
            if total >= _WRITE_NOW:
                self.flush()
            else:
                self.flush_soon()
            return
        writer = self.flow
        timeout = self.limits.send_timeout
        view = memoryview(data)
        sent = 0
        while sent < total:
            if writer.write_paused:
                try:
                    await asyncio.wait_for(writer.drain(), timeout)
                except asyncio.TimeoutError:
                    logger.warning(
                        "HTTP/2 client %s read nothing for %.0f s: dropping the connection", self.peer, timeout
                    )
                    self.close(goaway=False)
                    self.transport.abort()
            if stream.disconnected or self.phase == CLOSED:
                return
            if not flow.local_open:
                stream.disconnect()
                return
            window = min(flow.send_window, machine.send_window)
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
                    self.reset(stream, _FLOW_CONTROL_ERROR)
                    return
                finally:
                    stream.window = None
                continue
            left = total - sent
            size = min(window, left, machine.max_frame_out)
            machine.send_data(flow, view[sent : sent + size], end and size == left)
            sent += size
            if size >= _WRITE_NOW:
                self.flush()  # the transport's buffer, and so `write_paused`, follows the body
            else:
                self.flush_soon()

    def end_stream(self, stream: H2Stream) -> None:
        if not stream.flow.local_open:
            stream.disconnect()
            return
        self.machine.end_stream(stream.flow)  # type: ignore[union-attr]  # set in connection_made
        self.flush()

    def send_trailers(self, stream: H2Stream, trailers: Any) -> None:
        if not stream.flow.local_open:
            stream.disconnect()
            return
        try:
            block = fields_block(trailers)
        except ValueError as exc:
            logger.error("ASGI application sent trailers HTTP/2 cannot carry for %s: %s", stream.scope["path"], exc)
            self.reset(stream, _INTERNAL_ERROR)
            return
        self.machine.send_headers(stream.flow, block, True)  # type: ignore[union-attr]  # set in connection_made
        self.flush()

    def send_error(self, stream: H2Stream, status: int) -> None:
        flow = stream.flow
        if not flow.local_open or self.phase == CLOSED:
            return
        machine = self.machine
        assert machine is not None
        body = _ERROR_BODIES[status]
        machine.send_headers(
            flow, response_block(status, _ERROR_HEADERS[status], self.server.default_header_bytes), stream.is_head
        )
        if not stream.is_head:
            if len(body) <= min(flow.send_window, machine.send_window):
                machine.send_data(flow, body, True)
            else:  # a shut window: the head says what happened, the stream ends without the text
                machine.reset(flow, _INTERNAL_ERROR)
        self.flush()

    def reset(self, stream: H2Stream, code: int) -> None:
        stream.disconnect()
        if self.phase == CLOSED:
            return
        self.machine.reset(stream.flow, code)  # type: ignore[union-attr]  # set in connection_made
        self.flush()
