"""What every request object of the HTTP/1.1 side is, whatever made it: an HTTP/1.1 request
(`http1.cycle.RequestCycle`), a native WSGI request (`wsgi.cycle.WsgiCycle`), a WebSocket before and after
its handshake (`websocket.protocol.WebSocketCycle`). (An HTTP/2 stream, `http2.stream.H2Stream`, is fed by its
own connection.) The HTTP/1.1 state machine feeds it body bytes and the end of the body; the protocol and the
server tell it the client is gone, ask whether the connection may be kept, and report the end of its
application instance; `state` is where its response stands (`conn.phases.ResponseState` for HTTP) and `scope`
what its application got.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

__all__ = ["Exchange", "RequestHandler"]


class Exchange(Protocol):
    scope: dict[str, Any]
    state: int
    keep_alive: bool

    def on_body(self, chunk: bytes) -> None:
        """Request body bytes (already de-chunked), in order."""

    def on_body_complete(self) -> None:
        """The request body is complete (trailers, if any, were dropped)."""

    def awaits_body(self) -> bool:
        """Its application waits for body bytes that have not come (the minimum body rate's clock runs)."""

    def disconnect(self) -> None:
        """The client is gone, or the connection is being closed: wake whoever waits for the client."""

    def app_finished(self, task: Any) -> None:
        """Its application instance ended (the pool's done-callback): answer or close for it if needed."""


_E = TypeVar("_E", bound=Exchange)


class RequestHandler(Protocol[_E]):
    """What `HTTP11Connection` needs from its owner (the asyncio protocol), for the request objects it makes."""

    def on_request(
        self,
        method: bytes,
        http_version: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        expect_continue: bool,
        has_body: bool,
        forwarded: bool,
    ) -> _E:
        """Make the request object for a complete request head (it gets on_body / on_body_complete).
        `forwarded`: the head has a proxy header (Forwarded, X-Forwarded-For/-Proto/-Host)."""

    def start_request(self, request: _E) -> None:
        """Start the application for `request`: it is now the active one (called while a read is parsed:
        the handler may wait until `feed` has returned)."""
