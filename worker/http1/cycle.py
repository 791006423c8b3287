"""One HTTP request/response exchange: the application's `receive` and `send`.

A `RequestCycle` is the request object `HTTP11Connection` feeds body bytes to, and the object whose bound
`receive` / `send` the application instance gets. It holds no closures: one slotted object per request.

The response head is not written at `http.response.start`: it waits for the first `http.response.body`,
so a small response goes out in a single `transport.write`, and a body given in one message is framed
with Content-Length instead of chunks.
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import BODY, ResponseState
from corral.worker.http1.connection import CONTINUE_RESPONSE, ERROR_RESPONSES, response_head
from corral.worker.http1.framing import WRITERS, content_length_writer

if TYPE_CHECKING:
    from corral.worker.http1.protocol import HttpProtocol

__all__ = ["RequestCycle", "BODY_HIGH_WATER"]

error_logger = logging.getLogger("corral.error")

#: Unconsumed request body above which the connection stops reading until the application receives.
BODY_HIGH_WATER = 65536

# Response states.
_IDLE, _STARTED, _HEAD_SENT, _COMPLETE = (
    ResponseState.IDLE,
    ResponseState.STARTED,
    ResponseState.HEAD_SENT,
    ResponseState.COMPLETE,
)

_TCP_CORK = getattr(_socket, "TCP_CORK", None)  # Linux


def cork(transport: Any) -> None:
    """Set TCP_CORK on the transport's socket: what is written next is held back until the socket closes,
    so that the last response of a closing connection and the FIN leave in one segment (Linux attaches the
    FIN to queued data). This saves a segment and its acknowledgement per connection: more kernel time
    than the three system calls it costs (measured on loopback: 12-20 us less server CPU per
    `Connection: close` request). The close follows at once (`response_complete`), so nothing waits.
    Best effort: nothing happens where there is no TCP_CORK or no TCP socket."""
    if _TCP_CORK is None:
        return
    try:
        fd = transport.get_extra_info("socket").fileno()
        sock = _socket.socket(-1, _socket.SOCK_STREAM, 0, fd)  # a temporary handle on the loop's socket
    except Exception:  # noqa: BLE001 - best effort: no socket, a closed one: no cork
        return
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _TCP_CORK, 1)
    except OSError:  # not TCP (a unix socket)
        pass
    finally:
        sock.detach()  # never close the loop's socket


class RequestCycle:
    __slots__ = (
        "protocol",
        "scope",
        "keep_alive",
        "expect_continue",
        "is_head",
        "http11",
        "body",
        "body_complete",
        "delivered",
        "disconnected",
        "waiter",
        "state",
        "status",
        "headers",
        "writer",
        "remaining",
        "t0",
        "nbytes",
    )

    def __init__(
        self,
        protocol: HttpProtocol,
        scope: dict,
        keep_alive: bool,
        expect_continue: bool,
        is_head: bool,
        http11: bool,
        timed: bool,
    ) -> None:
        self.protocol = protocol
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.is_head = is_head
        self.http11 = http11
        self.body: bytes | bytearray = b""
        self.body_complete = False
        self.delivered = False  # the last http.request (more_body False) was handed over
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.state = _IDLE
        # status, headers: set by http.response.start; writer, remaining: when the head is written.
        self.t0: float | None
        if timed:  # the access log's clock and byte count run only when there is an access log
            self.t0 = time.perf_counter()
            self.status = 0
            self.headers: Any = ()
            self.nbytes = 0
        else:
            self.t0 = None

    # ------------------------------------------------------------------ fed by the parser / protocol

    def on_body(self, chunk: bytes) -> None:
        body = self.body
        if not body:
            self.body = body = chunk
        else:
            # Appended in place (amortised O(1)): concatenating bytes copies what is held at every chunk,
            # quadratic for a body sent as many small chunks.
            if type(body) is bytes:
                self.body = body = bytearray(body)
            body += chunk
        if len(body) > BODY_HIGH_WATER and self.protocol.state.active is self:
            self.protocol.flow.pause_reading(BODY)
        if self.waiter is not None:
            self._wake()

    def on_body_complete(self) -> None:
        self.body_complete = True
        if self.waiter is not None:  # once per request: skip the call when nobody waits
            self._wake()

    def disconnect(self) -> None:
        self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def awaits_body(self) -> bool:
        """The application waits in `receive()` for body bytes that have not come (the minimum body rate's
        clock runs)."""
        return self.waiter is not None and not self.body_complete

    # ------------------------------------------------------------------ ASGI receive

    async def receive(self) -> dict:
        if self.expect_continue:
            # RFC 9110 §10.1.1: the client waits for 100 before sending the body; send it only now that
            # the application asks for the body (never when it answers without reading).
            self.expect_continue = False
            if self.state < _HEAD_SENT and not self.disconnected:
                self.protocol.transport.write(CONTINUE_RESPONSE)
        while True:
            if self.disconnected or self.state == _COMPLETE:
                return {"type": "http.disconnect"}
            body = self.body
            if body or (self.body_complete and not self.delivered):
                break
            # Nothing to hand over: wait for body bytes, or (body all delivered) for the disconnect or
            # the end of the response.
            if not self.body_complete:
                self.protocol.flow.resume_reading(BODY)
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        self.body = b""
        more_body = not self.body_complete
        if not more_body:
            self.delivered = True
        if self.protocol.flow.read_paused & BODY:
            # Consumed: read on (the rest of the body, or - once it is complete - the next request).
            self.protocol.flow.resume_reading(BODY)
        return {"type": "http.request", "body": body if type(body) is bytes else bytes(body), "more_body": more_body}

    # ------------------------------------------------------------------ ASGI send

    async def send(self, message: dict) -> None:
        state = self.state
        mtype = message["type"]
        if state == _IDLE:
            if mtype != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {mtype!r}")
            self.status = message["status"]
            self.headers = message.get("headers", ())
            self.state = _STARTED
            return
        if state == _COMPLETE:
            raise RuntimeError(f"Unexpected ASGI message {mtype!r} sent, after response already completed")
        if mtype != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {mtype!r}")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        protocol = self.protocol
        if self.disconnected:
            # The client is gone; let the application finish quietly (as uvicorn does).
            if not more_body:
                self.state = _COMPLETE
            return
        flow = protocol.flow
        if flow.write_paused:
            await flow.drain()
            if self.disconnected:
                if not more_body:
                    self.state = _COMPLETE
                return
        write = protocol.transport.write
        if state == _STARTED:
            server = protocol.server
            head, mode, self.keep_alive = response_head(
                self.status,
                self.headers,
                server.default_header_bytes,
                self.keep_alive and not server.stopping,
                self.http11,
                self.is_head,
                None if more_body else len(body),
            )
            if not self.keep_alive and not more_body and self.body_complete and protocol.state.client_close:
                # The last bytes of a connection the client is closing: they go out with the FIN.
                # (Only then: closing with unread bytes resets, and drops what the cork still holds.)
                cork(protocol.transport)
            self.state = _HEAD_SENT
            self.remaining = mode  # the Content-Length still to send (mode >= 0)
            writer = self.writer = content_length_writer if mode >= 0 else WRITERS[mode]
            writer(self, write, head, body, more_body)
        else:
            if not self.keep_alive and not more_body and self.body_complete and protocol.state.client_close:
                cork(protocol.transport)  # as above: the last body bytes and the FIN in one segment
            self.writer(self, write, b"", body, more_body)
        if self.t0 is not None:
            self.nbytes += len(body)
        if not more_body:
            self.state = _COMPLETE
            if self.waiter is not None:
                self._wake()  # a receive() waiting for the disconnect returns now
            protocol.response_complete(self)

    # ------------------------------------------------------------------ the application finished

    def app_finished(self, task: asyncio.Future) -> None:
        """The application instance ended (called from the pool's done-callback or the 503 task's)."""
        state = self.state
        if state == _COMPLETE:
            return
        self.state = _COMPLETE
        protocol = self.protocol
        if self.disconnected:
            # The client is gone (or the server closed the connection): returning without a response is
            # what a well-behaved application does after http.disconnect. Nothing to send or report.
            protocol.close()
            return
        failed = task.cancelled() or task.exception() is not None  # exceptions are logged by the pool
        if state < _HEAD_SENT:
            if not failed:
                error_logger.error(
                    "ASGI callable returned without %s response",
                    "starting" if state == _IDLE else "completing",
                )
            self.status = 500
            protocol.transport.write(ERROR_RESPONSES[500])
            if self.t0 is not None:
                self.nbytes = 0
                self.headers = ()
                protocol.log_access(self)
        elif not failed:
            # The head is out: the only way to tell the client the body is incomplete is to close.
            error_logger.error("ASGI callable returned without completing response")
        protocol.close()
