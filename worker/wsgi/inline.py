"""`--threads 1`: the WSGI application called on the worker's own thread, as gunicorn's sync worker calls it.

With one pool thread there is no concurrency to gain from a hand-off, only its cost: waking the thread, the
GIL passing to it and back, the loop woken to complete the response (bench/wsgi_dispatch.py). So a request
whose body is read whole (`--wsgi-body-buffer`, nearly every request) is run on the event loop's thread once
the read that completed it is parsed: the environ, the call, the framing and the write, one after the other.

What that means, as on gunicorn's sync worker: while the application runs, the worker does nothing else - no
other connection is read or answered, no timer fires. A slow application holds up the worker's other
clients, and one that runs past the worker's watchdog (`--timeout`) has its worker replaced. `--request-timeout`
needs the loop to keep running, so with it the pool thread runs requests as before.

The event loop is hidden from the application while it runs (`asyncio.get_running_loop()` raises, as on a
pool thread): Django's ORM refuses to run where a loop runs (`SynchronousOnlyOperation`), and asgiref's
`async_to_sync` starts a loop of its own. Requests the loop's thread does not take go to the pool's one thread,
and while that thread is busy every request goes there, in order, so that one application call runs at a
time: a request with a body above `--wsgi-body-buffer` (the application reads it as it comes), and the body
of a response the application streams (any iterable but a list, a tuple or Django's in-memory response: the
loop cannot wait for a slow client), which the thread iterates once the call has returned.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import select
import socket
import time
from collections import deque
from typing import Any

from corral.worker.wsgi.call import FAILED

__all__ = ["InlineRunner", "StreamRest"]

error_logger = logging.getLogger("corral.error")

_set_running_loop = asyncio.events._set_running_loop
_clock = time.perf_counter

#: Seconds of application calls after which a turn of the event loop looks whether new connections wait to be
#: accepted, and if so ends, to let the loop poll (and accept) before the rest of its queue runs. The loop
#: accepts one new connection per turn (libuv accepts one per wake-up of the listening socket, to share it
#: fairly between processes): a worker that ran every queued request in one turn accepted one connection per
#: batch, and a burst of new connections to a worker running a slow view waited a whole batch each (a Django
#: view, wrk opening 64 connections at once on `--threads 1`: the slowest request of a 3 s run 1.4-1.6 s;
#: 0.25-0.37 s when a turn ends for them, the same requests/s). Ending every turn
#: at the budget instead cost that view 6-13 % of its requests/s (smaller batches, the view's code and data
#: evicted from the caches between them): the turn goes on while no connection waits (one `poll` system call
#: per budget spent).
TURN_BUDGET = 0.002
_get_running_loop = asyncio.events._get_running_loop


class InlineRunner:
    """The requests a native WSGI worker with one thread runs on its event loop's thread, in order.

    A request is queued (`queue`) when its body is complete. The queue is run (`run`) at the end of the turn
    of the event loop that began its requests (`WorkerServer.begin_soon`: every read of the turn parsed
    first, the responses written together), or from a loop callback for a request that became ready
    elsewhere (its body's last bytes, parsed in a later read; a parked request given a slot)."""

    __slots__ = ("loop", "threads", "ready", "batching", "scheduled", "listening")

    def __init__(self, threads: Any) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        # The worker's listening sockets (`watch`), polled once a turn has spent TURN_BUDGET: None, not known.
        self.listening: select.poll | None = None
        self.threads = threads  # the pool's WorkerThreads (one thread): requests go there while it is busy
        self.ready: deque[Any] = deque()
        self.batching = False  # the server is beginning a turn's requests: it runs the queue after them
        self.scheduled = False

    def watch(self, sockets: list[socket.socket]) -> None:
        """The listening sockets whose waiting connections end a long turn (see TURN_BUDGET)."""
        listening = select.poll()
        for sock in sockets:
            listening.register(sock.fileno(), select.POLLIN)
        self.listening = listening

    def turn_over(self) -> bool:
        """A turn has run TURN_BUDGET of calls: whether it should end now, a connection waiting to be accepted
        (or the sockets not known). A listening socket that cannot be polled (closed at the stop) ends it."""
        listening = self.listening
        if listening is None:
            return True
        try:
            return bool(listening.poll(0))
        except OSError:
            return True

    def queue(self, cycle: Any) -> None:
        # (corral.worker.wsgi.direct.serve_read has these lines inlined: keep the two alike)
        self.ready.append(cycle)
        if not self.batching and not self.scheduled and self.loop is not None:
            self.scheduled = True
            self.loop.call_soon(self.run_scheduled)

    def run_scheduled(self) -> None:
        """`run`, from the loop callback `queue` (or a turn that spent its budget) scheduled."""
        self.scheduled = False
        self.run()

    def run(self) -> None:
        """Call the queued requests' applications one after the other with the loop hidden, then write their
        responses with it shown. The loop is hidden once for the batch of calls, not around each: on Python
        3.11 each change of the running loop costs a getpid() system call (2 a request: about 0.5 µs of a 14 µs
        request, bench cost pinned). What follows the calls (writing, completing, beginning a pipelined
        request, a health probe, a file's transfer) runs with the loop shown, as anywhere else. While the pool's
        thread runs a request (a large upload, a streamed body), the batch goes to that thread instead, in
        order: one application call at a time. Once the turn's calls have run TURN_BUDGET, a connection waiting
        to be accepted ends the turn (the budget is looked at between calls); the rest run in the next one."""
        if self.scheduled:
            # A run is scheduled (a turn that spent its budget left the rest to it): the queue waits for it, so
            # that a turn's calls stay within one budget however many times it is asked to run.
            return
        ready = self.ready
        loop = self.loop or _get_running_loop()
        threads = self.threads
        deadline = 0.0  # set by the turn's first batch: a lone request (a worker not under load) reads no clock
        while ready:  # (a response completed below may queue the next request: it runs in the next batch)
            if threads.jobs or len(threads.idle) != len(threads.threads):  # (WorkerThreads.all_idle, inlined)
                while ready:
                    ready.popleft().to_pool()
                return
            if len(ready) == 1:
                # Alone in its turn (a worker not under load): no batch to make (its lists cost a lone request
                # about 5,000 instructions, the guard says).
                cycle = ready.popleft()
                _set_running_loop(None)
                try:
                    context = cycle.call_here()
                finally:
                    _set_running_loop(loop)
                try:
                    cycle.complete_here(context)
                except Exception:  # (as below)
                    error_logger.exception("WSGI request failed in the server")
                    cycle.abandon()
            else:
                # A batch: its calls until the turn's budget is spent, then their responses.
                if not deadline:
                    deadline = _clock() + TURN_BUDGET
                batch = []
                contexts = []
                _set_running_loop(None)
                try:
                    while ready:
                        cycle = ready.popleft()
                        batch.append(cycle)
                        contexts.append(cycle.call_here())
                        if _clock() > deadline:
                            if self.turn_over():
                                break
                            deadline = _clock() + TURN_BUDGET  # nobody waits: the batch goes on
                finally:
                    _set_running_loop(loop)
                for cycle, context in zip(batch, contexts):
                    try:
                        cycle.complete_here(context)
                    except Exception:  # a bug of ours: this request's connection closes, the others are answered
                        error_logger.exception("WSGI request failed in the server")
                        cycle.abandon()
            if ready and loop is not None:
                if not deadline:
                    deadline = _clock() + TURN_BUDGET
                elif _clock() > deadline:
                    if self.turn_over():
                        # The rest in the loop's next turn, after it has polled (and accepted), first in line.
                        if not self.scheduled:  # (a completion above may have queued a request: scheduled)
                            self.scheduled = True
                            loop.call_soon(self.run_scheduled)
                        return
                    deadline = _clock() + TURN_BUDGET


class StreamRest:
    """The pool job that iterates a streamed body after an application call on the loop's thread
    (`WsgiCycle.complete_here`), in the context that call ran in."""

    __slots__ = ("cycle", "context")

    def __init__(self, cycle: Any, context: contextvars.Context) -> None:
        self.cycle = cycle
        self.context = context

    def run(self) -> None:
        try:
            self.context.run(self.cycle.stream_rest)
        except BaseException:
            error_logger.exception("WSGI request failed in the server")
            self.cycle._post(FAILED)

    def cancel(self) -> bool:
        return self.cycle.cancel()
