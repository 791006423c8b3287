"""One HTTP/2 stream: the application's `receive` and `send` for a request of an `H2Protocol` connection.

The stream is what the pool runs an application instance for (its scope_id), as `RequestCycle` is for an
HTTP/1.1 request; the connection (corral.worker.http2.protocol) owns the state machine (corral.worker.http2.machine) and
does the framing. `flow` is the machine's view of the stream: its states and windows.

Flow control, inbound: body bytes are handed back to the client's window (`acknowledge`) only
when `receive` gives them to the application, so a stream buffers at most its window (the
`--http2-initial-window-size`) whatever the client does. Outbound: `send` writes DATA as the client's
windows allow and waits for WINDOW_UPDATE (and for the transport to drain), at most `--http2-send-timeout`.

Request trailers are dropped (ASGI has no message for them). Response trailers follow ASGI's
`http.response.trailers` extension: `trailers: True` in `http.response.start`, then the trailers message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import ResponseState

if TYPE_CHECKING:
    from corral.worker.http2.protocol import H2Protocol
    from corral.worker.http2.state import StreamState

__all__ = ["H2Stream"]

error_logger = logging.getLogger("corral.error")

# Response states: RequestCycle's (the server reads them alike), and one of HTTP/2's own.
_IDLE, _STARTED, _HEAD_SENT, _COMPLETE = (
    ResponseState.IDLE,
    ResponseState.STARTED,
    ResponseState.HEAD_SENT,
    ResponseState.COMPLETE,
)
_TRAILERS = 4  # the body is complete, the application's trailers are still to come

_DISCONNECT = {"type": "http.disconnect"}


class H2Stream:
    __slots__ = (
        "protocol",
        "stream_id",
        "flow",
        "scope",
        "is_head",
        "body",
        "unacked",
        "body_complete",
        "delivered",
        "disconnected",
        "running",
        "waiter",
        "window",
        "state",
        "status",
        "headers",
        "trailers",
        "t0",
        "nbytes",
    )

    def __init__(
        self, protocol: H2Protocol, flow: StreamState, scope: dict[str, Any], is_head: bool, timed: bool
    ) -> None:
        self.protocol = protocol
        self.stream_id = flow.stream_id
        self.flow = flow  # corral.worker.http2.state.StreamState
        self.scope = scope
        self.is_head = is_head
        self.body: bytes | bytearray = b""
        self.unacked = 0  # flow-controlled bytes received and not yet handed to the application
        self.body_complete = False
        self.delivered = False
        self.disconnected = False
        self.running = False  # an application instance (or the 503/health answer) runs for it
        self.waiter: asyncio.Future[None] | None = None  # receive() waiting for body bytes
        self.window: asyncio.Future[None] | None = None  # send() waiting for the client's window
        self.state: int = _IDLE  # a ResponseState, or _TRAILERS
        self.status = 0
        self.headers: Any = ()
        self.trailers = False
        self.t0 = time.perf_counter() if timed else None
        self.nbytes = 0

    # ------------------------------------------------------------------ fed by the connection

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        body = self.body
        if not body:
            self.body = data
        else:
            if type(body) is bytes:
                self.body = body = bytearray(body)
            body += data
        self.unacked += flow_controlled
        if self.waiter is not None:
            self._wake()

    def on_end(self) -> None:
        self.body_complete = True
        if self.waiter is not None:
            self._wake()

    def disconnect(self) -> None:
        self.disconnected = True
        self._wake()
        self.window_opened()

    def window_opened(self) -> None:
        window = self.window
        if window is not None and not window.done():
            window.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def reading(self) -> bool:
        """The application waits in receive() for body bytes the client has not sent (the body timer)."""
        return self.waiter is not None and not self.body_complete and not self.disconnected

    # ------------------------------------------------------------------ ASGI receive

    async def receive(self) -> dict:
        while True:
            if self.disconnected or self.state == _COMPLETE:
                return _DISCONNECT.copy()
            if self.body or (self.body_complete and not self.delivered):
                break
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        body = self.body
        self.body = b""
        more_body = not self.body_complete
        if not more_body:
            self.delivered = True
        unacked = self.unacked
        if unacked:
            # Consumed: only now does the client get the window back (a slow application bounds the body).
            self.unacked = 0
            self.protocol.acknowledge(self.stream_id, unacked)
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
            self.trailers = bool(message.get("trailers", False))
            self.state = _STARTED
            return
        if state == _COMPLETE:
            raise RuntimeError(f"Unexpected ASGI message {mtype!r} sent, after response already completed")
        if state == _TRAILERS:
            if mtype != "http.response.trailers":
                raise RuntimeError(f"Expected ASGI message 'http.response.trailers', but got {mtype!r}")
            if not message.get("more_trailers", False):
                if not self.disconnected:
                    self.protocol.send_trailers(self, message.get("headers", ()))
                self._complete()
            elif not self.disconnected:
                raise RuntimeError("corral sends the trailers of a stream in one message (more_trailers=False)")
            return
        if mtype != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {mtype!r}")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.disconnected:
            if not more_body:
                self.state = _COMPLETE
            return
        protocol = self.protocol
        end = not more_body and not self.trailers
        if self.is_head:
            body = b""
        if state == _STARTED:
            self.state = _HEAD_SENT
            if not protocol.send_head(self, self.status, self.headers, end and not body):
                return  # the status or a header is invalid: the stream was reset (logged)
            if body:
                await protocol.send_body(self, body, end)
        elif body:
            await protocol.send_body(self, body, end)
        elif end:
            protocol.end_stream(self)
        if self.t0 is not None:
            self.nbytes += len(body)
        if not more_body:
            if self.trailers:
                self.state = _TRAILERS
            else:
                self._complete()

    def _complete(self) -> None:
        self.state = _COMPLETE
        if self.waiter is not None:
            self._wake()  # a receive() waiting for the disconnect returns now
        self.protocol.response_complete(self)

    # ------------------------------------------------------------------ the application finished

    def app_finished(self, task: asyncio.Future) -> None:
        """The application instance ended (the pool's task, or the 503/health answer's)."""
        state = self.state
        protocol = self.protocol
        if state != _COMPLETE:
            self.state = _COMPLETE
            if not self.disconnected:
                failed = task.cancelled() or task.exception() is not None  # exceptions are logged by the pool
                if state < _HEAD_SENT:
                    if not failed:
                        error_logger.error(
                            "ASGI callable returned without %s response", "starting" if state == _IDLE else "completing"
                        )
                    self.status = 500
                    self.headers = ()
                    self.nbytes = 0
                    protocol.send_error(self, 500)
                    protocol.response_complete(self)
                else:
                    if not failed:
                        error_logger.error("ASGI callable returned without completing response")
                    protocol.reset(self, 2)  # INTERNAL_ERROR: the body is incomplete
        protocol.stream_finished(self)
