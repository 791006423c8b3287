"""The asyncio Protocol of one HTTP/1.1 connection: thin glue between a transport and `HTTP11Connection`.

Timers: there are none per connection or per request. Each connection records which phase it is in and
the server tick at which that phase began; the server's tick sweeps the connections (see
`WorkerServer._ticker`). The keep-alive phase starts when a response completes with nothing pending and
ends at the first byte of the next request (not reset per byte: a client trickling bytes does not keep an
idle connection alive - uvicorn's slowloris hole); the head phase runs from that first byte (or the
connection's opening) until the head is complete, then 408.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import time
from typing import Any

import httptools

from corral.worker.app.pool import PoolFull
from corral.worker.conn.flow import FlowControl
from corral.worker.conn.phases import BODY, BUSY, CLOSED, CLOSING, FRESH, HEAD, IDLE, PARKED, PIPELINE
from corral.worker.edge.tlsinfo import tls_extension
from corral.worker.http1.connection import ERROR_RESPONSES, HTTP11Connection, ProtocolError
from corral.worker.http1.cycle import RequestCycle
from corral.worker.http1.direct import read_request
from corral.worker.http1.host import Host, Logged
from corral.worker.http1.scope import METHODS, decode_path
from corral.worker.websocket.handshake import websocket_request

__all__ = ["HttpProtocol", "service_unavailable"]

logger = logging.getLogger("corral.error")

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection and drops its queues
# Byte values for `in` tests on bytes: `b"#" in target` first tries the needle as an integer and formats a
# TypeError for it (CPython 3.11: about 2,000 instructions, a tenth of them the search), `35 in target` is a memchr.
_HASH, _PERCENT = ord("#"), ord("%")

_ANY_BODY = sys.maxsize  # read_request's bound on the body: none (an ASGI application reads it as it likes)

#: Parser states a server keeps for the connections that read next (see `HttpProtocol.response_complete`): as
#: many as it has had requests in progress at once, up to this (about 1.4 KiB each).
SPARE_STATES = 256


async def service_unavailable(scope: dict, receive: Any, send: Any) -> None:
    """The tiny application that answers a request finding the pool full when pool_full is '503'."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")],
        }
    )
    await send({"type": "http.response.body", "body": b"Service Unavailable"})


class HttpProtocol(asyncio.Protocol):
    #: The request object `on_request` makes (the native WSGI protocol makes `WsgiCycle`s).
    cycle_class: Any = RequestCycle

    __slots__ = (
        "server",
        "transport",
        "flow",
        "state",
        "client",
        "sockname",
        "scheme",
        "phase",
        "since",
        "pending_error",
        "trusted",
        "extensions",
        "rate",
        "ready",
        "served",
        "__weakref__",
    )

    def __init__(self, server: Host, sockname: tuple[Any, ...] | None = None) -> None:
        self.server = server
        self.transport: Any = None
        self.flow: Any = None
        self.state: Any = None
        self.client: tuple | None = None
        # The ASGI `server` address: given by the server when the listening socket tells it (bound to one
        # address), else asked of the transport in connection_made.
        self.sockname: tuple[Any, ...] | None = sockname
        self.scheme = "http"
        self.phase = FRESH
        self.since = 0
        self.pending_error: bytes | None = None
        self.trusted: bool | None = None  # the proxy's trust in this peer, when it can tell per connection
        # What every request of this connection gets in scope["extensions"] (TLS, PROXY protocol); None: nothing.
        self.extensions: dict | None = None
        self.rate: Any = None  # the clock of a transfer waiting on the client (corral.worker.edge.datarate)
        self.ready: Any = None  # the request to begin once the read being parsed is (see start_request)
        self.served = 0  # requests served before the parser state was shelved (see shelve)

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        self.transport = transport
        self.flow = FlowControl(transport)  # type: ignore[arg-type]  # an asyncio transport is a write transport here
        # No parser state yet: the first bytes take one (data_received), as every idle connection's next request.
        if server.write_limit:
            transport.set_write_buffer_limits(high=server.write_limit)  # type: ignore[attr-defined]  # an asyncio transport is a write transport here
        sockname = self.sockname
        if sockname is None:
            raw = transport.get_extra_info("sockname")
            # One tuple per local address, shared by its connections (a wildcard bind has a few).
            sockname = server.socknames.get(raw) if type(raw) is tuple or type(raw) is str else None
            if sockname is None:
                if isinstance(raw, (tuple, list)):
                    sockname = (raw[0], raw[1])
                else:  # unix socket: ASGI says (path, None) for the server and no client address
                    sockname = (raw or "", None)
                if (type(raw) is tuple or type(raw) is str) and len(server.socknames) < 64:
                    server.socknames[raw] = sockname
            self.sockname = sockname
        if sockname[1] is not None:
            peername = transport.get_extra_info("peername")
            if type(peername) is tuple or isinstance(peername, list):
                # The address string shared by the connections from one host (a proxy's few addresses): one
                # string less per connection held (bounded: clients vary).
                hosts = server.client_hosts
                host = hosts.get(peername[0])
                if host is None:
                    host = peername[0]
                    if len(hosts) < 1024:
                        hosts[host] = host
                self.client = (host, peername[1])
        proxy = server.proxy
        trusts = getattr(proxy, "trusts", None) if proxy is not None else None
        if trusts is not None:
            # A proxy that can decide trust per peer (corral's ProxyHeaders) decides it once here;
            # untrusted peers then cost nothing per request.
            self.trusted = bool(trusts(self.client[0] if self.client else None, sockname[1] is None))
        if server.ssl_context is not None:
            self.scheme = "https"
            self.extensions = {"tls": tls_extension(transport, server)}
        self.since = server.tick
        server.connections.add(self)
        if server.stopping:
            server.connection_while_stopping(self)

    def data_received(self, data: bytes) -> None:
        if self.server.direct_reads:
            # One ordinary request on an idle connection: made straight from the compiled parser's result
            # (corral.worker.http1.direct) and begun with the turn's other requests.
            cycle = read_request(self, data, _ANY_BODY)
            if cycle is not None:
                size = self.state.body_size  # (read_request gave the connection a state)
                if size:
                    cycle.on_body(data[len(data) - size :])
                cycle.on_body_complete()
                self.ready = cycle
                self.server.begin_soon(self)
                return
        phase = self.phase
        if phase != BUSY:
            if phase == IDLE:
                self.phase = HEAD  # the first byte of a request: the header timer starts, once
                self.since = self.server.tick
            elif phase == FRESH:
                self.phase = HEAD  # its header timer runs since the connection opened
            elif phase == CLOSED:
                return
        else:
            self.since = self.server.tick  # body bytes (or a pipelined head): the body timer restarts
        self.server.counters.bytes_in += len(data)  # metrics: one integer add per read, no more
        state = self.state
        if state is None:  # idle: a spare parser state, or a new one (see response_complete)
            spares = self.server.spare_states
            if spares:
                state = spares.pop()
                state.handler = self
            else:
                state = HTTP11Connection(self, self.server.limits)
            state.requests = self.served
            self.state = state
        try:
            state.feed(data)
        except ProtocolError as error:
            self.protocol_error(error)
        except Exception:  # nothing a client sends may raise out of the protocol
            logger.exception("Error while handling request bytes")
            self.protocol_error(ProtocolError(400, "internal error"))
        else:
            if state.pipeline or state.backlog:
                # A request waits behind the active one: read no further until its turn comes.
                self.flow.pause_reading(PIPELINE)
        if self.ready is not None:
            self.server.begin_soon(self)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase != CLOSED:  # close() has disconnected the requests already
            self.phase = CLOSED
            self._disconnect_all()
        flow = self.flow
        if flow is not None and flow.write_paused:
            flow.connection_lost()  # release the senders waiting in drain()
        self.server.connection_closed(self)
        state = self.state
        if state is not None:
            state.release()  # no reference cycles left: refcounting frees the connection, not the GC

    # ------------------------------------------------------------------ HTTP11Connection's handler

    def on_request(
        self,
        method: bytes,
        http_version: str,
        target: bytes,
        headers: list,
        keep_alive: bool,
        expect_continue: bool,
        has_body: bool,
        forwarded: bool = True,
    ) -> RequestCycle:
        server = self.server
        if target[:1] == b"/":
            if _HASH in target:
                # A fragment is the client's own (RFC 9110 §4.2.4: not sent; RFC 3986 §3.5): llhttp lets it
                # through in the target, and it must reach neither the path nor the query string.
                target = target[: target.index(b"#")]
            raw_path, _, query = target.partition(b"?")
        elif target == b"*":  # OPTIONS * (RFC 9112 §3.2.4)
            raw_path, query = target, b""
        elif method == b"CONNECT":
            # authority-form (RFC 9112 §3.2.3), CONNECT's only form: the application gets the authority as the
            # path, as h11-based servers give it (llhttp treats CONNECT as an upgrade: the connection closes
            # after the response).
            raw_path, query = target, b""
        else:  # absolute-form (RFC 9112 §3.2.2)
            url = httptools.parse_url(target)
            raw_path, query = url.path or b"/", url.query or b""
            if url.host:
                # The server MUST ignore the Host field and use the target's authority instead.
                host = b"[%s]" % url.host if b":" in url.host else url.host  # an IPv6 literal
                authority = host if url.port is None else b"%s:%d" % (host, url.port)
                headers = [(name, value) for name, value in headers if name != b"host"]
                headers.append((b"host", authority))
        # The scope: a copy of the server's template (its keys in the ASGI order, what no request changes set),
        # then this request's values. Copying a dict is a block copy of its table: cheaper than building the
        # 14 entries one by one (a dict literal hashes and inserts each key).
        scope = server.scope_template.copy()
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["server"] = self.sockname
        scope["client"] = self.client
        if self.scheme != "http":
            scope["scheme"] = self.scheme
        scope["method"] = METHODS.get(method) or method.decode("ascii")
        scope["path"] = (
            raw_path.decode("ascii") if _PERCENT not in raw_path and raw_path.isascii() else decode_path(raw_path)
        )
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        scope["headers"] = headers
        state = server.lifespan_state
        scope["state"] = state.copy() if state else {}
        scope["extensions"] = {} if self.extensions is None else self.extensions.copy()
        proxy = server.proxy
        if proxy is not None and self.trusted is not False:
            try:
                if self.trusted is None:
                    proxy.apply(scope)  # a proxy without `trusts` (any object with apply(scope)) decides itself
                elif forwarded:
                    # Trust decided once for the connection; corral's ProxyHeaders reads only the headers the
                    # parser noted (`forwarded`): without one there is nothing to apply.
                    proxy.apply(scope, True)
            except Exception:
                logger.exception("Could not apply proxy headers")
                raise self.state.fail(400, "bad proxy headers") from None
        self.phase = BUSY
        self.since = server.tick  # the body timer's start (see WorkerServer._ticker)
        if self.state.parser.should_upgrade():
            # WebSocket hook (corral.worker.websocket.handshake): `Upgrade: websocket` becomes a WebSocketCycle that
            # is queued, parked and started like a request; other upgrades stay plain HTTP.
            websocket = websocket_request(self, scope, method, http_version, headers)
            if websocket is not None:
                return websocket  # type: ignore[return-value]  # a WebSocketCycle is an Exchange too, as RequestCycle
        return self.cycle_class(
            self,
            scope,
            keep_alive,
            expect_continue,
            method == b"HEAD",
            http_version == "1.1",
            server.access_log is not None,
        )

    def start_request(self, cycle: RequestCycle) -> None:
        """HTTP11Connection's call for the request that became the active one while it parses a read: begun
        with the other requests of this turn of the event loop once every read of the turn is parsed
        (`WorkerServer.begin_soon`), so that what the read holds of its body is there first. An application
        whose first step finishes it (corral.worker.app.eager: no task is made) then sees a complete request,
        its response can keep the connection, and the responses of the turn go out together."""
        self.ready = cycle

    def begin_request(self, cycle: RequestCycle) -> None:
        """Run the application for `cycle`, or park it (FIFO) when the pool is full."""
        server = self.server
        if server.parked and not server.reject_when_full:
            self.park(cycle)  # requests parked earlier go first
            return
        try:
            server.run_request(cycle)
        except PoolFull:
            self.pool_full(cycle)

    def launch(self, cycle: RequestCycle) -> None:
        try:
            self.server.run_request(cycle)
        except PoolFull:
            self.pool_full(cycle)

    def pool_full(self, cycle: RequestCycle) -> None:
        """Starting `cycle` raised PoolFull (the pool is full): answer 503 (pool_full = '503') or park the request."""
        if self.server.reject_when_full:
            self.server.counters.rejected += 1
            self.run_beside(cycle, service_unavailable)
        else:
            self.park(cycle)

    def run_beside(self, cycle: RequestCycle, app: Any) -> None:
        """An answer the worker gives itself (503, health): an application like any other, outside the pool
        (it takes no slot)."""
        task = asyncio.get_running_loop().create_task(app(cycle.scope, cycle.receive, cycle.send))
        task.add_done_callback(cycle.app_finished)

    def park(self, cycle: RequestCycle) -> None:
        self.flow.pause_reading(PARKED)
        self.server.park(self, cycle)

    def unpark(self, cycle: RequestCycle) -> None:
        """A slot is free for the parked `cycle` (called by the server, in FIFO order)."""
        self.flow.resume_reading(PARKED)
        self.launch(cycle)

    # ------------------------------------------------------------------ responses

    def response_complete(self, cycle: RequestCycle) -> None:
        server = self.server
        server.requests_served += 1
        if cycle.t0 is not None:
            self.log_access(cycle)
        if not cycle.keep_alive or not cycle.body_complete:
            # An unread request body would have to be read and discarded to find the next request:
            # closing is cheaper and allowed (RFC 9112 §9.6). A response whose head went out while the
            # server stops said `connection: close` (cycle.keep_alive is False); one that promised
            # keep-alive before the stop goes on below: its connection is idle, the stop's grace decides.
            self.close()
            return
        state = self.state
        following = state.response_done()
        if following is not None:
            self.begin_request(following)
        if state.backlog and len(state.pipeline) < state.max_pipeline and self.phase != CLOSED:
            # Parsing stopped at the pipelining bound: go on with the bytes already read (this may start
            # the next request, or queue more behind the one just started).
            self.data_received(b"")
            following = following or state.active
        if following is not None:
            if not state.pipeline and not state.backlog:
                self.flow.resume_reading(PIPELINE)
            return
        if self.phase == CLOSED:
            return
        if self.pending_error is not None:
            self.transport.write(self.pending_error)
            self.close()
            return
        if self.flow.read_paused:
            self.flow.resume_reading(PIPELINE | BODY)
        # Part of the next head may be here already: then its timer runs, else the keep-alive one.
        self.since = server.tick
        if state.url:
            self.phase = HEAD
            return
        self.phase = IDLE
        if len(server.connections) > SPARE_STATES and state.head_parts is None:
            # Between requests with nothing read ahead, the parser and its state hold nothing of this connection
            # but the count of requests served: they go to the server's spares, to parse whichever connection
            # reads next (data_received takes one). Idle keep-alive connections then hold no parser (about
            # 1.4 KiB each: llhttp's, its bound callbacks, the state machine): a worker holds about as many
            # as it has requests in progress, not as many as connections. Only past SPARE_STATES connections:
            # below, the spares could save no more than they hold themselves, and handing the state over
            # costs a keep-alive request about 1,900 instructions (2.5 %, callgrind). The tick's `shelve`
            # alone would come too late: a wave of connections allocates a parser each before any has idled.
            spares = server.spare_states
            if len(spares) < SPARE_STATES:
                self.served = state.requests
                state.handler = None
                spares.append(state)
                self.state = None

    def shelve(self) -> None:
        """Idle a whole tick with a parser of its own (the server's spares were full when its response
        completed, see response_complete): the parser goes to the spares if there is room now, else it is
        freed. The next request's first bytes take one again (`data_received`)."""
        state = self.state
        if (
            state is None
            or self.phase != IDLE
            or state.active is not None
            or state.pipeline
            or state.backlog
            or state.url
            or state.head_parts is not None
            or state.upgraded
            or state.after_close
        ):
            return
        self.served = state.requests
        self.state = None
        spares = self.server.spare_states
        if len(spares) < SPARE_STATES:
            state.handler = None
            spares.append(state)
        else:
            state.release()

    def log_access(self, cycle: Logged) -> None:
        access_log = self.server.access_log
        if access_log is None:
            return
        duration = time.perf_counter() - cycle.t0 if cycle.t0 is not None else 0.0
        try:
            access_log(cycle.scope, cycle.status, cycle.nbytes, duration, cycle.headers)
        except Exception:
            logger.exception("Access log failed")

    # ------------------------------------------------------------------ errors, timeouts, closing

    def protocol_error(self, error: ProtocolError) -> None:
        """Answer a broken request with its error response and close, keeping earlier responses in order."""
        state = self.state
        broken = state.request  # the request whose body broke the protocol, if any
        state.request = None
        state.upgraded = True  # feed() ignores everything from now on: the connection is closing
        active = state.active
        if broken is not None and broken is not active:
            state.drop(broken)
            broken.disconnect()
        if active is None or (broken is active and active.state < 2):
            if active is not None:
                active.disconnect()
            self.transport.write(error.response)
            self.close()
        elif broken is active:
            self.close()  # its response has begun: closing is all that is left
        else:
            # A later request is broken: the responses queued before it go out first.
            self.pending_error = error.response
            self.flow.pause_reading(CLOSING)
            state.must_close = True

    def body_timeout(self) -> None:
        """The request body stalled for `body_timeout` while the server was reading it: 408 (or, once the
        response has begun, just the close) - the application gets `http.disconnect`."""
        if self.phase == BUSY and self.state.request is not None:
            self.protocol_error(ProtocolError(408, "request body timeout"))

    def output_waiting(self) -> bool:
        """The server has response bytes that the client does not take (the minimum response rate's clock
        runs): the transport is above its high-water mark, or the connection is closed and still flushing."""
        if self.flow.write_paused:
            return True
        return self.phase == CLOSED and self.transport.get_write_buffer_size() > 0

    def abort(self) -> None:
        """End the connection now, dropping what waits to be written (a response below the minimum rate):
        with SO_LINGER 0 the client gets a reset and the kernel frees the send queue at once, instead of
        keeping it (and retrying) for a client that does not read."""
        try:
            self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except (AttributeError, OSError):
            pass
        self.close()
        self.transport.abort()

    def header_timeout(self) -> None:
        if self.phase == HEAD or self.phase == FRESH:
            self.transport.write(ERROR_RESPONSES[408])
            self.close()

    def close(self) -> None:
        if self.phase != CLOSED:
            self.phase = CLOSED
            self._disconnect_all()
            self.transport.close()

    def _disconnect_all(self) -> None:
        state = self.state
        if state is None:
            return
        if state.active is not None:
            state.active.disconnect()
        for cycle in state.pipeline:
            cycle.disconnect()
        if state.request is not None:
            state.request.disconnect()
