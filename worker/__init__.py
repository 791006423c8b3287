"""corral.worker: the server in each worker process, in rooms by what they serve.

    serve/      one worker serving: boot, the `WorkerServer` and its tick, the protocol class each
                connection gets (metrics, the health path, the PROXY protocol wrapped round HTTP/1.1)
    http1/      HTTP/1.1: the connection state apart from I/O (llhttp, limits, pipelining, chunked bodies),
                the ASGI request, response framing, the asyncio protocol
    http2/      HTTP/2: detecting it (ALPN, the h2c preface), the protocol over `h2`, streams, sending and
                flow control
    websocket/  WebSocket: the handshake, frames apart from I/O, the protocol after the 101, the ping sweep
    wsgi/       WSGI served natively: the request on the loop and on its thread, environ and body, the
                thread pool, the request layers
    edge/       what wraps every connection: proxy headers, the PROXY protocol, TLS details, the health
                answer, counters, the access log, deadlines, minimum data rates
    app/        the application: loading it, the instance pool (`StatelessServer`), lifespan, gunicorn's
                hook objects
    conn/       what every protocol shares: the phase vocabulary, flow control, HTTP/1.x response heads
                and error answers, the date header

Imports go one way: the worker may import corral.shared, never corral.master. Between the rooms: serve/
may import every room; the protocols (http1/, http2/, websocket/, wsgi/) import app/, edge/ and conn/,
which never import a protocol; http2/ and wsgi/ build on http1/ (HTTP/2 is told apart at an HTTP/1.1
connection's first bytes, WSGI requests ride the HTTP/1.1 protocol), and http1/ hands an upgrade to
websocket/; edge/ imports conn/. Each room's `__init__` says what it owns and may import;
tests/test_import_direction.py holds the same table. The `__init__` files stay empty of code: importing a
room costs nothing, and a worker that never sees an HTTP/2 client never imports `h2`.
"""
