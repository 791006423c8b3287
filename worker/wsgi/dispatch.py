"""The worker's WSGI hand-offs (`WsgiDispatcher`): requests to the pool's threads (or, with --threads 1, to
the event loop's own thread), their finished output back to the loop, in batches."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import CLOSED
from corral.worker.wsgi.call import WsgiCall
from corral.worker.wsgi.inline import InlineRunner
from corral.worker.wsgi.threads import WorkerThreads

if TYPE_CHECKING:
    from corral.worker.wsgi.cycle import WsgiCycle

__all__ = ["WsgiDispatcher"]

error_logger = logging.getLogger("corral.error")

_CLOSED = CLOSED
# The alternatives bench/wsgi_dispatch.py measures against the pool (not a setting: see docs/benchmarks.md,
# "How a request reaches its thread", for the figures): "inline" runs the application on the event loop,
# "connection" gives each connection a thread of its own (gunicorn gthread's model).
_DISPATCH = os.environ.get("BENCH_WSGI_DISPATCH", "pool")


class WsgiDispatcher:
    """The worker's WSGI hand-offs: requests to the threads, finished output back to the loop.

    Threads `post()` requests that have output; the loop is woken once per batch (`call_soon_threadsafe`
    only when the batch was empty), then `drain()` writes every posted request's output.
    """

    __slots__ = (
        "app",
        "loop",
        "threads",
        "lock",
        "items",
        "scheduled",
        "body_buffer",
        "per_connection",
        "lazy",
        "body_input",
        "deadline",
        "hooks",
        "inline",
        "direct",
        "prototype",
    )

    def __init__(self, app: Any, threads: WorkerThreads, body_buffer: int) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads = threads
        self.lock = threading.Lock()
        self.items: list[WsgiCycle] = []
        self.scheduled = False
        self.body_buffer = body_buffer
        self.per_connection: Any = None
        self.lazy: list[WsgiCycle] = []  # responses written by their thread, to complete on the loop
        # --request-timeout and the pre_request/post_request hooks (corral.worker.wsgi.layers): None when off.
        self.deadline: Any = None
        self.hooks: Any = None
        self.body_input: Any = io.BytesIO  # wsgi.input of a pre-read body (one that can expire under a deadline)
        # --threads 1 (without --request-timeout): requests run on the loop's thread when they can (see
        # corral.worker.wsgi.inline); None otherwise.
        self.inline: InlineRunner | None = None
        # With `inline`: reads that are one ordinary request are served from the read (corral.worker.wsgi.direct).
        self.direct = False
        # The request new ones are copied from (corral.worker.wsgi.cycle.new_wsgi_cycle); set by wsgi_setup.
        self.prototype: WsgiCycle | None = None

    def submit(self, cycle: WsgiCycle) -> None:
        if _DISPATCH != "pool":
            self._submit_alternative(cycle)
            return
        self.threads.submit(cycle)

    def _submit_alternative(self, cycle: WsgiCycle) -> None:
        if _DISPATCH == "inline":
            cycle.run()
            return
        if self.per_connection is None:
            self.per_connection = weakref.WeakKeyDictionary()
        threads = self.per_connection.get(cycle.protocol)
        if threads is None:
            threads = self.per_connection[cycle.protocol] = WorkerThreads(1)
            weakref.finalize(cycle.protocol, threads.close)
        threads.submit(cycle)

    def post(self, cycle: WsgiCall) -> None:  # any thread
        with self.lock:
            self.items.append(cycle)  # type: ignore[arg-type]  # a WsgiCall here is always this module's WsgiCycle
            wake = not self.scheduled
            self.scheduled = True
        if wake:
            try:
                self.loop.call_soon_threadsafe(self.drain)  # type: ignore[union-attr]  # set when the server starts, before any request
            except RuntimeError:
                pass  # the loop is closed: the worker is gone

    def complete_later(self, cycle: WsgiCall) -> None:  # a pool thread, after writing the response itself
        with self.lock:
            self.lazy.append(cycle)  # type: ignore[arg-type]  # a WsgiCall here is always this module's WsgiCycle
        # The loop completes it at its next wake-up (the next request's bytes, at the latest the tick).
        # Wake it now when something waits for this completion: a pipelined request (the protocol looks
        # at `lazy` after queueing one: one of the two sides sees the other), a parked one, a closed
        # connection, a stopping server, an error response waiting behind this one.
        protocol = cycle.protocol
        state = protocol.state
        server = protocol.server
        if (
            (state is not None and state.pipeline)
            or server.parked
            or server.stopping
            or protocol.phase == _CLOSED
            or protocol.pending_error is not None
        ):
            with self.lock:
                wake = not self.scheduled
                self.scheduled = True
            if wake:
                try:
                    self.loop.call_soon_threadsafe(self.drain)  # type: ignore[union-attr]  # set when the server starts, before any request
                except RuntimeError:
                    pass

    def client_wait(self) -> Any:
        """A context around a pool thread's wait on its client (WorkerThreads.client_wait)."""
        return self.threads.client_wait()

    def drain_lazy(self) -> None:
        with self.lock:
            lazy, self.lazy = self.lazy, []
        for cycle in lazy:
            cycle.complete_written()

    def drain(self) -> None:
        if self.lazy:
            self.drain_lazy()
        with self.lock:
            items, self.items = self.items, []
            self.scheduled = False
        for cycle in items:
            try:
                cycle.flush()
            except Exception:
                error_logger.exception("Error while writing a WSGI response")
                cycle.abandon()
