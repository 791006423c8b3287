"""The apps every server is measured on (and the hello-world a newcomer serves first).

serve bench.apps:hello          # ASGI 3
serve bench.apps:hello_wsgi     # WSGI
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!"  # 13 bytes, text/plain: the same body the peers' figures were taken with
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
BODY_MESSAGE = {"type": "http.response.body", "body": BODY}


async def _lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """ASGI 3 hello-world: 200, 13 bytes of text/plain."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send(START)
    await send(BODY_MESSAGE)


def hello_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI hello-world: 200, 13 bytes of text/plain."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [BODY]


# ---------------------------------------------------------------------------- the `python -m bench` scenarios

JSON_BODY = (
    b'{"items":[' + b",".join(b'{"id":%d,"name":"item-%04d","ok":true}' % (i, i) for i in range(25)) + b"]}"
).ljust(1024, b" ")[:1024]  # 1 KiB exactly, built once: the server is measured, not json.dumps
JSON_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")],
}
JSON_MESSAGE = {"type": "http.response.body", "body": JSON_BODY}
STREAM_TOTAL = 10 * 1024 * 1024
STREAM_CHUNK = b"x" * (64 * 1024)


async def json_1k(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """A 1 KiB JSON response (application/json)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send(JSON_START)
    await send(JSON_MESSAGE)


async def echo(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """The request body, read whole, sent back (application/octet-stream)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """10 MiB streamed in 64 KiB body messages (Content-Length set, so no chunked framing)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(STREAM_TOTAL).encode()),
            ],
        }
    )
    for _ in range(STREAM_TOTAL // len(STREAM_CHUNK) - 1):
        await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": STREAM_CHUNK})


async def ws_echo(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """WebSocket echo (text and bytes); plain HTTP gets the hello-world."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] == "http":
        await send(START)
        await send(BODY_MESSAGE)
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message.get("text")})
        else:  # websocket.disconnect
            return


# Per-worker request counters for the process-model scenarios (fairness, crash, HUP): each serving process
# maps a 16-byte file named after its pid in $BENCH_COUNT_DIR (count, time of its first request) and bumps it
# per request, a memory write: the bench reads the files whatever the server (no server API needed).
_counter: Any = None


def _count() -> None:
    global _counter
    if _counter is None:
        import mmap
        import os
        import struct
        import time

        folder = os.environ.get("BENCH_COUNT_DIR")
        if not folder:
            _counter = False
            return
        path = os.path.join(folder, str(os.getpid()))
        with open(path, "wb") as f:
            f.write(struct.pack("<Qd", 0, time.time()))
        with open(path, "r+b") as f:
            _counter = mmap.mmap(f.fileno(), 16)
    if _counter:
        n = int.from_bytes(_counter[0:8], "little") + 1
        _counter[0:8] = n.to_bytes(8, "little")


async def counted(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """The hello-world, counting requests per serving process (see `_count`)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    _count()
    await send(START)
    await send(BODY_MESSAGE)
