"""The apps every server is measured on (and the hello-world a newcomer serves first).

    serve bench.apps:hello          # ASGI 3
    serve bench.apps:hello_wsgi     # WSGI
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

BODY = b"Hello, world!"  # 13 bytes, text/plain: the same body the peers' figures were taken with
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
BODY_MESSAGE = {"type": "http.response.body", "body": BODY}


async def hello(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """ASGI 3 hello-world: 200, 13 bytes of text/plain."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(START)
    await send(BODY_MESSAGE)


def hello_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI hello-world: 200, 13 bytes of text/plain."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [BODY]
