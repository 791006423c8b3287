"""The compiled request-head parser, when there is one, and what its result becomes.

`parse_head` is `_head.parse` (worker/http1/_head.c, built at install when a C compiler is present), or None,
and then every read is parsed the pure-Python way. `CORRAL_NO_EXTENSIONS=1` in the environment turns it off
(`corral.shared.native`; CI runs the whole suite both ways). What it takes and returns: the C source's opening
comment. `take_parsed` makes the request from what it returns, as `HTTP11Connection`'s llhttp callbacks would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.shared.native import DISABLED_BY, enabled
from corral.worker.http1.fields import VALID_HOST

if TYPE_CHECKING:
    from corral.worker.http1.connection import HTTP11Connection

__all__ = ["parse_head", "make_scope", "clone_request", "take_parsed", "Parsed", "DISABLED_BY", "describe"]

Parsed = tuple[bytes, bytes, bool, list[tuple[bytes, bytes]], int, "bytes | None", bool, bool, bool]

parse_head: Callable[[bytes, int, int, int], Parsed | None] | None = None
make_scope: Callable[..., dict[str, Any]] | None = None  # the scope of a parsed request (corral.worker.http1.direct)
# A new object with a prototype's slot values (corral.worker.wsgi.cycle.new_wsgi_cycle), None for a class of
# another layout.
clone_request: Callable[[Any], Any] | None = None
if enabled():
    try:
        from corral.worker.http1._head import clone as clone_request
        from corral.worker.http1._head import make_scope
        from corral.worker.http1._head import parse as parse_head
    except ImportError:  # not built (no compiler at install): the pure-Python way
        parse_head = make_scope = clone_request = None


def describe() -> str:
    """Which request parser this process uses, for `serve --version`."""
    if parse_head is not None:
        return "request parser: compiled"
    if not enabled():
        return f"request parser: pure Python ({DISABLED_BY} is set)"
    return "request parser: pure Python (its C module was not built at install)"


def take_parsed(conn: HTTP11Connection, parsed: Parsed, data: bytes) -> bool:
    """The request the compiled parser found in `data` (one whole request), made and started as
    `on_headers_complete`, `on_body` and `on_message_complete` would. False (nothing done) where the general
    way must decide: a Host value not seen valid before that is invalid, a body over the limit."""
    method, url, http11, headers, content_length, host, expect, forwarded, keep_alive = parsed
    if host is not None and host != conn.last_host:
        if VALID_HOST.fullmatch(host) is None:
            return False
        conn.last_host = host
    has_body = content_length > 0
    if has_body and conn.limit_body and content_length > conn.limit_body:
        return False
    if not keep_alive:
        # llhttp, had it parsed this request, would skip CR and LF sent after it and refuse anything else,
        # which parse_failure then ignores: `feed` does the same (see after_close).
        conn.after_close = True
    keep_alive = conn.admit(keep_alive)
    # RFC 9110 §10.1.1: a server MUST ignore 100-continue from an HTTP/1.0 client.
    conn.last = request = conn.handler.on_request(
        method,
        "1.1" if http11 else "1.0",
        url,
        headers,
        keep_alive,
        expect and has_body and http11,
        has_body,
        forwarded,
    )
    conn.enqueue(request)
    conn.body_size = content_length if has_body else 0
    if has_body:
        request.on_body(data[len(data) - content_length :])
    conn.completed += 1
    request.on_body_complete()
    return True
