"""The response side of HTTP/1.1, apart from I/O: status lines and the server's own error responses encoded
once (with `ProtocolError`, the error answered by one), and `response_head()`, which validates an
application's headers, decides the response's framing (RFC 9112 §6.3 / §7.1) and the response's side of
keep-alive, and encodes the head. The framing modes it returns are written by `corral.worker.http1.framing`'s
writers. HTTP/1.1, the WebSocket handshake and native WSGI write these bytes.
"""

from __future__ import annotations

import http
from typing import Any

from corral.shared import native

__all__ = [
    "STATUS_LINES",
    "status_line",
    "ERROR_RESPONSES",
    "ProtocolError",
    "CONTINUE_RESPONSE",
    "NO_BODY",
    "CHUNKED",
    "CLOSE_DELIMITED",
    "encode_headers",
    "response_head",
    "encode_response_head",
]

# ---------------------------------------------------------------------------- pre-encoded bytes

#: "HTTP/1.1 200 OK\r\n" and friends, encoded once. HTTP/1.0 clients get HTTP/1.1 status lines too:
#: RFC 9110 §6.2 - a server sends its own highest version it is conformant to.
STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii")) for status in http.HTTPStatus
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
            raise RuntimeError(f"invalid HTTP status code {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def _error_response(status: int) -> bytes:
    phrase = http.HTTPStatus(status).phrase.encode("ascii")
    return STATUS_LINES[
        status
    ] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        len(phrase),
        phrase,
    )


#: Small complete responses for the errors the server answers itself; each closes the connection.
ERROR_RESPONSES: dict[int, bytes] = {
    status: _error_response(status) for status in (400, 408, 413, 414, 431, 500, 501, 503, 505)
}


class ProtocolError(Exception):
    """The client broke HTTP/1.1 or a limit: answer `status` (a pre-built response) and close.

    Raised by the HTTP/1.1 state machine and by the WebSocket handshake (a refusal with its own response);
    the HTTP/1.1 protocol answers it (`HttpProtocol.protocol_error`)."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"{status} {detail}".strip())
        self.status = status
        self.detail = detail

    @property
    def response(self) -> bytes:
        return ERROR_RESPONSES[self.status]


CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: Response framing modes (`response_head` returns one, or the declared Content-Length when >= 0).
NO_BODY = -1
CHUNKED = -2
CLOSE_DELIMITED = -3


_RESPONSE_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))


def encode_headers(headers: Any) -> tuple[bytes, int | None, bytes | None, bool]:
    """Validate and encode an application's response headers.

    Returns (header block, declared Content-Length or None, lower-cased Transfer-Encoding or None,
    whether the application asked for `connection: close`). Raises RuntimeError for headers that would
    corrupt the framing.
    """
    content_length: int | None = None
    te: bytes | None = None
    app_close = False
    parts: list[bytes] = []
    append = parts.append
    try:
        for name, value in headers:
            lname = name.lower()
            if lname in _RESPONSE_FRAMING:
                if lname == b"content-length":
                    if content_length is not None or not value.strip().isdigit():
                        raise RuntimeError(f"invalid or repeated content-length header {value!r}")
                    content_length = int(value)
                elif lname == b"connection":
                    app_close = app_close or b"close" in value.lower()  # repeated fields form one list
                else:
                    te = value.lower()
            append(b"%s: %s\r\n" % (name, value))
    except (TypeError, ValueError, AttributeError):
        raise RuntimeError(f"response headers must be an iterable of (bytes, bytes) pairs, got {headers!r}") from None
    block = b"".join(parts)
    # Header injection: a CR or LF inside a name or value would start a new header or the body.
    count = len(parts)
    if block.count(b"\n") != count or block.count(b"\r") != count:
        raise RuntimeError("response header names and values must not contain CR or LF")
    return block, content_length, te, app_close


# Applications mostly send the same few header lists: their validated encoding is kept, keyed by the
# headers as a tuple (bounded; cleared when full, so varying headers such as cookies only cost a miss).
_ENCODED: dict[tuple[Any, ...], tuple[bytes, int | None, bytes | None, bool]] = {}
_ENCODED_MAX = 512
_ENCODED_BLOCK_MAX = 1024


def response_head(
    status: int,
    headers: Any,
    default_headers: bytes,
    keep_alive: bool,
    http11: bool,
    head_request: bool,
    body_length: int | None,
) -> tuple[bytes, int, bool]:
    """Encode a response head and decide its framing.

    `body_length` is the size of the whole body when the application gave it in one message (the head is
    written with the first body message, so a one-message body gets a Content-Length instead of chunks).
    Returns (head bytes, mode, keep_alive) where mode is the declared Content-Length (>= 0), NO_BODY,
    CHUNKED or CLOSE_DELIMITED. Raises RuntimeError for headers that would corrupt the framing.
    """
    line = STATUS_LINES.get(status) or status_line(status)
    try:
        key = tuple(headers)
        encoded = _ENCODED.get(key)
    except TypeError:  # not iterable, or unhashable items (lists): the slow path says what is wrong
        encoded = encode_headers(headers)
    else:
        if encoded is None:
            encoded = encode_headers(key)
            if len(encoded[0]) <= _ENCODED_BLOCK_MAX:  # big blocks (cookies, CSPs) are rarely repeated
                if len(_ENCODED) >= _ENCODED_MAX:
                    _ENCODED.clear()
                _ENCODED[key] = encoded
    block, content_length, te, app_close = encoded
    if app_close:
        keep_alive = False
    extra = b""
    # RFC 9112 §6.3 item 1: 1xx, 204 and 304 responses, and responses to HEAD, end at the head.
    if status < 200 or status == 204 or status == 304:
        mode = NO_BODY
    elif head_request:
        mode = NO_BODY
        if content_length is None and te is None and body_length is not None:
            extra = b"content-length: %d\r\n" % body_length  # what the GET would have declared
    elif content_length is not None:
        mode = content_length
    elif te is not None:
        mode = CHUNKED if te.rstrip().endswith(b"chunked") else CLOSE_DELIMITED
    elif body_length is not None:
        mode = body_length
        extra = b"content-length: %d\r\n" % body_length
    elif http11:
        mode = CHUNKED  # RFC 9112 §7.1
        extra = b"transfer-encoding: chunked\r\n"
    else:
        mode = CLOSE_DELIMITED  # RFC 9112 §6.3 item 8: an HTTP/1.0 client reads until the close
    if mode == CLOSE_DELIMITED:
        keep_alive = False
    if not keep_alive:
        if not app_close:
            extra += b"connection: close\r\n"
    elif not http11:
        extra += b"connection: keep-alive\r\n"  # RFC 9112 §9.3: HTTP/1.0 persistence is opt-in
    return b"%s%s%s%s\r\n" % (line, default_headers, block, extra), mode, keep_alive


# The compiled head (worker/conn/_response.c), where it was built and is not turned off: `response_head` is then
# the C function, which encodes the responses most applications send and hands any other to the function above
# (kept as `encode_response_head`, the reference the C code is tested against).
encode_response_head = response_head
if native.enabled():
    try:
        from corral.worker.conn._response import head as _compiled_head
        from corral.worker.conn._response import setup as _setup_compiled_head
    except ImportError:  # not built (no compiler at install): the Python function
        pass
    else:
        _setup_compiled_head(STATUS_LINES, encode_response_head)
        response_head = _compiled_head  # type: ignore[assignment]  # the same signature (worker/conn/_response.pyi)
