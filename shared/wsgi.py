"""Serve a WSGI application over ASGI: `WsgiToAsgi`, API-compatible with asgiref.wsgi, but faster and streaming.

Each request runs on a thread of an executor (by default the worker's pool), so requests run concurrently.
The common case costs exactly one thread hop: when the whole request body came in the first `http.request`
message it is handed over as a BytesIO, and the thread runs the application and collects a list/tuple
response before it wakes the event loop once. Any other response iterable is streamed: the thread pushes
each chunk to the loop as it is produced (`call_soon_threadsafe`, coalesced while the loop is busy), and
blocks when more than OUTPUT_WINDOW bytes wait to be sent. A body sent in several messages is streamed to
the application too: a receive() pump on the loop fills a bounded buffer that `wsgi.input` reads from.

Messages are asgiref's by default: one `http.response.body` per chunk the application produces (empty ones
included) with ``more_body=True``, then a closing ``{"type": "http.response.body"}``, so code and tests written
against asgiref see the same messages. ``coalesce=True`` (what corral's worker uses) sends corral's faster
shape instead: chunks produced while a send was in flight go out joined in one message, empty chunks are
dropped, and the last chunk carries ``more_body=False`` (a list response is a single message, so the server
can frame it with a Content-Length in one write).

Differences from asgiref, all deliberate:
* `wsgi.input` reads block until data arrives; if the client disconnects before the body is complete they
  raise `ClientDisconnected` (an OSError), so a truncated body is never mistaken for a whole one.
* The response iterable's `close()` is always called; a client disconnect (an `http.disconnect` seen while
  a response streams, or `send()` failing) makes the application's next `write()`/yield stop it.
* Headers are decoded and encoded as latin-1 (PEP 3333); repeated `Cookie` headers are joined with "; ";
  request headers whose names contain "_" are dropped (they would alias the "-" spelling in the environ,
  the header-smuggling hole gunicorn also closes); `REMOTE_PORT` and `wsgi.input_terminated` are set;
  `SCRIPT_NAME` is stripped from the path only at a segment boundary.
* An `http.disconnect` before the request started returns quietly instead of raising ValueError.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import thread as _cf_thread
from typing import Any, TypeGuard

from corral.shared.bodystream import BlockingReader, ClientDisconnected  # ClientDisconnected: API
from corral.shared.runtime import get_runtime
from corral.shared.wsgi_environ import build_environ

__all__ = ["WsgiToAsgi", "WsgiToAsgiInstance", "ClientDisconnected", "INPUT_BUFFER", "OUTPUT_WINDOW"]

logger = logging.getLogger(__name__)

#: Request-body bytes buffered ahead of the application before the pump stops pulling `receive()`.
INPUT_BUFFER = 256 * 1024
#: Response bytes a streaming application may produce ahead of `send()` before its thread blocks.
OUTPUT_WINDOW = 256 * 1024

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _wake(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _notify(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any]) -> None:
    """Wake an event-loop waiter from another thread."""
    try:
        loop.call_soon_threadsafe(_wake, waiter)
    except RuntimeError:
        pass  # the loop is closed: nobody waits any more


class _Job:
    """A request's run of the application, queued straight into a ThreadPoolExecutor's work queue.

    What `executor.submit(...)` queues is a work item holding a Future; nobody waits on that Future here
    (the instance publishes its own results), and making, running and completing it (locks, a condition,
    callbacks) is a large part of a small request's hop. A `_Job` is a work item without it: the pool's
    threads call `run()`; a pool shut down with cancel_futures=True (or broken) reaches the instance
    through `future.cancel()` / `future.set_exception()`, which end the request like a cancelled job.
    """

    __slots__ = ("instance", "context", "environ")

    def __init__(self, instance: WsgiToAsgiInstance, environ: dict[str, Any]) -> None:
        self.instance = instance
        self.context = contextvars.copy_context()
        self.environ = environ

    @property
    def future(self) -> _Job:
        return self

    def run(self, *_: Any) -> None:  # (Python 3.14's pool threads pass a context argument)
        try:
            self.context.run(self.instance._run_wsgi_app, self.environ)
        except BaseException:  # _run_wsgi_app reports the application's errors; this is a bug of ours
            logger.exception("WSGI job failed")

    def cancel(self) -> bool:
        self.instance._finish(RuntimeError("the executor was shut down before the WSGI application ran"))
        return True

    def set_exception(self, exc: BaseException) -> None:
        self.instance._finish(exc)


def _queue_job(executor: ThreadPoolExecutor, job: _Job) -> bool:
    """`executor.submit` for a `_Job` (see there); False when the pool takes no more work (submit raises)."""
    with executor._shutdown_lock, _cf_thread._global_shutdown_lock:
        if executor._broken or executor._shutdown or _cf_thread._shutdown:
            return False
        executor._work_queue.put(job)  # type: ignore[arg-type]  # a _Job does what a _WorkItem does: run()
        if len(executor._threads) < executor._max_workers:
            # Starts a thread unless one is idle. With every thread started it would only take a count
            # off the idle semaphore (the threads add one per job; its sole reader is this method).
            executor._adjust_thread_count()
    return True


_fast_pools: list[bool] = []  # [whether ThreadPoolExecutor has what `_queue_job` needs], checked once


def _fast_pool(executor: Any) -> TypeGuard[ThreadPoolExecutor]:
    """Whether `executor` is a plain ThreadPoolExecutor with the internals `_queue_job` relies on."""
    if type(executor) is not ThreadPoolExecutor:
        return False  # a subclass may change submit(): only the plain pool takes the shortcut
    if not _fast_pools:
        _fast_pools.append(
            all(
                hasattr(executor, name)
                for name in (
                    "_shutdown_lock",
                    "_broken",
                    "_shutdown",
                    "_work_queue",
                    "_adjust_thread_count",
                    "_threads",
                    "_max_workers",
                )
            )
            and hasattr(_cf_thread, "_global_shutdown_lock")
            and hasattr(_cf_thread, "_shutdown")
        )
    return _fast_pools[0]


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"WSGI application produced {type(data).__name__}, not bytes")


class _InputStream(BlockingReader):
    """`wsgi.input` for a body still arriving: the WSGI thread reads while the event loop feeds it."""

    __slots__ = ("_loop", "_cond", "_buf", "_eof", "_disconnected", "_resume")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._buf = bytearray()
        self._eof = False
        self._disconnected = False
        self._resume: asyncio.Future[Any] | None = None

    # -- event-loop side --------------------------------------------------------------------------------
    def feed(self, data: bytes, more: bool) -> None:
        with self._cond:
            if data:
                self._buf += data
            if not more:
                self._eof = True
            self._cond.notify()

    async def wait_for_space(self) -> None:
        """Return once the buffer is below INPUT_BUFFER (the reader wakes us at half of it)."""
        with self._cond:
            if len(self._buf) < INPUT_BUFFER:
                return
            waiter = self._resume = self._loop.create_future()
        await waiter

    # -- WSGI-thread side (call with the lock held) -----------------------------------------------------
    def _consumed(self, left: int) -> None:
        if self._resume is not None and left < INPUT_BUFFER // 2:
            waiter, self._resume = self._resume, None
            _notify(self._loop, waiter)


class WsgiToAsgi:
    """Wraps a WSGI application to make it an ASGI 3 application."""

    def __init__(
        self,
        wsgi_application: WSGIApplication,
        duplicate_header_limit: int = 100,
        *,
        executor: Executor | None = None,
        coalesce: bool = False,
    ) -> None:
        self.wsgi_application = wsgi_application
        self.duplicate_header_limit = duplicate_header_limit
        # None: the pool of the process's bridging runtime, looked up per request (it is made after fork).
        self.executor = executor
        #: corral's message shape (see the module docstring) instead of asgiref's.
        self.coalesce = coalesce

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await WsgiToAsgiInstance(
            self.wsgi_application, self.duplicate_header_limit, executor=self.executor, coalesce=self.coalesce
        )(scope, receive, send)


class WsgiToAsgiInstance:
    """One request of a wrapped WSGI application.

    State shared between the event loop and the application's thread (`_chunks`, `_pending`, `_done`,
    `_error`, `_aborted`, `_waiter`) is guarded by `_lock`; `response_*` belong to the application's thread
    until it publishes its first chunk or finishes, after which the loop only reads them.
    """

    __slots__ = (
        "wsgi_application", "duplicate_header_limit", "executor", "coalesce", "scope", "response_started",
        "response_start", "response_content_length", "_remaining", "_loop", "_lock", "_cond", "_chunks",
        "_pending", "_done", "_error", "_aborted", "_waiter", "_stream", "_receiver",
    )  # fmt: skip

    def __init__(
        self,
        wsgi_application: WSGIApplication,
        duplicate_header_limit: int = 100,
        *,
        executor: Executor | None = None,
        coalesce: bool = False,
    ) -> None:
        self.wsgi_application = wsgi_application
        self.duplicate_header_limit = duplicate_header_limit
        self.executor = executor
        self.coalesce = coalesce
        self.scope: dict[str, Any] | None = None
        self.response_started = False
        self.response_start: dict[str, Any] | None = None
        self.response_content_length: int | None = None
        self._remaining: int | None = None
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None  # made when the application first outruns send()
        self._chunks: list[bytes] = []
        self._pending = 0
        self._done = False
        self._error: BaseException | None = None
        self._aborted = False
        self._waiter: asyncio.Future[Any] | None = None
        self._stream: _InputStream | None = None
        self._receiver: asyncio.Task[Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            raise ValueError("WSGI wrapper received a non-HTTP scope")
        self.scope = scope
        message = await receive()
        if message["type"] != "http.request":
            if message["type"] == "http.disconnect":
                return  # the client left before the request began: nothing to answer
            raise ValueError("WSGI wrapper received a non-HTTP-request message")
        self._loop = loop = asyncio.get_running_loop()
        if message.get("more_body", False):
            body: Any = _InputStream(loop)
            body.feed(message.get("body", b""), True)
            self._stream = body
        else:
            body = io.BytesIO(message.get("body", b""))
        try:
            environ = self.build_environ(scope, body)
        except ValueError:
            await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"Bad Request: Too many duplicate headers"})
            return
        executor = self.executor if self.executor is not None else get_runtime().pool
        if not (_fast_pool(executor) and _queue_job(executor, _Job(self, environ))):
            job = executor.submit(contextvars.copy_context().run, self._run_wsgi_app, environ)
            job.add_done_callback(self._job_done)
        if self._stream is not None:
            self._receiver = loop.create_task(self._receive_loop(receive))
        try:
            await self._respond(receive, send)
        except asyncio.CancelledError:
            self._abort()
            raise
        except BaseException:
            # The response cannot complete; let the application's thread wind down (it stops at its next
            # write, yield or read) so that its iterable has been closed when we return.
            self._abort()
            await self._wait_done()
            raise
        finally:
            if self._receiver is not None and not self._receiver.done():
                self._receiver.cancel()

    def build_environ(self, scope: dict[str, Any], body: Any) -> dict[str, Any]:
        """Build the PEP 3333 environ of a request from its scope and a file-like body."""
        return build_environ(scope, body, self.duplicate_header_limit)

    def start_response(self, status: str, response_headers: list[Any], exc_info: Any = None) -> Callable[[bytes], None]:
        """The PEP 3333 start_response callable; returns `write`."""
        if exc_info is not None:
            try:
                if self.response_started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self.response_start is not None:
            raise ValueError("You cannot call start_response a second time without exc_info")
        headers = []
        length = None
        for name, value in response_headers:
            lname = name.lower()
            headers.append((lname.encode("latin-1"), value.encode("latin-1")))
            if lname == "content-length":
                length = int(value)
        self.response_content_length = self._remaining = length
        code = int(status.split(" ", 1)[0])
        self.response_start = {"type": "http.response.start", "status": code, "headers": headers}
        return self.write

    def write(self, data: bytes) -> None:
        """The PEP 3333 write() callable: send `data` now (blocks while the client falls behind)."""
        self._put(data)

    # -- the application's thread -------------------------------------------------------------------------
    def _run_wsgi_app(self, environ: dict[str, Any]) -> None:
        result = None
        error = None
        tail = None
        try:
            if self._aborted:
                return  # cancelled while queued: do not run the application for nobody
            result = self.wsgi_application(environ, self.start_response)
            if type(result) is list or type(result) is tuple:
                # Already materialised: publish it in one go with the end of the response (one wake-up).
                tail = self._collect(result)
            else:
                keep_empty = not self.coalesce  # asgiref sends every chunk, empty ones too
                for chunk in result:
                    if (chunk or keep_empty) and self._put(chunk):
                        break  # Content-Length reached: stop iterating (PEP 3333)
            if self.response_start is None:
                raise RuntimeError("WSGI application returned without calling start_response")
        except BaseException as exc:  # noqa: BLE001 - whatever the app raises goes to the response side
            error = exc
            tail = None
        finally:
            if result is not None and type(result) is not list and type(result) is not tuple:
                close = getattr(result, "close", None)
                if close is not None:
                    try:
                        close()
                    except BaseException as exc:
                        if error is None:
                            error = exc
                        else:
                            logger.exception("close() of a WSGI response failed after another error")
            self._finish(error, tail)

    def _collect(self, chunks: list[Any] | tuple[Any, ...]) -> list[bytes]:
        out = []
        keep_empty = not self.coalesce
        for chunk in chunks:
            if not chunk and not keep_empty:
                continue
            if type(chunk) is not bytes:
                chunk = _as_bytes(chunk)
            remaining = self._remaining
            if remaining is not None:
                chunk = chunk[:remaining]
                self._remaining = remaining - len(chunk)
            out.append(chunk)
            if self._remaining == 0:
                break
        if out:
            if self.response_start is None:
                raise RuntimeError("WSGI application produced a body before calling start_response")
            self.response_started = True
        return out

    def _put(self, data: bytes) -> bool:
        """Publish one chunk to the event loop; True once Content-Length is reached."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        if not self.response_started:
            if self.response_start is None:
                raise RuntimeError("WSGI application produced a body before calling start_response")
            self.response_started = True
        remaining = self._remaining
        if remaining is not None:
            data = data[:remaining]
            remaining = self._remaining = remaining - len(data)
        with self._lock:
            if self._aborted:
                raise ClientDisconnected("the client disconnected")
            self._chunks.append(data)
            self._pending += len(data)
            waiter, self._waiter = self._waiter, None
            full = self._pending > OUTPUT_WINDOW
        if waiter is not None:
            _notify(self._loop, waiter)
        if full:
            with self._lock:
                if self._cond is None:
                    self._cond = threading.Condition(self._lock)
                while self._pending > OUTPUT_WINDOW and not self._aborted:
                    self._cond.wait()
                if self._aborted:
                    raise ClientDisconnected("the client disconnected")
        return remaining == 0

    def _finish(self, error: BaseException | None, tail: list[bytes] | None = None) -> None:
        with self._lock:
            if tail:
                self._chunks.extend(tail)
            self._done = True
            self._error = error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _notify(self._loop, waiter)

    def _job_done(self, job: Future[Any]) -> None:
        # An executor shut down with cancel_futures=True drops queued jobs without running them.
        if job.cancelled():
            self._finish(RuntimeError("the executor was shut down before the WSGI application ran"))

    # -- the event loop -----------------------------------------------------------------------------------
    async def _take(self, until_done: bool = False) -> tuple[list[bytes], bool]:
        """Wait for chunks, the end of the response or an abort; return (chunks, done)."""
        while True:
            with self._lock:
                if self._done or (not until_done and (self._chunks or self._aborted)):
                    chunks, self._chunks = self._chunks, []
                    self._pending = 0
                    if self._cond is not None:
                        self._cond.notify()
                    return chunks, self._done
                waiter = self._waiter = self._loop.create_future()
            await waiter

    async def _wait_done(self) -> None:
        await self._take(until_done=True)

    async def _respond(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        started = False
        while True:
            chunks, done = await self._take()
            if self._aborted:
                # The client went away: stop sending and wait for the application to notice.
                await self._wait_done()
                error, self._error = self._error, None
                if error is not None and not isinstance(error, ClientDisconnected):
                    raise error
                return
            if done and self._error is not None:
                error, self._error = self._error, None
                raise error
            if not started:
                started = True
                await send(self.response_start)
            if not done and self._receiver is None:
                # The response streams: watch for the client leaving so that the application stops.
                self._receiver = self._loop.create_task(self._receive_loop(receive))
            if self.coalesce:
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if done:
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            else:
                # asgiref's shape: one message per chunk, then a closing one.
                last = len(chunks) - 1
                for i, chunk in enumerate(chunks):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if i != last and not done:
                        # A batch of many chunks and a send() that does not suspend would never let the
                        # receiver see a disconnect (asgiref waits a thread round trip per message).
                        await asyncio.sleep(0)
                        if self._aborted:
                            break
                if done:
                    await send({"type": "http.response.body"})
                    return

    async def _receive_loop(self, receive: Callable[..., Any]) -> None:
        """Pump the rest of the request body into wsgi.input, then watch for http.disconnect."""
        stream = self._stream
        try:
            if stream is not None and not stream._eof:
                while True:
                    await stream.wait_for_space()
                    message = await receive()
                    if message["type"] == "http.request":
                        more = message.get("more_body", False)
                        stream.feed(message.get("body", b""), more)
                        if not more:
                            break
                    elif message["type"] == "http.disconnect":
                        self._abort()
                        return
            # After the body only http.disconnect may come; anything else means a receive() that does not
            # block, and polling it would spin.
            message = await receive()
            if message["type"] == "http.disconnect":
                self._abort()
        except Exception:
            logger.debug("receive() failed; treating it as a client disconnect", exc_info=True)
            self._abort()

    def _abort(self) -> None:
        """Stop the response (event-loop side): the application's next write, yield or read raises."""
        with self._lock:
            self._aborted = True
            if self._cond is not None:
                self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)
        if self._stream is not None:
            self._stream.disconnect()
