"""The HTTP/1.1 protocol of a worker serving a WSGI application natively (see `corral.worker.wsgi.cycle`).

Everything but the request object is `HttpProtocol`'s: parsing, proxy headers, keep-alive, pipelining,
parking when the pool is full, timeouts. Requests are `WsgiCycle`s, started by `WsgiCycle.start()`
instead of as an ASGI task.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from corral.shared.wsgi_environ import environ_template
from corral.worker.app.pool import PoolFull
from corral.worker.http1.host import Host
from corral.worker.http1.protocol import HttpProtocol
from corral.worker.wsgi.cycle import WsgiCycle, copies_requests, cycle_prototype, new_wsgi_cycle
from corral.worker.wsgi.direct import available, serve_read
from corral.worker.wsgi.dispatch import WsgiDispatcher
from corral.worker.wsgi.filesend import FileWrapper
from corral.worker.wsgi.inline import InlineRunner
from corral.worker.wsgi.input import ExpiringInput
from corral.worker.wsgi.layers import HookedWsgiCycle, WsgiLayers
from corral.worker.wsgi.threads import WorkerThreads

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = ["WsgiHttpProtocol", "HookedWsgiHttpProtocol", "wsgi_setup"]

_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
    b"content-length: 19\r\nconnection: close\r\n\r\nService Unavailable"
)


class WsgiHttpProtocol(HttpProtocol):
    # out_fd: a dup of the connection's socket, for the pool threads' direct writes (WsgiCall._write_direct);
    # it is closed once the connection is lost and no request of it is on a thread (out_busy).
    __slots__ = ("out_fd", "out_busy")

    # Requests are copies of the server's prototype where the compiled module is there and can copy the class
    # (new_wsgi_cycle: what differs set on a copy, not every slot by __init__), else made by their class.
    cycle_class: Any = staticmethod(new_wsgi_cycle) if copies_requests() else WsgiCycle

    def __init__(self, server: Host, sockname: tuple[Any, ...] | None = None) -> None:
        super().__init__(server, sockname)
        self.out_fd = -1
        self.out_busy = False

    def data_received(self, data: bytes) -> None:
        wsgi = self.server.wsgi
        if wsgi.direct and serve_read(self, data):
            return  # one ordinary request, served from the read (corral.worker.wsgi.direct)
        if wsgi.lazy:
            wsgi.drain_lazy()  # responses written by threads since: the next request is not pipelined
        super().data_received(data)
        state = self.state
        if wsgi.lazy and state is not None and state.pipeline:
            wsgi.drain_lazy()  # (see WsgiDispatcher.complete_later)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.out_busy:
            self.close_out_fd()

    def shelve(self) -> None:
        """HttpProtocol's, and the socket's dup goes too (a descriptor per idle connection): the next request
        that runs on a pool thread makes another."""
        super().shelve()
        if self.state is None and not self.out_busy:
            self.close_out_fd()

    def close_out_fd(self) -> None:
        fd, self.out_fd = self.out_fd, -1
        if fd >= 0:
            os.close(fd)

    def output_waiting(self) -> bool:
        """HttpProtocol's, and a file response whose `sendfile` waits for the socket to drain."""
        if HttpProtocol.output_waiting(self):
            return True
        state = self.state
        sendfile = getattr(state.active, "sendfile", None) if state is not None else None
        return sendfile is not None and len(sendfile) == 6 and sendfile[5]

    def park(self, cycle: Any) -> None:
        super().park(cycle)
        wsgi = self.server.wsgi
        if wsgi.lazy:
            wsgi.drain_lazy()  # a response written meanwhile frees a slot: the parked request starts

    def begin_request(self, cycle: WsgiCycle) -> None:  # type: ignore[override]  # its requests are WsgiCycles (its cycle_class)
        # HttpProtocol.begin_request with cycle.start() for run_request: written out, not through launch(),
        # for a call less per request.
        server = self.server
        if server.parked and not server.reject_when_full:
            self.park(cycle)  # requests parked earlier go first
            return
        try:
            cycle.start()
        except PoolFull:
            self.pool_full(cycle)

    def launch(self, cycle: WsgiCycle) -> None:  # type: ignore[override]  # its requests are WsgiCycles (its cycle_class)
        try:
            cycle.start()
        except PoolFull:
            self.pool_full(cycle)

    def pool_full(self, cycle: WsgiCycle) -> None:  # type: ignore[override]  # its requests are WsgiCycles (its cycle_class)
        server = self.server
        if server.reject_when_full:
            # pool_full = '503': answered at once, outside the pool (the ASGI path's 503 keeps the
            # connection; here the request body is unread, so the connection closes).
            server.counters.rejected += 1
            self.transport.write(_BUSY_RESPONSE)
            self.close()
        else:
            self.park(cycle)


class HookedWsgiHttpProtocol(WsgiHttpProtocol):
    """With pre_request/post_request set: requests run the hooks on their thread (corral.worker.wsgi.layers)."""

    __slots__ = ()

    cycle_class = HookedWsgiCycle


def wsgi_setup(server: Host, app: Any, settings: Settings, layers: WsgiLayers | None = None) -> None:
    """Make `server` (a WorkerServer) serve `app` as a native WSGI application on `settings.threads`
    threads of its own; `layers`: --request-timeout and the request hooks, when set."""
    wsgi = server.wsgi = WsgiDispatcher(app, WorkerThreads(settings.threads), settings.wsgi_body_buffer)
    wsgi.prototype = cycle_prototype(wsgi)
    if settings.threads == 1 and (layers is None or layers.deadline is None):
        wsgi.inline = InlineRunner(wsgi.threads)  # the application on the loop's thread, as gunicorn's sync worker
        # Reads that are one ordinary request served from the read, where no request object of another kind is
        # wanted: the health path's (its protocol's on_request) and the hooks' (HookedWsgiCycle).
        wsgi.direct = available() and not settings.health_path and (layers is None or layers.hooks is None)
    # Every request's environ is a copy of this template (its server-wide keys, wsgi.file_wrapper among them).
    server.wsgi_environ = environ_template(settings.root_path, {"wsgi.file_wrapper": FileWrapper})
    server.protocol_class = WsgiHttpProtocol
    if layers is not None:
        if layers.deadline is not None:
            wsgi.deadline = layers.deadline
            layers.deadline.pool = wsgi.threads
            wsgi.body_input = ExpiringInput  # a pre-read body's reads raise once the request expires
        if layers.hooks is not None:
            wsgi.hooks = layers.hooks
            server.protocol_class = HookedWsgiHttpProtocol
