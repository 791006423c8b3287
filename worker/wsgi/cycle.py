"""One native WSGI request on the event loop: the parser feeds it, the pool runs it, the loop writes it.

`WsgiCycle` stands where `RequestCycle` stands for ASGI (`HTTP11Connection` feeds it body bytes, the
protocol starts, parks and completes it) but calls the WSGI application directly, on a thread of the
worker's pool, without the ASGI adapter: no scope -> messages -> environ round trip, one hand-off each way.

Request bodies: a body up to `wsgi_body_buffer` bytes is read whole on the event loop before
the application is given a thread, as a buffering proxy would (nginx does the same in front of gunicorn):
a client that stalls mid-upload holds an instance slot, never a thread. A larger body is streamed
(`corral.worker.wsgi.input.StreamInput`) once that many bytes have come. `Expect: 100-continue` is answered
when the pre-read begins (the server itself wants the body then); for a declared length above the bound
it is answered on the application's first `wsgi.input` read, so an application that refuses a big
upload never makes the client send it.

Each request is an application instance of the worker's pool (`StatelessServer`): registered with an
asyncio future when it starts (a full pool parks it: backpressure as for ASGI), resolved when its
response is complete.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import threading
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from corral.worker.app.pool import ApplicationInstance
from corral.worker.conn.phases import BODY, CLOSED
from corral.worker.edge.deadline import TIMEOUT_BODY
from corral.worker.http1.connection import CONTINUE_RESPONSE, ERROR_RESPONSES, response_head
from corral.worker.http1.cycle import cork
from corral.worker.http1.direct import scope_of
from corral.worker.http1.native import clone_request
from corral.worker.http1.protocol import HttpProtocol
from corral.worker.wsgi.call import DONE, FAILED, ON_LOOP, RUNNING, SENDFILE, STREAM, WsgiCall
from corral.worker.wsgi.filesend import FileSending
from corral.worker.wsgi.inline import StreamRest
from corral.worker.wsgi.input import StreamInput

if TYPE_CHECKING:
    from corral.worker.wsgi.dispatch import WsgiDispatcher

__all__ = ["WsgiCycle", "copies_requests", "cycle_prototype", "new_wsgi_cycle"]

error_logger = logging.getLogger("corral.error")

_CLOSED = CLOSED

# Loop-side phases. _EXPIRED: past --request-timeout, answered (or cut) while the thread still runs. ON_LOOP:
# queued for, or running on, the event loop's thread (--threads 1, corral.worker.wsgi.inline).
_WAITING, _QUEUED, _DONE, _EXPIRED = 0, 1, 2, 3
_TIMEOUT_HEADERS = ((b"content-type", b"text/plain; charset=utf-8"),)


class WsgiCycle(FileSending, WsgiCall):
    outbox: WsgiDispatcher  # the thread side sees it as an Outbox; the loop side uses all of it
    __slots__ = (
        # shared with the parser and the protocol (RequestCycle's names; the scope is `scope`, below)
        "protocol", "_scope", "parsed", "keep_alive", "expect_continue", "is_head", "http11", "body_complete",
        "disconnected", "state", "t0", "status", "headers", "nbytes",
        # the request body
        "body", "body_size", "input", "phase",
        # the response, written by the thread (see WsgiCall)
        "app", "outbox", "head_sent", "mode", "remaining", "chunks", "pending", "outcome", "aborted",
        "posted", "cond", "sendfile", "result", "instance_future", "instance", "__weakref__",
        # set only by `expire` (unset otherwise: no cost per request): True once answered 504, False if cut
        "timed_out",
    )  # fmt: skip

    def __init__(
        self,
        protocol: HttpProtocol,
        scope: dict,
        keep_alive: bool,
        expect_continue: bool,
        is_head: bool,
        http11: bool,
        timed: bool,
    ) -> None:
        self.protocol = protocol
        self._scope: dict | None = scope
        # A request made from the read (corral.worker.wsgi.direct): the compiled parser's tuple, its scope made
        # only when something asks for it (`scope`).
        self.parsed: tuple | None = None
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.is_head = is_head
        self.http11 = http11
        self.body_complete = False
        self.disconnected = False
        self.state = 0  # RequestCycle's: 0 before the head is out, 2 after, 3 complete (protocol_error reads it)
        self.t0 = time.perf_counter() if timed else None
        self.status = 0
        self.headers: Any = ()
        self.nbytes = 0
        self.body: list[bytes] | None = None
        self.body_size = 0
        self.input: Any = None
        self.phase = _WAITING
        dispatcher = protocol.server.wsgi
        self.app = dispatcher.app
        self.outbox = dispatcher
        self.head_sent = False
        self.mode = 0
        self.remaining = 0
        self.chunks: list[bytes] = []
        self.pending = 0
        self.outcome = RUNNING
        self.aborted = False
        self.posted = False
        self.cond: threading.Condition | None = None
        self.sendfile: tuple | None = None
        self.result: Any = None
        self.instance_future: asyncio.Future[None] | None = None
        self.instance: ApplicationInstance | None = None

    @property
    def scope(self) -> dict:
        """The request's ASGI scope (what the access log, the error log and the pool read). A request made from
        the read with its environ made from the parser's tuple (corral.worker.wsgi.direct) gets it here, the first
        time it is asked for: most never are (about 5 % of a --threads 1 hello-world's instructions)."""
        scope = self._scope
        if scope is None:
            scope = self._scope = scope_of(self.protocol, self.parsed)  # type: ignore[arg-type]  # parsed: set when _scope is not
        return scope

    # ------------------------------------------------------------------ the pool

    def start(self) -> None:
        """Take a pool slot (raises PoolFull) and run the application once the body allows."""
        server = self.protocol.server
        instances = server.application_instances
        if len(instances) >= server._max_applications:  # (the property's value: a property is a Python call)
            server._make_room()  # raises PoolFull (the server backpressures)
        if self.body_complete and self.outbox.inline is not None and self._on_loop():
            return  # runs on the loop's thread once the read is parsed: done before anything else, no slot taken
        self._take_slot(server)
        if self.body_complete:
            self._queue()
            return
        if self.expect_continue:
            self.expect_continue = False
            if self._declared_length() > self.outbox.body_buffer:
                self._stream(first_read=self._send_continue)  # the application decides (first read)
                return
            self.protocol.transport.write(CONTINUE_RESPONSE)  # the pre-read begins: the server wants it
        if self.body_size > self.outbox.body_buffer:
            self._stream()

    def _take_slot(self, server: Any) -> None:
        instances = server.application_instances
        loop = server.loop or asyncio.get_running_loop()  # (the latter costs a getpid() system call)
        future = self.instance_future = loop.create_future()
        # No done-callback on the future: `_resolve` releases the slot at once (a callback would cost a
        # loop iteration per request). A future cancelled by the server's shutdown is released there too.
        scope = self._scope  # (the slot first: the property costs a Python call)
        if scope is None:
            scope = self.scope
        instance = self.instance = ApplicationInstance(server, self, scope, None, future, time.monotonic())
        instances[self] = instance
        if len(instances) >= server._max_applications:
            server._full = True

    def _declared_length(self) -> int:
        for name, value in self.scope["headers"]:
            if name == b"content-length":
                return int(value)
        return -1  # chunked: pre-read up to the bound like any body

    def _send_continue(self) -> None:
        if not self.disconnected and not self.head_sent and self.phase != _DONE:
            self.protocol.transport.write(CONTINUE_RESPONSE)

    def _queue(self) -> None:
        if self.outbox.inline is not None and self._on_loop():
            return
        self.phase = _QUEUED
        protocol = self.protocol
        protocol.out_busy = True
        if protocol.out_fd < 0 and protocol.phase != _CLOSED:
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    protocol.out_fd = os.dup(sock.fileno())  # for WsgiCall._write_direct; closed with the connection
                except OSError:
                    pass
        if self.input is None:
            body = self.body
            self.input = self.outbox.body_input(
                body[0] if body is not None and len(body) == 1 else b"".join(body or ())
            )
            self.body = None
        self.outbox.submit(self)

    def _on_loop(self) -> bool:
        """--threads 1: queue this request to run on the loop's thread, unless it streams its body or the pool's
        thread is busy (corral.worker.wsgi.inline); False when it goes to the pool."""
        dispatcher = self.outbox
        if self.input is not None or not dispatcher.threads.all_idle():
            return False
        self.phase = ON_LOOP
        body = self.body
        if body is None:
            self.input = dispatcher.body_input(b"")
        else:
            self.input = dispatcher.body_input(body[0] if len(body) == 1 else b"".join(body))
            self.body = None
        self.posted = True  # a write() of the application posts nothing: the loop writes once the call returns
        dispatcher.inline.queue(self)  # type: ignore[union-attr]
        return True

    def call_here(self) -> contextvars.Context:
        """Call the application of a request queued by `_on_loop`, on the loop's thread, in a fresh context (as on
        a pool thread), which it returns. The caller (`InlineRunner.run`) has hidden the loop from it; the
        response is written by `complete_here`, once the loop is shown again."""
        context = contextvars.Context()
        try:
            context.run(self._run)
        except BaseException:  # _run reports the application's errors: this would be a bug of ours
            error_logger.exception("WSGI request failed in the server")
            self._post(FAILED)
        return context

    def complete_here(self, context: contextvars.Context) -> None:
        """After `call_here`: write the response, or hand the body it streams to the pool's thread."""
        self.posted = False
        self.phase = _QUEUED
        outcome = self.outcome
        chunks = self.chunks
        if outcome == DONE and self.keep_alive and len(chunks) == 1 and not self.disconnected:
            # The common case, as `WsgiCall._write_direct` on a pool thread: one buffer, the connection kept.
            protocol = self.protocol
            transport = protocol.transport
            self.state = 2
            transport.write(chunks[0])
            chunks.clear()
            # `_respond_done` and `_resolve`, inlined: every --threads 1 request comes here, and the two calls
            # cost it about 1.5 % of its instructions (the guard).
            self.state = 3
            self.phase = _DONE
            if not transport.is_closing():
                protocol.response_complete(self)
            else:
                protocol.close()
            protocol.out_busy = False
            if protocol.phase == _CLOSED:
                protocol.close_out_fd()
            if self.instance is not None:
                self._release_slot()
            self.input = None
        elif outcome == STREAM:
            # The body goes on on the pool's thread, for as long as the client takes: it holds a slot meanwhile
            # (one over the limit at worst: the call has already run).
            self.outcome = RUNNING
            if self.instance is None:
                self._take_slot(self.protocol.server)
            self.outbox.threads.submit(StreamRest(self, context))
        else:
            self.flush()

    def to_pool(self) -> None:
        """A request queued for the loop's thread whose turn comes while the pool's thread runs another: it goes
        to that thread, after what is there (one application call at a time, corral.worker.wsgi.inline). It
        holds a slot there (one over the limit at worst: it was admitted without one)."""
        self.posted = False
        if self.instance is None:
            self._take_slot(self.protocol.server)
        self._queue()

    def _stream(self, first_read: Any = None) -> None:
        """Hand the application a streaming wsgi.input now (the body exceeds the pre-read bound)."""
        stream = self.input = StreamInput(
            self.outbox.loop or asyncio.get_running_loop(),
            self.outbox.body_buffer,
            self._resume_body,
            first_read,
            self.outbox.client_wait,
        )
        if self.body:
            if stream.feed(b"".join(self.body)):
                self.protocol.flow.pause_reading(BODY)
        self.body = None
        if self.body_complete:
            stream.end()
        self._queue()

    def _resume_body(self) -> None:
        self.protocol.flow.resume_reading(BODY)

    # ------------------------------------------------------------------ fed by the parser / protocol

    def on_body(self, chunk: bytes) -> None:
        stream = self.input
        if stream is not None:
            if stream.feed(chunk) and self.protocol.state.active is self:
                self.protocol.flow.pause_reading(BODY)
            return
        body = self.body
        if body is None:
            body = self.body = []
        body.append(chunk)
        self.body_size += len(chunk)
        if self.body_size > self.outbox.body_buffer:
            if self.instance_future is not None:
                self._stream()
            elif self.protocol.state.active is self:
                self.protocol.flow.pause_reading(BODY)  # parked: read on once it has a slot

    def on_body_complete(self) -> None:
        self.body_complete = True
        if self.input is not None:
            if type(self.input) is StreamInput:
                self.input.end()
        elif self.instance_future is not None and self.phase == _WAITING:
            self._queue()

    def awaits_body(self) -> bool:
        """The application waits for body bytes (the minimum body rate's clock runs): it has its slot and
        waits for the pre-read to finish, or its thread is blocked in a `wsgi.input` read."""
        if self.body_complete or self.instance_future is None:
            return False  # parked: waiting for a slot is the server's doing, not the client's
        stream = self.input
        return stream is None or (type(stream) is StreamInput and stream.waiting)

    def disconnect(self) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        with self.outbox.lock:
            self.aborted = True
            if self.cond is not None:
                self.cond.notify_all()
        if type(self.input) is StreamInput:
            self.input.disconnect()
        sendfile = self.sendfile
        if sendfile is not None and len(sendfile) == 6 and sendfile[5]:
            # A transfer waits for the socket to drain: end it now (its dup would keep the socket open).
            (self.outbox.loop or asyncio.get_running_loop()).call_soon(self._sendfile_step)
        if self.phase == _WAITING and self.instance_future is not None:
            self._complete()  # the application never ran: nothing to wait for

    # ------------------------------------------------------------------ output (the loop's half)

    def flush(self) -> None:
        """Write what the thread posted; finish the request when the thread is done."""
        if self.phase == _DONE:
            return
        protocol = self.protocol
        flow = protocol.flow
        with self.outbox.lock:
            self.posted = False
            outcome = self.outcome
            if self.disconnected:
                chunks = None
            elif flow.write_paused and outcome == RUNNING:
                chunks = None  # the transport is full: take nothing, the thread waits (backpressure)
                flow.add_drain_callback(self._drained)
            else:
                chunks = self.chunks
                self.chunks = []
                self.pending = 0
                if self.cond is not None:
                    self.cond.notify()
        if self.disconnected:
            if outcome != RUNNING:
                self._close_result()
                self._complete()
            return
        transport = protocol.transport
        if outcome == FAILED and not self.head_sent:
            self.status = 500
            self.keep_alive = False
            self.nbytes = 0
            self.headers = ()
            transport.write(ERROR_RESPONSES[500])
            protocol.close()
            self._complete()
            return
        if chunks:
            self.state = 2
            if (
                outcome != RUNNING
                and outcome != SENDFILE
                and not self.keep_alive
                and self.body_complete
                and protocol.state.client_close
            ):
                cork(transport)  # the last bytes of a closing connection go out with the FIN
            if len(chunks) == 1:
                transport.write(chunks[0])
            else:
                transport.writelines(chunks)
        if outcome == RUNNING:
            return
        if outcome == SENDFILE:
            self._start_sendfile()
            return
        if outcome == FAILED:
            self.keep_alive = False  # the head is out: closing is the only way to say the body is cut
        self._respond_done()

    def _drained(self, _: Any = None) -> None:
        if self.phase != _DONE:
            self.flush()

    def _respond_done(self) -> None:
        # (complete_here has this and `_resolve` inlined for its common case: keep the three alike)
        self.state = 3
        self.phase = _DONE
        protocol = self.protocol
        if not protocol.transport.is_closing():
            protocol.response_complete(self)
        else:
            protocol.close()
        self._resolve()

    def _complete(self) -> None:
        """End without (more) output: the client is gone or the response failed."""
        if self.phase == _EXPIRED:
            self.outbox.deadline.returned()  # its thread is back (it ran past --request-timeout)
        self.state = 3
        self.phase = _DONE
        if not self.disconnected:
            self.protocol.close()
        self._resolve()

    def complete_written(self) -> None:
        """The thread wrote the whole response itself (`WsgiCall._write_direct`): complete it here."""
        if self.phase == _DONE:
            return
        if self.disconnected:
            if self.phase != _EXPIRED:
                self.protocol.server.requests_served += 1  # it was served; the client left afterwards
            self._complete()
        else:
            self._respond_done()

    def _resolve(self) -> None:
        protocol = self.protocol
        protocol.out_busy = False
        if protocol.phase == _CLOSED:
            protocol.close_out_fd()
        if self.instance is not None:
            self._release_slot()
        self.input = None

    def _release_slot(self) -> None:
        instance = self.instance
        if instance is not None:  # (set with instance_future by `start`, cleared here: released once)
            self.instance = None
            future = instance.future
            if not future.done():
                future.set_result(None)
            # Only the slot to free: the future never holds an exception and no ASGI cycle is behind it.
            self.protocol.server._free_slot(instance)

    def abandon(self) -> None:
        """A bug of ours while writing: close the connection, free the slot."""
        self.keep_alive = False
        self._close_result()
        self._complete()

    def _close_result(self) -> None:
        result, self.result = self.result, None
        if result is not None:
            try:
                result.close()
            except Exception:
                error_logger.exception("Exception in close() of a WSGI response")

    # ------------------------------------------------------------------ --request-timeout

    def expire(self, timeout: float) -> bool:
        """Past the deadline (called by `layers.WsgiDeadline`'s tick sweep): the client gets a 504 at
        once, or its connection is closed if the response has begun, and the pool slot is freed. The thread
        cannot be stopped: its next write/yield/wsgi.input read raises (ClientDisconnected), whatever it
        still produces is dropped, and it ends in `_complete` (phase _EXPIRED). Returns True when a thread
        is left running (a stuck thread), False when the application never got one."""
        with self.outbox.lock:
            if self.outcome != RUNNING or self.phase == _DONE:
                return False  # finished as the deadline passed: its response goes out as usual
            # Set before `state` is read below: WsgiCall._write_direct marks `state` before it reads
            # `aborted`, so either it sees this and writes nothing, or this sees its response as begun.
            self.aborted = True
            if self.cond is not None:
                self.cond.notify_all()
        stream = self.input
        if stream is not None:
            stream.expire()  # (StreamInput, or the dispatcher's body_input under a deadline)
        running = self.phase == _QUEUED
        protocol = self.protocol
        scope = self.scope
        answered = self.timed_out = not self.disconnected and self.state == 0
        error_logger.warning(
            "Request %s %s timed out after %gs (--request-timeout)%s",
            scope["method"],
            scope["path"],
            timeout,
            ": answered 504" if answered else "",
        )
        if answered:
            server = protocol.server
            head, _, _ = response_head(
                504, _TIMEOUT_HEADERS, server.default_header_bytes, False, self.http11, self.is_head, len(TIMEOUT_BODY)
            )
            protocol.transport.write(head if self.is_head else head + TIMEOUT_BODY)
            server.requests_served += 1
            if self.t0 is not None and server.access_log is not None:
                try:
                    server.access_log(scope, 504, len(TIMEOUT_BODY), time.perf_counter() - self.t0, ())
                except Exception:
                    error_logger.exception("Access log failed")
            # The thread will not write to the connection's dup any more (it reads `aborted` after marking
            # `state`, and `state` was still 0): closed now, else the dup keeps the connection open.
            protocol.close_out_fd()
        elif not self.disconnected:
            # The response has begun: cut the connection, under the thread too (it may be writing through
            # the dup; shut down, its fd stays valid until the thread is done).
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    # (uvloop's transport sockets refuse shutdown(): through a socket object of our own)
                    with socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno())) as own:
                        own.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if running:
            self.phase = _EXPIRED
            self._release_slot()  # the slot, not the connection's socket: the thread may still hold it
        protocol.close()  # disconnects the request: _complete at once if the app never ran, else when it returns
        return running


# ---------------------------------------------------------------------------- requests made from a prototype

_clone: Any = clone_request  # (Any: new_wsgi_cycle is the protocol's only where it is not None)


def copies_requests() -> bool:
    """Whether requests can be made by `new_wsgi_cycle`: the compiled module is there and copies a `WsgiCycle` (an
    interpreter that lays out slots another way gets None from it, and requests made by their class)."""
    return _clone is not None and _clone(WsgiCycle.__new__(WsgiCycle)) is not None


def cycle_prototype(dispatcher: WsgiDispatcher) -> WsgiCycle:
    """The request each `new_wsgi_cycle` of `dispatcher`'s server copies: a `WsgiCycle` as `__init__` leaves it
    (so the two cannot drift apart), with no connection."""
    stand_in = SimpleNamespace(server=SimpleNamespace(wsgi=dispatcher))  # (__init__ reads protocol.server.wsgi)
    cycle = WsgiCycle(stand_in, {}, False, False, False, False, False)  # type: ignore[arg-type]  # a stand-in protocol, see above
    cycle.protocol = None
    cycle._scope = None
    return cycle


def new_wsgi_cycle(
    protocol: HttpProtocol,
    scope: dict,
    keep_alive: bool,
    expect_continue: bool,
    is_head: bool,
    http11: bool,
    timed: bool,
) -> WsgiCycle:
    """`WsgiCycle(...)`, made by copying the server's prototype (`WsgiDispatcher.prototype`, `cycle_prototype`)
    and setting what differs: a class call and its `__init__` cost a --threads 1 hello-world request about 5 %
    of its instructions, the copy a fifth of that (`_head.clone`, compiled; the protocol's `cycle_class` where
    it is there)."""
    cycle: WsgiCycle = _clone(protocol.server.wsgi.prototype)
    cycle.protocol = protocol
    cycle._scope = scope
    cycle.keep_alive = keep_alive
    cycle.expect_continue = expect_continue
    cycle.is_head = is_head
    cycle.http11 = http11
    if timed:
        cycle.t0 = time.perf_counter()
    cycle.chunks = []  # (the one mutable value __init__ gives: each request its own)
    return cycle
