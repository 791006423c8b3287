"""The WebSocket opening handshake on the HTTP/1.1 side: `websocket_request()` turns an upgrade request into a
`WebSocketCycle` (corral.worker.websocket.protocol) that the HTTP machinery queues, parks and starts like a request,
or refuses it through the HTTP side's error path (400, 426; 404 for a WSGI application).
"""

from __future__ import annotations

import sys
from typing import Any

from corral.worker.conn.response import ProtocolError, status_line
from corral.worker.websocket.connection import HandshakeFailure, handshake, is_websocket_upgrade
from corral.worker.websocket.protocol import HANDSHAKE_PAUSE, WebSocketCycle

__all__ = ["websocket_request"]


class _HandshakeError(ProtocolError):
    """A refused handshake, answered through the HTTP side's error path (`protocol_error`)."""

    def __init__(self, status: int, detail: str, response: bytes) -> None:
        super().__init__(status, detail)
        self._response = response

    @property
    def response(self) -> bytes:
        return self._response


def _refusal(status: int, detail: str, extra_headers: bytes = b"") -> bytes:
    body = detail.encode("utf-8", "replace") + b"\n"
    return b"%scontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s" % (
        status_line(status),
        len(body),
        extra_headers,
        body,
    )


def _is_wsgi(app: Any) -> bool:
    wsgi = sys.modules.get("corral.shared.wsgi")  # loaded only when a WSGI application is served
    return wsgi is not None and isinstance(app, wsgi.WsgiToAsgi)


def websocket_request(
    protocol: Any, scope: dict, method: bytes, http_version: str, headers: list
) -> WebSocketCycle | None:
    """The WebSocket for an upgrade request, or None when it is not a WebSocket upgrade (h2c, CONNECT:
    served as plain HTTP, as before). Called by `HttpProtocol.on_request` with the http scope it built
    (proxy headers applied); raises the HTTP side's ProtocolError for a refused handshake."""
    if not is_websocket_upgrade(headers):
        return None
    server = protocol.server
    state = protocol.state
    if getattr(server, "wsgi", None) is not None or _is_wsgi(server.application):
        detail = "WebSocket is not available: this is a WSGI application"
        state.error = error = _HandshakeError(404, detail, _refusal(404, detail))
        raise error
    settings = server.settings
    try:
        accept, subprotocols, extension_header, extensions = handshake(
            method, http_version, headers, settings.ws_per_message_deflate
        )
    except HandshakeFailure as failure:
        state.error = error = _HandshakeError(
            failure.status, failure.detail, _refusal(failure.status, failure.detail, failure.headers)
        )
        raise error from None
    scope["type"] = "websocket"
    del scope["method"]
    scope["scheme"] = "wss" if scope["scheme"] in ("https", "wss") else "ws"
    scope["subprotocols"] = subprotocols
    scope["extensions"]["websocket.http.response"] = {}  # with the connection's own (TLS, PROXY protocol)
    # Nothing after the handshake is read until the application has answered it.
    protocol.flow.pause_reading(HANDSHAKE_PAUSE)
    return WebSocketCycle(protocol, scope, accept, extension_header, extensions)
