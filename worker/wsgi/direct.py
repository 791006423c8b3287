"""`--threads 1`: a read that is one ordinary request, served from the read itself.

The general way a request travels (`HTTP11Connection.feed` -> `on_request` -> a queued `WsgiCycle` -> the
server's turn -> `InlineRunner`) is built for every case: pipelining, bodies that come in pieces, parking
when the pool is full, proxy headers, upgrades. When the application runs on the loop's thread (`--threads 1`,
corral.worker.wsgi.inline) and a read is exactly one ordinary request (the compiled parser says so: see
worker/http1/_head.c) on an idle connection, none of that can happen: nothing is queued, nothing waits, the
request is complete. `serve_read` then makes its scope and `WsgiCycle` straight from the parser's result and
runs it at once, as `InlineRunner` would at the end of the turn. From the application's call on, it is the
same `WsgiCycle.run_here` either way (the environ, the call, the framing, the write, `response_complete`).

Anything else returns False before touching the connection, and the read goes the general way: a request the
compiled parser does not take, a connection with a request in progress, a `Connection: close` request or the
connection's last (`--max-requests-per-connection`), `Expect`, a body over `--wsgi-body-buffer`, proxy headers
to apply, a Host value not seen valid yet, a full pool or parked requests, a stopping server, a busy pool
thread. Nothing is answered here that the general way would answer differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.worker.conn.phases import BUSY, CLOSED
from corral.worker.http1.connection import HTTP11Connection
from corral.worker.http1.fields import VALID_HOST
from corral.worker.http1.native import parse_head
from corral.worker.http1.protocol import decode_path
from corral.worker.wsgi.call import ON_LOOP
from corral.worker.wsgi.cycle import WsgiCycle

if TYPE_CHECKING:
    from corral.worker.wsgi.protocol import WsgiHttpProtocol

__all__ = ["serve_read", "available"]

_CLOSED, _BUSY = CLOSED, BUSY
_HASH, _PERCENT = ord("#"), ord("%")  # (int needles: see corral.worker.http1.protocol)
_METHODS = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_parse = parse_head


def available() -> bool:
    """Whether reads can be served this way at all (the compiled parser is there)."""
    return _parse is not None


def serve_read(protocol: WsgiHttpProtocol, data: bytes) -> bool:
    """Serve `data` if it is one ordinary request on an idle connection (see the module's docstring); False,
    with nothing done, when it must go the general way."""
    if protocol.phase == _CLOSED or protocol.ready is not None:
        return False
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
        return False
    limits = server.limits
    parsed = _parse(data, limits.request_line, limits.request_fields, limits.header_block)  # type: ignore[misc]  # available() checked
    if parsed is None:
        return False
    method, url, http11, headers, content_length, host, expect, forwarded, keep_alive = parsed
    if not keep_alive or expect or server.stopping or server.parked:
        return False
    if url[0] != 47 or _HASH in url:  # not "/...", or a fragment to cut (on_request's cases)
        return False
    if forwarded and server.proxy is not None and protocol.trusted is not False:
        return False
    wsgi = server.wsgi
    if content_length > wsgi.body_buffer:
        return False
    threads = wsgi.threads
    if threads.jobs or len(threads.idle) != len(threads.threads):  # (WorkerThreads.all_idle, inlined)
        return False  # the pool's thread runs a request: this one goes after it, in order
    if len(server.application_instances) >= server.max_applications:
        return False
    requests = (state.requests if state is not None else protocol.served) + 1
    max_requests = limits.requests_per_connection
    if max_requests and requests >= max_requests:
        return False  # the connection's last request: it closes after it (the general way says so)
    if content_length and limits.request_body and content_length > limits.request_body:
        return False
    if host is not None and (state is None or host != state.last_host) and VALID_HOST.fullmatch(host) is None:
        return False
    # From here on the request is served this way.
    server.counters.bytes_in += len(data)
    if state is None:
        spares = server.spare_states
        if spares:
            state = spares.pop()
            state.handler = protocol
        else:
            state = HTTP11Connection(protocol, limits)
        protocol.state = state
    state.requests = requests
    if host is not None:
        state.last_host = host
    # The scope `HttpProtocol.on_request` makes for an origin-form target and no proxy headers to apply, made
    # here without its other cases (a test keeps the two the same).
    scope = server.scope_template.copy()
    if not http11:
        scope["http_version"] = "1.0"
    scope["server"] = protocol.sockname
    scope["client"] = protocol.client
    scheme = protocol.scheme
    if scheme != "http":
        scope["scheme"] = scheme
    scope["method"] = _METHODS.get(method) or method.decode("ascii")
    raw_path, _, query = url.partition(b"?")
    scope["path"] = raw_path.decode("ascii") if _PERCENT not in raw_path else decode_path(raw_path)
    scope["raw_path"] = raw_path
    scope["query_string"] = query
    scope["headers"] = headers
    lifespan_state = server.lifespan_state
    scope["state"] = lifespan_state.copy() if lifespan_state else {}
    extensions = protocol.extensions
    scope["extensions"] = {} if extensions is None else extensions.copy()
    protocol.phase = _BUSY
    cycle = WsgiCycle(protocol, scope, True, False, method == b"HEAD", http11, server.access_log is not None)
    state.last = state.active = cycle
    state.completed += 1
    state.body_size = content_length
    cycle.body_complete = True
    cycle.phase = ON_LOOP
    cycle.input = wsgi.body_input(data[len(data) - content_length :] if content_length else b"")
    cycle.posted = True  # a write() of the application posts nothing: the loop writes once the call returns
    # Run at the end of this turn of the event loop, with the other requests read in it (InlineRunner.queue):
    # responses written together wake the client about once (see WorkerServer.begin_soon). Run here at once,
    # reads and writes alternate: 6 % more CPU a request, most of it the kernel's (bench cost, pinned).
    wsgi.inline.queue(cycle)
    return True
