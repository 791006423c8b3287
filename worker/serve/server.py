"""`WorkerServer`: the HTTP/1.1 server of one worker process, on already-bound listening sockets.

It is a `StatelessServer` that backpressures (`evict_when_full = False`): every request is an application
instance in the pool. When the pool is full a request whose head is complete is *parked* (its connection
stops reading, the request is kept) in a FIFO, and the server stops accepting; `slot_freed()` starts the
parked requests in order and, when room remains, accepts again. Nothing is dropped. With
`pool_full = '503'` a request finding the pool full is answered by a tiny 503 application instead (outside
the pool: it takes no slot).

Accepting is paused by closing the asyncio servers, which run on `dup()`s of the caller's sockets: the
kernel keeps queueing connections on the shared listening socket, and accepting resumes on a fresh dup.

Graceful stop (`request_stop(True)`) loses nothing a careful server can save, within `graceful_timeout`:
it stops accepting; a connection with a request in progress, a head begun or bytes unread in its socket
buffer is served, its response saying `connection: close`; an idle keep-alive connection (or one just
accepted, nothing read yet) is kept for a short grace (`stop_grace`, at most `graceful_timeout`) during
which a request that arrives on it is still served with `connection: close`, and is closed once the grace
has passed with no byte waiting in its socket buffer - what nginx and gunicorn do. Closing at once would
reset a client (nginx) that sends on it at that moment: nginx retries a GET, but a POST becomes a 502.
WebSocket connections are closed at once (going away).

One tick coroutine (no per-request timers) refreshes the Date header and sweeps the connections for the
keep-alive and header timeouts; a heartbeat coroutine calls `notify()` so the master can tell the event
loop is alive.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import socket
import struct
import sys
import termios
from collections import deque
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

from corral.shared.settings import Settings
from corral.worker.app.pool import ApplicationInstance, StatelessServer, describe_scope
from corral.worker.conn.dates import DefaultHeaders
from corral.worker.conn.phases import BUSY, CLOSED, FRESH, HEAD, IDLE, ResponseState
from corral.worker.edge.counters import Counters, collecting
from corral.worker.edge.datarate import RateSweep
from corral.worker.edge.proxy_headers import ProxyHeaders
from corral.worker.http1.cycle import RequestCycle
from corral.worker.http1.direct import available as direct_available
from corral.worker.http1.host import Connection, Parked
from corral.worker.http1.limits import Limits
from corral.worker.http1.protocol import HttpProtocol
from corral.worker.http1.scope import scope_template
from corral.worker.http2.detect import h2_protocol
from corral.worker.serve.health import health_protocol
from corral.worker.serve.metered import metered_protocol
from corral.worker.serve.proxied import proxied_protocol
from corral.worker.serve.trim import Trimmer
from corral.worker.websocket.protocol import WebSocketCycle

__all__ = ["WorkerServer"]

# The logger keeps the module's name from before worker/ had rooms: logging configs name it.
logger = logging.getLogger("corral.worker.server")

#: From Python 3.13, create_unix_server removes the socket's file when the server closes (uvloop does the same
#: there). The file belongs to the master (or systemd), and the other workers go on accepting on it: a worker
#: that stops (reload, recycling, scale-down) must leave it.
_KEEP_SOCKET_FILE: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}

COMPLETE = ResponseState.COMPLETE
error_logger = logging.getLogger("corral.error")

_INT = struct.Struct("i")
_ZERO = bytes(_INT.size)


def unread_bytes(transport: Any) -> int:
    """Bytes waiting in the socket's receive buffer, not read by the loop yet (FIONREAD); 0 when unknown."""
    try:
        fd = transport.get_extra_info("socket").fileno()
        if fd < 0:
            return 0
        return _INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, _ZERO))[0]
    except (AttributeError, OSError, ValueError):
        return 0


AccessLog = Callable[[dict, int, int, float, Any], None]


class WorkerServer(StatelessServer):
    evict_when_full = False

    #: Seconds between two `notify()` calls of the heartbeat.
    heartbeat_interval: float = 1.0

    #: Seconds a graceful stop keeps an idle keep-alive connection (at most `graceful_timeout`): a
    #: request that arrives meanwhile is served with `connection: close`.
    stop_grace: float = 1.0

    def __init__(
        self,
        app: Any,
        settings: Settings | None = None,
        access_log: AccessLog | None = None,
        proxy: Any = None,
        lifespan_state: dict | None = None,
        notify: Callable[[], None] | None = None,
        ssl_context: Any = None,
        wsgi: bool = False,
        max_applications: int | None = None,
        wsgi_layers: Any = None,
    ) -> None:
        settings = settings if settings is not None else Settings()
        # This worker's share of --max-applications (the master spreads the total; alone, it is the total).
        super().__init__(app, max_applications=max_applications or settings.max_applications)
        # WSGI hook (corral.worker.wsgi.cycle): `wsgi=True` serves `app` as a WSGI application natively, on
        # `settings.threads` threads, without the ASGI adapter; `wsgi_layers` (corral.worker.wsgi.layers): its
        # --request-timeout and request hooks, None when neither is set.
        self.wsgi: Any = None
        self.wsgi_environ: dict | None = None  # the environ every native WSGI request starts from (a copy)
        if wsgi:
            from corral.worker.wsgi.protocol import wsgi_setup

            wsgi_setup(self, app, settings, wsgi_layers)
        self.settings = settings
        self.access_log = access_log
        self.proxy = proxy
        # PROXY protocol (--proxy-protocol): whose headers are believed; None when off.
        self.proxy_trust: Any = ProxyHeaders(settings.proxy_allow_ips) if settings.proxy_protocol else None
        self.lifespan_state: dict = lifespan_state if lifespan_state is not None else {}
        self.notify = notify
        # TLS (built by the master from --certfile and friends): every listener serves HTTPS.
        self.ssl_context = ssl_context
        self.server_cert_pem: str | None = None  # for ASGI's TLS extension, made on first use
        self.root_path: str = settings.root_path
        self.scope_template: dict = scope_template(self.root_path)  # copied by every HTTP/1.1 request
        self.reject_when_full = settings.pool_full == "503"
        self.limits = Limits.from_settings(settings)  # every connection's HTTP/1.1 limits, built once
        # Set on each connection only when it differs from the event loop's default high-water mark.
        self.write_limit: int = settings.write_buffer_limit if settings.write_buffer_limit != 65536 else 0
        self.default_headers = DefaultHeaders(settings.server_header, settings.date_header)
        self.default_header_bytes: bytes = self.default_headers.headers  # refreshed by the tick
        self.connections: set[Connection] = set()
        self.socknames: dict[Any, tuple] = {}  # a transport's sockname -> its ASGI `server` tuple (shared)
        self.client_hosts: dict[str, str] = {}  # clients' address strings, shared by their connections
        # HTTP/1.1 parser states of no connection (HttpProtocol.response_complete); a deque: a list reallocates
        # its storage when it empties and fills again, a pair of calls per request at its size.
        self.spare_states: deque[Any] = deque()
        self.beginning: list[HttpProtocol] = []  # connections with a request to begin this turn (begin_soon)
        self.parked: deque[tuple[Connection, Parked, float]] = deque()  # (.., when parked)
        self.counters = Counters()
        self.loop_lag = 0.0  # how late the last heartbeat woke up: the event loop's lag
        # Metrics count in the protocol, --health-path is answered by it: chosen once, here.
        base = self.protocol_class  # HttpProtocol, or WsgiHttpProtocol after wsgi_setup above
        protocol_class = metered_protocol(self.counters, base) if collecting(settings) else base
        if settings.health_path:
            protocol_class = health_protocol(settings.health_path, protocol_class)
        if settings.http != "1":  # HTTP/2 (ALPN h2, h2c prior knowledge): recognised before HTTP/1.1
            protocol_class = h2_protocol(protocol_class, settings)
        if settings.proxy_protocol:
            protocol_class = proxied_protocol(protocol_class)
        self.protocol_class: type[HttpProtocol] = protocol_class
        # Reads that are one ordinary request are made into their request in one step (corral.worker.http1.direct)
        # where no other request object is wanted (the health path's protocol makes its own), and where a native
        # WSGI server with --threads 1 does not run them from the read itself (corral.worker.wsgi.direct).
        self.direct_reads = (
            direct_available() and not settings.health_path and not (self.wsgi is not None and self.wsgi.direct)
        )
        self.stopping = False
        # Draining (the first part of a host's stop, --drain-delay): everything is served as usual, only the
        # health path answers 503 so that load balancers stop sending.
        self.draining = False
        self.requests_served = 0
        self.websockets: Any = None  # WebSocket hook: corral.worker.websocket.protocol.WebSocketHub, made on first use
        # The sweep must be fine enough for the shortest timeout it enforces.
        timeouts = [settings.header_timeout, settings.body_timeout] + (
            [settings.keepalive] if settings.keepalive > 0 else []
        )
        deadline = self.wsgi.deadline if self.wsgi is not None else None  # swept by the tick too
        if deadline is not None:
            timeouts.append(deadline.timeout)
        if settings.min_request_body_rate or settings.min_response_rate:
            timeouts.append(settings.min_rate_grace)
        self.tick_interval = min(1.0, *(t / 4 for t in timeouts))
        # --min-request-body-rate / --min-response-rate, applied by the tick; None when both are off.
        self.rates = RateSweep.from_settings(settings, self.tick_interval)
        self.tick = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._want_accept = False
        self._accept_task: asyncio.Task[None] | None = None
        self._stop: asyncio.Future[None] | None = None
        self._stop_requested = False
        self._graceful = True
        self._force: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closing_all = False  # the stop is past its graceful part: close what is left at once

    # ------------------------------------------------------------------ the seam

    async def serve(self, sockets: list[socket.socket]) -> None:
        """Serve HTTP on already-bound listening sockets until `request_stop()`; the sockets stay open."""
        loop = self.loop = asyncio.get_running_loop()
        if self.wsgi is not None:
            self.wsgi.loop = loop
            if self.wsgi.inline is not None:
                self.wsgi.inline.loop = loop
                self.wsgi.inline.watch(sockets)
        self._sockets = list(sockets)
        self._stop = loop.create_future()
        self._force = loop.create_future()
        if self._stop_requested:
            self._stop.set_result(None)
        self._set_accepting(True)
        tasks = [loop.create_task(self._ticker()), loop.create_task(self._heartbeat())]
        try:
            await self._stop
        finally:
            try:
                await self._shutdown()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self) -> None:
        """StatelessServer's entry point (`run()` / `arun()`): serve the sockets given to `serve` earlier."""
        await self.serve(self._sockets)

    def request_stop(self, graceful: bool = True) -> None:
        """Stop serving (call it on the server's loop, e.g. through `loop.call_soon_threadsafe`).

        Graceful: stop accepting, serve the requests in progress or already sent (`connection: close`),
        keep idle keep-alive connections for `stop_grace` and then close them, all within
        `settings.graceful_timeout`; then close the rest. A later non-graceful call cuts the wait short.
        """
        if not graceful:
            self._graceful = False
            if self._force is not None and not self._force.done():
                self._force.set_result(None)
        if self._stop is None:
            self._stop_requested = True
        elif not self._stop.done():
            self._stop.set_result(None)

    def drain(self) -> None:
        """Fail the health path from now on; serve and accept as before (the master stops us later)."""
        if not self.draining:
            self.draining = True
            logger.info("Draining: the health path answers 503; still serving")

    async def _shutdown(self) -> None:
        self.stopping = True
        if self.wsgi is not None:
            self.wsgi.drain_lazy()
        self._set_accepting(False)
        if self._graceful and self.connections:
            logger.info(
                "Stopping: no longer accepting; finishing what %d open connection(s) have in flight, "
                "keep-alive ones closed with their next response",
                len(self.connections),
            )
        connections = self.connections
        for protocol in list(connections):
            phase = protocol.phase
            if phase != BUSY and phase != HEAD and phase != IDLE and phase != FRESH:
                protocol.close()  # a WebSocket: going away at once
            else:
                go_away = getattr(protocol, "go_away", None)
                if go_away is not None:  # HTTP/2: GOAWAY now; new streams are refused, those in flight finish
                    go_away()
        if self._graceful and connections:
            await self._drain_gracefully()
        self._closing_all = True
        for protocol in list(connections):
            protocol.close()
            protocol.transport.abort()
        self.parked.clear()
        await self.shutdown_instances(self.instance_shutdown_timeout)
        if self.wsgi is not None:
            self.wsgi.threads.close()
        if self._accept_task is not None:
            self._accept_task.cancel()

    async def _drain_gracefully(self) -> None:
        """Serve what is in progress or already sent; close idle connections after the grace (see above)."""
        loop = self.loop
        assert loop is not None and self._force is not None
        connections = self.connections
        timeout = self.settings.graceful_timeout
        deadline = loop.time() + timeout
        grace = max(0.0, min(self.stop_grace, timeout))
        step = max(grace / 4, 0.01)
        idle_since: dict[Connection, float] = {}  # when each idle connection was first seen idle
        drained = self._drained = loop.create_future()
        waiting = [drained, self._force]
        while connections and not self._force.done():
            now = loop.time()
            if now >= deadline:
                break
            for protocol in tuple(connections):
                phase = protocol.phase
                if phase != IDLE and phase != FRESH:
                    continue  # served (BUSY, HEAD), or a WebSocket (it goes away by itself when stopping)
                if unread_bytes(protocol.transport):
                    # A request is in the socket buffer: the loop reads it next, and serves it.
                    idle_since.pop(protocol, None)
                elif now - idle_since.setdefault(protocol, now) >= grace:
                    protocol.close()
            if not connections:
                break
            await asyncio.wait(waiting, timeout=min(step, deadline - now), return_when=asyncio.FIRST_COMPLETED)

    def connection_while_stopping(self, protocol: HttpProtocol) -> None:
        """A connection accepted after the stop began (the accept was under way): the graceful stop serves
        its request or closes it after the grace, like an idle one; past that, it is closed at once."""
        if self._closing_all or not self._graceful:
            protocol.close()

    # ------------------------------------------------------------------ accepting

    protocol_class: Any = HttpProtocol  # WsgiHttpProtocol for a native WSGI server (set per instance)

    def _protocol_factory(self, sockname: tuple | None = None) -> HttpProtocol:
        return self.protocol_class(self, sockname)

    @staticmethod
    def _listener_sockname(sock: socket.socket) -> tuple | None:
        """The ASGI `server` of every connection accepted on `sock` when that is known in advance: a TCP
        socket bound to one address (not a wildcard: its connections' local address varies)."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            address = sock.getsockname()
        except OSError:
            return None
        host = address[0]
        if host in ("0.0.0.0", "::") or host.startswith("::ffff:0.0.0.0"):
            return None
        return (host, address[1])

    def _set_accepting(self, want: bool) -> None:
        self._want_accept = want = want and not self.stopping
        if not want:
            servers, self._servers = self._servers, []
            for server in servers:
                server.close()  # closes our dup only; the caller's socket keeps listening
            return
        if not self._servers and self._accept_task is None and self.loop is not None:
            self._accept_task = self.loop.create_task(self._open_servers())

    async def _open_servers(self) -> None:
        loop = self.loop
        assert loop is not None
        servers: list[asyncio.AbstractServer] = []
        try:
            for sock in self._sockets:
                if not self._want_accept:
                    break
                dup = sock.dup()
                sockname = self._listener_sockname(sock)
                factory = self._protocol_factory if sockname is None else partial(self._protocol_factory, sockname)
                tls: dict[str, Any] = {}
                if self.ssl_context is not None:
                    tls = {"ssl": self.ssl_context, "ssl_handshake_timeout": self.settings.ssl_handshake_timeout}
                server: asyncio.AbstractServer
                try:
                    if sock.family == socket.AF_UNIX:
                        server = await loop.create_unix_server(
                            factory, sock=dup, backlog=self.settings.backlog, **_KEEP_SOCKET_FILE, **tls
                        )
                    else:
                        server = await loop.create_server(factory, sock=dup, backlog=self.settings.backlog, **tls)
                except BaseException:
                    dup.close()
                    raise
                servers.append(server)
        except Exception:
            logger.exception("Could not start accepting")
        except BaseException:  # cancelled by the shutdown
            for server in servers:
                server.close()
            raise
        finally:
            self._accept_task = None
        if self._want_accept:
            self._servers = servers
        else:
            for server in servers:
                server.close()

    # ------------------------------------------------------------------ the pool and backpressure

    def park(self, protocol: Connection, cycle: Parked) -> None:
        self.parked.append((protocol, cycle, perf_counter()))  # (the loop's clock is ms-coarse in uvloop)
        self._set_accepting(False)

    def slot_freed(self) -> None:
        parked = self.parked
        while parked and not self.pool_full:
            protocol, cycle, since = parked.popleft()
            if not cycle.disconnected:
                self.counters.parked_for(perf_counter() - since)
                protocol.unpark(cycle)
        if not parked and not self.pool_full:
            self._set_accepting(True)

    def begin_soon(self, protocol: HttpProtocol) -> None:
        """Begin `protocol`'s ready request (HttpProtocol.start_request) once this turn of the event loop has
        read every connection it reads: at its end, with the other requests of the turn.

        Applications that finish at once (corral.worker.app.eager, and WSGI on the loop's thread) then write
        their responses one after the other, not each between two reads: a response written while the client
        sleeps wakes it (an interrupt to its core, dear in a virtual machine), responses written together wake
        it about once. Measured (ASGI hello-world, wrk with 64 connections, one pinned core, 7 interleaved
        rounds): answered read by read, 22.9 µs of CPU a request and 28,500 requests/s; in turns, 15.9 µs and
        56,000 (a task per request, as before, gave the same batching: 15.5 µs). WSGI with --threads 1 in
        turns: 15.6 µs, against 17.1 on the pool's threads. The cost: a loop callback per turn."""
        beginning = self.beginning
        beginning.append(protocol)
        if len(beginning) == 1:
            (self.loop or asyncio.get_running_loop()).call_soon(self._begin_turn)

    def _begin_turn(self) -> None:
        beginning, self.beginning = self.beginning, []
        inline = self.wsgi.inline if self.wsgi is not None else None
        if inline is not None:
            inline.batching = True  # WSGI on the loop's thread: the calls after the turn's begins (below)
        try:
            for protocol in beginning:
                cycle = protocol.ready
                if cycle is not None:
                    protocol.ready = None
                    protocol.begin_request(cycle)
        finally:
            if inline is not None:
                inline.batching = False
        if inline is not None and inline.ready:
            inline.run()

    def run_request(self, cycle: Any) -> None:
        """Start the application of `cycle` (an HTTP/1.1 request or a WebSocket; raises PoolFull), its first
        step at once (corral.worker.app.eager): an application that finished in it is done with here, as
        `_instance_done` does for one that ran as a task."""
        task = self.run_instance(cycle, cycle.scope, cycle.receive, cycle.send)
        if task.done() and (type(cycle) is not RequestCycle or cycle.state != COMPLETE):
            self._cycle_done(cycle, task)  # (the check inlined: a call less for a complete response)

    def _instance_done(self, instance: ApplicationInstance, future: asyncio.Future[Any]) -> None:
        super()._instance_done(instance, future)  # frees the slot, reports a failure
        self._cycle_done(instance.scope_id, future)

    @staticmethod
    def _cycle_done(cycle: Any, future: asyncio.Future[Any]) -> None:
        if type(cycle) is RequestCycle:
            if cycle.state != COMPLETE:  # the common case: the response is complete, nothing left to do
                cycle.app_finished(future)
        elif type(cycle) is WebSocketCycle:  # WebSocket hook: close the socket (or answer) for the app
            cycle.app_finished(future)

    @staticmethod
    def _log_failure(exception: BaseException, instance: Any) -> None:
        scope = instance["scope"] if instance is not None else {}
        error_logger.error(
            "Exception in ASGI application (%s)",
            describe_scope(scope),
            exc_info=(type(exception), exception, exception.__traceback__),
        )

    # ------------------------------------------------------------------ bookkeeping

    def connection_closed(self, protocol: Connection) -> None:
        self.connections.discard(protocol)
        drained = self._drained
        if drained is not None and not self.connections and not drained.done():
            drained.set_result(None)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests_served,
            "connections": len(self.connections),
            "instances": len(self.application_instances),
            "max_applications": self.max_applications,
            "parked": len(self.parked),
            "accepting": bool(self._servers),
            "stopping": self.stopping,
            "draining": self.draining,
            "websockets": len(self.websockets.sockets) if self.websockets is not None else 0,  # WebSocket hook
            "lag": self.loop_lag,
        }

    async def _ticker(self) -> None:
        settings = self.settings
        interval = self.tick_interval
        # A phase stamped at tick n began no later than tick n's time: waiting timeout/interval + 1 ticks
        # guarantees the full timeout (and at most one interval more).
        head_ticks = math.ceil(settings.header_timeout / interval) + 1
        idle_ticks = math.ceil(settings.keepalive / interval) + 1
        body_ticks = math.ceil(settings.body_timeout / interval) + 1
        refresh = self.default_headers.refresh
        deadline = self.wsgi.deadline if self.wsgi is not None else None
        rates = self.rates
        trimmer = Trimmer()
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self.tick = tick = self.tick + 1
            self.default_header_bytes = refresh()
            if self.wsgi is not None:
                if self.wsgi.lazy:
                    self.wsgi.drain_lazy()  # WSGI responses written by their threads on quiet connections
                self.wsgi.threads.nudge()  # WSGI requests queued behind slow ones
            if deadline is not None:
                deadline.sweep(self.application_instances)  # WSGI requests past --request-timeout
            if rates is not None:
                # A full pool (requests parked, accepting stopped) cuts the grace short (corral.worker.edge.datarate).
                rates.begin(loop.time(), self.pool_full or bool(self.parked))
            for protocol in tuple(self.connections):
                phase = protocol.phase
                if (
                    rates is not None
                    and isinstance(protocol, HttpProtocol)
                    and (phase == BUSY or phase == CLOSED or protocol.flow.write_paused or protocol.rate is not None)
                ):
                    rates.check(protocol)  # (HTTP/2 connections are not timed)
                    phase = protocol.phase  # CLOSED if it ended a transfer
                if phase == HEAD or phase == FRESH:
                    if tick - protocol.since >= head_ticks:
                        protocol.header_timeout()
                elif phase == IDLE:
                    if tick - protocol.since >= idle_ticks:
                        protocol.close()
                    elif tick - protocol.since >= 2 and protocol.state is not None:
                        # Idle a whole tick with a parser of its own (HttpProtocol.shelve).
                        shelve = getattr(protocol, "shelve", None)
                        if shelve is not None:
                            shelve()
                elif phase == BUSY:
                    request = protocol.state.request
                    if request is None:
                        continue  # no body being read: the application's time, not the client's
                    if protocol.flow.read_paused or getattr(request, "expect_continue", False):
                        # Not reading (the application lags, or a pipelined request waits), or the client
                        # waits for its 100 Continue: the client is not stalling, the timer restarts.
                        protocol.since = tick
                    elif tick - protocol.since >= body_ticks:
                        protocol.body_timeout()
            if rates is not None:
                rates.report()
            if trimmer.due(len(self.connections)) and not self.stopping:
                # Many connections are gone (corral.worker.serve.trim): the spare parser states made for them
                # go (made in the same wave, they would keep its pages in use), a set never shrinks its table,
                # so it is made again at its size (the stop's drain holds the set: not while stopping), then
                # the free memory goes back to the system.
                spares = self.spare_states
                while spares:
                    spares.pop().release()
                self.connections = set(self.connections)
                trimmer.give_back()

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            notify = self.notify
            if notify is not None:
                try:
                    notify()
                except Exception:
                    logger.exception("Heartbeat notify() failed")
            interval = self.heartbeat_interval
            before = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag = max(0.0, loop.time() - before - interval)
