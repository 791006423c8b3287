"""HTTP/1.1 response framing as writers, one per framing mode (h11's `_writers`), apart from the ASGI `send`
bookkeeping in `corral.worker.http1.cycle`.

`corral.worker.conn.response.response_head` decides the mode from the status, the headers and the request
(RFC 9112 §6.3): a declared or computed Content-Length (mode >= 0), `NO_BODY` (HEAD, 1xx, 204, 304), `CHUNKED`, or
`CLOSE_DELIMITED` (HTTP/1.0 without a length). The function that frames each body message for that mode is
`content_length_writer` (mode >= 0) or `WRITERS[mode]`; the cycle keeps it for the rest of the response. A
writer gets the cycle (for the Content-Length count and keep-alive), the transport's `write`, the head (b""
after the first message), the body and `more_body`.

Small bodies go out with the head in one `write` (one segment, one system call); bodies above `JOIN_LIMIT`
are written separately so they are not copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.worker.http1.connection import CHUNKED, CLOSE_DELIMITED, NO_BODY

__all__ = ["content_length_writer", "WRITERS", "JOIN_LIMIT", "Writer"]

#: Bodies up to this size are joined with the head (or the chunk framing) into one write.
JOIN_LIMIT = 16384

Writer = Callable[[Any, Callable[[bytes], None], bytes, bytes, bool], None]

_LAST_CHUNK = b"0\r\n\r\n"


def _content_length(cycle: Any, write: Callable[[bytes], None], head: bytes, body: bytes, more: bool) -> None:
    remaining = cycle.remaining - len(body)
    if remaining < 0:
        cycle.keep_alive = False
        if head:
            write(head)
        raise RuntimeError("Response content longer than Content-Length")
    cycle.remaining = remaining
    if head:
        if len(body) <= JOIN_LIMIT:
            write(head + body)
        else:
            write(head)
            write(body)
    elif body:
        write(body)
    if not more and remaining:
        cycle.keep_alive = False
        raise RuntimeError("Response content shorter than Content-Length")


def _chunked(cycle: Any, write: Callable[[bytes], None], head: bytes, body: bytes, more: bool) -> None:
    if body:
        if len(body) <= JOIN_LIMIT:
            write(b"%s%x\r\n%s\r\n%s" % (head, len(body), body, b"" if more else _LAST_CHUNK))
        else:
            write(b"%s%x\r\n" % (head, len(body)))
            write(body)
            write(b"\r\n" if more else b"\r\n" + _LAST_CHUNK)
    elif not more:
        write(head + _LAST_CHUNK)
    elif head:
        write(head)


def _no_body(cycle: Any, write: Callable[[bytes], None], head: bytes, body: bytes, more: bool) -> None:
    if head:
        write(head)  # HEAD, 1xx, 204, 304: whatever the application sends after the head is not framed


def _close_delimited(cycle: Any, write: Callable[[bytes], None], head: bytes, body: bytes, more: bool) -> None:
    if head and len(body) <= JOIN_LIMIT:
        write(head + body)
        return
    if head:
        write(head)
    if body:
        write(body)


content_length_writer: Writer = _content_length
WRITERS: dict[int, Writer] = {NO_BODY: _no_body, CHUNKED: _chunked, CLOSE_DELIMITED: _close_delimited}
