"""`--threads 1`: a read that is one ordinary request, run from the read itself.

When the application runs on the loop's thread (`--threads 1`, corral.worker.wsgi.inline) and a read is one
ordinary request on an idle connection, its `WsgiCycle` is made straight from the compiled parser's result
(`corral.worker.http1.direct.read_request`) and queued to run at the end of the turn with the turn's other
requests (`InlineRunner.queue`), skipping the way a request is otherwise begun (the server's turn, the pool's
checks, `WsgiCycle.start`). From the application's call on it is the same either way (`WsgiCycle.call_here`,
`complete_here`).

What stays the general way, besides what `read_request` leaves to it: a body larger than
`--wsgi-body-buffer` (the application reads it as it comes, on the pool's thread), a request that finds the
pool's thread busy (requests then queue to it in order) or the pool full or requests parked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.worker.http1.direct import available, read_request
from corral.worker.wsgi.call import ON_LOOP

if TYPE_CHECKING:
    from corral.worker.wsgi.protocol import WsgiHttpProtocol

__all__ = ["serve_read", "available"]


def serve_read(protocol: WsgiHttpProtocol, data: bytes) -> bool:
    """Queue `data`'s request to run on the loop's thread if it is one ordinary request on an idle connection
    (see the module's docstring); False, with nothing done, when it must go the general way."""
    server = protocol.server
    wsgi = server.wsgi
    threads = wsgi.threads
    if threads.jobs or len(threads.idle) != len(threads.threads):  # (WorkerThreads.all_idle, inlined)
        return False  # the pool's thread runs a request: this one goes after it, in order
    if server.parked or len(server.application_instances) >= server._max_applications:  # (the property's value)
        return False
    # Made without its scope: the environ comes from the parser's tuple (WsgiCall._run), the scope only if asked
    # for (WsgiCycle.scope).
    cycle = read_request(protocol, data, wsgi.body_buffer, True)
    if cycle is None:
        return False
    size = protocol.state.body_size  # (read_request gave the connection a state)
    cycle.body_complete = True
    cycle.phase = ON_LOOP
    cycle.input = wsgi.body_input(data[len(data) - size :] if size else b"")
    cycle.posted = True  # a write() of the application posts nothing: the loop writes once the call returns
    # Run at the end of this turn of the event loop, with the other requests read in it (InlineRunner.queue):
    # responses written together wake the client about once (see WorkerServer.begin_soon). Run here at once,
    # reads and writes alternate: 6 % more CPU a request, most of it the kernel's (bench cost, pinned).
    inline = wsgi.inline
    # (InlineRunner.queue, inlined: every request a read brings comes here)
    inline.ready.append(cycle)
    if not inline.batching and not inline.scheduled and inline.loop is not None:
        inline.scheduled = True
        inline.loop.call_soon(inline.run_scheduled)
    return True
