"""HTTP/1.1: the protocol every connection starts with.

It owns the connection state apart from I/O (`connection.HTTP11Connection`: llhttp, the limits and the
request-smuggling guards, keep-alive, the pipelining queue), its slow paths (`reads`), chunked request
bodies (`chunked`), what a request object is to it (`exchange`), the ASGI request (`cycle.RequestCycle`:
`receive` and `send`), response framing (`framing`), and the asyncio protocol (`protocol.HttpProtocol`).

May import: `corral.worker.websocket` (an `Upgrade: websocket` request becomes a WebSocket),
`corral.worker.edge`, `corral.worker.app`, `corral.worker.conn`, `corral.shared`. Not http2/ or wsgi/: they
build on this room.
"""
