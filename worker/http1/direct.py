"""A read that is one ordinary request, made into its request straight from the compiled parser's result.

The general way a read travels (`HTTP11Connection.feed` -> `take_parsed` -> `admit` -> `on_request` ->
`enqueue`) is built for every case: pipelining, bodies that come in pieces, proxy headers, upgrades, the
connection's last request. When a read is exactly one ordinary request (the compiled parser says so: see
worker/http1/_head.c) on an idle connection, none of those can happen, and `read_request` makes the request
from the parser's result in one step: the connection's bookkeeping as `feed` would leave it (the request
counted, made the active one, the parser state taken from the spares), the scope `on_request` would make for
it. The protocol then begins it as it begins any request (`begin_soon`), or runs it on the loop's thread
(WSGI with `--threads 1`, corral.worker.wsgi.direct).

Anything else returns None before touching the connection, and the read goes the general way: a request the
compiled parser does not take (a target not in origin form or with a fragment, a method it does not know,
chunked bodies, upgrades, any error), a connection with a request in progress or bytes of one, `Expect`, a
body over the caller's bound or `--limit-request-body`, proxy headers to apply, a Host value not seen valid
yet, a stopping server. A request that closes the connection (`Connection: close`, HTTP/1.0 without
keep-alive, the connection's last under `--max-requests-per-connection`) is taken, the connection marked as
`admit` marks it. Nothing is answered here that the general way would answer differently; tests send the
same requests both ways and compare what the application and the client see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import BUSY, CLOSED
from corral.worker.http1.connection import HTTP11Connection
from corral.worker.http1.fields import VALID_HOST
from corral.worker.http1.native import make_scope, parse_head
from corral.worker.http1.scope import decode_path

if TYPE_CHECKING:
    from corral.worker.http1.protocol import HttpProtocol

__all__ = ["read_request", "scope_of", "available"]

_CLOSED, _BUSY = CLOSED, BUSY
_parse = parse_head
_make_scope: Any = make_scope  # (Any: called only where available() is true)


def available() -> bool:
    """Whether reads can be taken this way at all (the compiled parser is there)."""
    return _parse is not None


def read_request(protocol: HttpProtocol, data: bytes, max_body: int, scope_later: bool = False) -> Any:
    """The request of `data`, made active on `protocol`'s connection with its body (at most `max_body` bytes),
    when `data` is one ordinary request on an idle connection; else None, with nothing done. The caller begins
    it (HttpProtocol.start_request's part). `scope_later`: the request is made with no scope and the parser's
    tuple as its `parsed`, for a request object that makes its scope only when asked (`scope_of`: a WSGI
    request's environ is made from the tuple, corral.worker.wsgi.direct)."""
    if protocol.phase == _CLOSED or protocol.ready is not None:
        return None
    server = protocol.server
    state = protocol.state
    if state is not None and (
        state.active is not None
        or not state.in_head
        or state.head_parts is not None
        or state.must_close
        or state.after_close
        or state.upgraded
        or state.backlog
    ):
        return None
    limits = server.limits
    parsed = _parse(data, limits.request_line, limits.request_fields, limits.header_block)  # type: ignore[misc]  # available() checked by the caller
    if parsed is None:
        return None
    method, url, http11, headers, content_length, host, expect, forwarded, keep_alive = parsed
    if expect or content_length > max_body or server.stopping:
        return None
    if server.proxy is not None and (protocol.trusted is None or (forwarded and protocol.trusted)):
        return None  # proxy headers to apply, or a proxy object that decides per request: on_request's
    requests = (state.requests if state is not None else protocol.served) + 1
    if content_length and limits.request_body and content_length > limits.request_body:
        return None  # the general way answers 413
    if host is not None and (state is None or host != state.last_host) and VALID_HOST.fullmatch(host) is None:
        return None  # the general way answers 400 (or takes a valid Host it had not seen)
    # From here on the request is made this way: the connection's bookkeeping, as data_received and feed do it.
    server.counters.bytes_in += len(data)
    if state is None:
        spares = server.spare_states
        if spares:
            state = spares.pop()
            state.handler = protocol
        else:
            state = HTTP11Connection(protocol, limits)
        protocol.state = state
    # The request side of keep-alive, as HTTP11Connection.admit decides it (and take_parsed's after_close: what
    # follows a request that closes is skipped as llhttp would skip it).
    state.requests = requests
    if not keep_alive:
        state.client_close = state.after_close = True
    max_requests = limits.requests_per_connection
    if max_requests and requests >= max_requests:
        keep_alive = False  # the connection's last request (--max-requests-per-connection, --keep-alive 0)
    if not keep_alive:
        state.must_close = True
    if host is not None:
        state.last_host = host
    # The scope `HttpProtocol.on_request` makes for an origin-form target and no proxy headers to apply, made
    # in C (worker/http1/_head.c: about 90 Python steps fewer; the tests compare it with on_request's). The
    # call is `scope_of`'s, written out: calling it cost an ASGI keep-alive request 1.1 % (the guard, 650
    # instructions).
    scope = (
        None
        if scope_later
        else _make_scope(
            server.scope_template,
            method,
            url,
            http11,
            headers,
            protocol.sockname,
            protocol.client,
            protocol.scheme,
            server.lifespan_state,
            protocol.extensions,
            decode_path,
        )
    )
    protocol.phase = _BUSY
    protocol.since = server.tick  # (on_request's: the body timer's start)
    cycle = protocol.cycle_class(
        protocol, scope, keep_alive, False, method == b"HEAD", http11, server.access_log is not None
    )
    if scope_later:
        cycle.parsed = parsed
    state.last = state.active = cycle
    state.completed += 1
    # -1: no Content-Length field. (A test, not max(): a call costs more per request.)
    state.body_size = content_length if content_length > 0 else 0  # noqa: FURB136 - see the line above
    return cycle


def scope_of(protocol: HttpProtocol, parsed: tuple) -> dict[str, Any]:
    """The scope `read_request` would have made for the request of `parsed` (the compiled parser's tuple) on
    `protocol`'s connection, for a request made with `scope_later`."""
    server = protocol.server
    return _make_scope(
        server.scope_template,
        parsed[0],
        parsed[1],
        parsed[2],
        parsed[3],
        protocol.sockname,
        protocol.client,
        protocol.scheme,
        server.lifespan_state,
        protocol.extensions,
        decode_path,
    )
