"""What every request object of the HTTP/1.1 side is, whatever made it: an HTTP/1.1 request
(`http1.cycle.RequestCycle`), a native WSGI request (`wsgi.cycle.WsgiCycle`), a WebSocket before and after
its handshake (`websocket.protocol.WebSocketCycle`). (An HTTP/2 stream, `http2.stream.H2Stream`, is fed by its
own connection.) The HTTP/1.1 state machine feeds it body bytes and the end of the body; the protocol and the
server tell it the client is gone, ask whether the connection may be kept, and report the end of its
application instance; `state` is where its response stands (`conn.phases.ResponseState` for HTTP) and `scope`
what its application got.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Exchange"]


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
