"""WebSocket (RFC 6455): from the upgrade request to the close.

It owns the opening handshake on the HTTP/1.1 side (`handshake.websocket_request`), the protocol state
apart from I/O (`connection`: handshake checks, frames in and events out, over `websockets`' sans-I/O
protocol), the ASGI websocket cycle and the asyncio protocol after the 101 (`protocol`), and the one timer
that sweeps every open socket's pings and deadlines (`hub`).

May import: `corral.worker.edge` (the session's access-log line), `corral.worker.app`,
`corral.worker.conn`, `corral.shared`. Not http1/: the HTTP/1.1 protocol hands an upgrade here, never the
other way.
"""
