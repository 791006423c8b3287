"""What a connection's protocol needs from the server that made it (`serve.server.WorkerServer`).

The HTTP/1.1 protocol, and the HTTP/2, WebSocket and WSGI ones built on it, reach the server as
`protocol.server`: for the values it decided once (limits, the default headers, whether a full pool answers
503), for the pool (`run_request`, `start_instance`), the per-worker counters and the access log, and for the
bookkeeping of connections (parked requests, connections closed, the stop). `Host` is that contract, so the
protocols are typed against it rather than against the server class (which is above them) or `Any`. Typing
only: nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from corral.shared.settings import Settings
    from corral.worker.app.pool import ApplicationInstance, Receive, Scope, Send
    from corral.worker.conn.phases import Phase
    from corral.worker.edge.accesslog import AccessLog
    from corral.worker.edge.counters import Counters
    from corral.worker.http1.limits import Limits
    from corral.worker.http1.protocol import HttpProtocol

__all__ = ["Connection", "Host", "Logged", "Parked"]


class Parked(Protocol):
    """A request waiting for a pool slot (an HTTP/1.1 request cycle, an HTTP/2 stream)."""

    disconnected: bool


class Logged(Protocol):
    """What the access log reads of a finished request (an HTTP/1.1 request cycle, an HTTP/2 stream)."""

    scope: dict[str, Any]
    status: int
    nbytes: int
    headers: Any  # the response headers as the application sent them
    t0: float | None


class Connection(Protocol):
    """What the server does with a connection's protocol (HTTP/1.1 and what builds on it, HTTP/2): its tick
    reads the phase and the clock, closes or times out an idle or stalled one; a freed slot unparks."""

    phase: Phase
    since: int
    transport: Any
    flow: Any  # conn.flow.FlowControl, once connected
    state: Any  # the sans-I/O connection (http1.connection.HTTP11Connection), or the H2Protocol itself

    def close(self) -> None: ...

    def header_timeout(self) -> None: ...

    def body_timeout(self) -> None: ...

    def unpark(self, request: Any) -> None: ...


class Host(Protocol):
    # Decided once, read per connection or per request.
    settings: Settings
    limits: Limits
    root_path: str
    reject_when_full: bool
    write_limit: int
    default_header_bytes: bytes  # refreshed by the tick, once a second
    tick: int
    ssl_context: ssl.SSLContext | None
    server_cert_pem: str | None
    socknames: dict[Any, tuple[Any, ...]]
    proxy: Any  # ProxyHeaders, or what a test hands in: anything with apply(scope)
    proxy_trust: Any  # for the PROXY protocol: ProxyHeaders.trusts, when --proxy-protocol is on
    lifespan_state: dict[str, Any]
    loop: asyncio.AbstractEventLoop | None
    # The pool (app.pool.StatelessServer) and what it counts. `_max_applications`: the limit itself, for hot paths
    # (`max_applications` is a property: a Python call on 3.11, ~480 instructions).
    max_applications: int
    _max_applications: int
    application_instances: OrderedDict[Hashable, ApplicationInstance]
    counters: Counters
    access_log: AccessLog | None
    requests_served: int
    # Connections and the stop.
    connections: set[Connection]
    parked: deque[tuple[Connection, Parked, float]]
    stopping: bool
    draining: bool
    # The rooms above HTTP/1.1 (made on first use): websocket.protocol.WebSocketHub, wsgi.dispatch.WsgiDispatcher
    # and the template of its environs.
    websockets: Any
    wsgi: Any
    wsgi_environ: dict[str, Any] | None  # the environ every native WSGI request starts from (a copy)
    protocol_class: type[HttpProtocol]
    # What requests are made from and with, kept between them.
    scope_template: dict[str, Any]  # copied by every HTTP/1.1 request's scope
    client_hosts: dict[str, str]  # clients' address strings, shared by their connections
    spare_states: deque[Any]  # HTTP/1.1 parser states of no connection (idle connections hold none)
    direct_reads: bool  # reads of one ordinary request are made into requests in one step (http1.direct)

    def begin_soon(self, protocol: HttpProtocol) -> None:
        """Begin `protocol`'s ready request at the end of this turn of the event loop."""

    def run_request(self, cycle: Any) -> None:
        """Start the application of `cycle`, its first step at once (raises PoolFull)."""

    def start_instance(self, scope_id: Hashable, scope: Scope, receive: Receive, send: Send) -> asyncio.Task[Any]:
        """A new application instance for the request, as a task in the pool (raises PoolFull when it is full)."""

    def park(self, protocol: Connection, request: Parked) -> None:
        """Hold a request the full pool cannot take until an instance ends."""

    def connection_closed(self, protocol: Connection) -> None:
        """The connection is gone: forget it (and what it parked)."""

    def connection_while_stopping(self, protocol: HttpProtocol) -> None:
        """A connection made while the server stops: close it once it is idle."""
