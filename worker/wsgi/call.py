"""The application's side of a native WSGI request: what runs on a thread of the worker's pool.

`WsgiCall` is the thread half of `corral.worker.wsgi.cycle.WsgiCycle` (one slotted object per request;
the loop half lives there). `run()` calls the application, and frames its response into bytes on the
thread: the event loop only writes what it is handed. Hand-offs are one each way: the request is queued to
the pool, and the finished (or first streamed) output is posted back through the worker's `Outbox`,
which wakes the loop once per batch, not once per request.

* A list or tuple body is joined and written with its head in one `transport.write`, with a
  Content-Length (PEP 3333 allows the server to add it when it knows the length).
* Any other iterable (and `write()`) streams: chunks are posted as they come (chunked, or counted down
  against the application's Content-Length and cut there); past `OUTPUT_WINDOW` unsent bytes the thread
  blocks until the loop has handed them to the transport, and the loop takes them only while the
  transport is below its high-water mark: a slow reader stalls the application, not the worker's memory.
* `wsgi.file_wrapper` on a regular file is sent with `os.sendfile` by the loop (`WsgiCycle`), zero-copy.
* The iterable's `close()` is always called: after the last chunk, after an error, after a disconnect
  (which makes the next `write()`/yield raise `ClientDisconnected`); for a file sent with sendfile,
  after the transfer.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from corral.shared.wsgi_environ import (
    NATIVE_BUILD,
    NATIVE_BUILD_ARGS,
    NATIVE_BUILD_PARSED,
    TooManyHeaders,
    build_environ,
    build_environ_python,
)
from corral.worker.http1.connection import CHUNKED, CLOSE_DELIMITED, NO_BODY, response_head
from corral.worker.http1.scope import METHODS
from corral.worker.wsgi.filesend import FileWrapper, file_span
from corral.worker.wsgi.input import ClientDisconnected

__all__ = ["WsgiCall", "OUTPUT_WINDOW", "ON_LOOP", "Outbox", "WSGIApp"]

error_logger = logging.getLogger("corral.error")

WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]

#: Response bytes a streaming application may produce ahead of the transport before its thread blocks.
OUTPUT_WINDOW = 256 * 1024
#: Bodies up to this size are joined with the head into one write; bigger ones follow it.
_JOIN_LIMIT = 64 * 1024
# The compiled environ builder, called from `_run` without build_environ's frame (about 1 % of a --threads 1
# request's instructions, the guard); build_environ when it is off or declines the scope.
_native_build = NATIVE_BUILD
_native_build_parsed = NATIVE_BUILD_PARSED
_HEADER_KEYS, _HEADER_KEY, _TOO_MANY, _PORTS = NATIVE_BUILD_ARGS

# What the thread leaves for the loop (`WsgiCall.outcome`). STREAM: an application called on the event loop's
# thread returned an iterable to stream; a pool thread iterates it (`stream_rest`).
RUNNING, DONE, FAILED, SENDFILE, STREAM = 0, 1, 2, 3, 4

#: `WsgiCycle.phase` of a request whose application runs on the event loop's thread (--threads 1: see
#: corral.worker.wsgi.inline): nothing is posted to the loop, and nothing waits for it.
ON_LOOP = 4


class Outbox(Protocol):
    lock: threading.Lock

    def post(self, call: Any) -> None: ...

    def complete_later(self, call: Any) -> None: ...

    def client_wait(self) -> AbstractContextManager[None]:
        """Around a wait of the request's thread on its client (the pool lets another thread run meanwhile)."""


_STR_HEADERS: dict[tuple, tuple] = {}  # WSGI (str, str) header tuples -> their latin-1 bytes (bounded)
_STR_HEADERS_MAX = 512


def _encode_headers(headers: Any) -> tuple:
    try:
        key = tuple(headers)
        encoded = _STR_HEADERS.get(key)
    except TypeError:  # lists as pairs: unhashable, encode each time
        key = None
        encoded = None
    if encoded is None:
        try:
            encoded = tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)
        except (AttributeError, TypeError, ValueError, UnicodeEncodeError):
            raise RuntimeError(
                f"WSGI response headers must be a list of (str, str) latin-1 pairs: {headers!r}"
            ) from None
        if key is not None:
            if len(_STR_HEADERS) >= _STR_HEADERS_MAX:
                _STR_HEADERS.clear()
            _STR_HEADERS[key] = encoded
    return encoded


_STARTED: dict[tuple, tuple[tuple, int]] = {}  # (status, *headers) -> (encoded headers, code) (bounded)
_STARTED_MAX = 512
_STATUS_CODES: dict[str, int] = {}  # WSGI status lines -> their codes, validated (bounded: reason phrases vary)


def _status_code(status: Any) -> int:
    code = _STATUS_CODES.get(status) if type(status) is str else None
    if code is None:
        if type(status) is not str or len(status) < 3 or not status[:3].isdigit() or status[3:4] not in ("", " "):
            raise RuntimeError(f"WSGI status must be a string like '200 OK', got {status!r}")
        code = int(status[:3])
        if len(_STATUS_CODES) < 512:
            _STATUS_CODES[status] = code
    return code


class WsgiCall:
    """The thread half of a request (the slots are `WsgiCycle`'s)."""

    if not TYPE_CHECKING:  # mypy would take () for every slot and refuse the assignments below
        __slots__ = ()

    # attributes (declared in WsgiCycle)
    app: WSGIApp
    if TYPE_CHECKING:

        @property
        def scope(self) -> dict: ...  # WsgiCycle's: made from `parsed` when first read

    _scope: dict | None  # the scope once made (WsgiCycle.scope)
    parsed: tuple | None
    input: Any
    status: int
    headers: Any
    keep_alive: bool
    is_head: bool
    http11: bool
    head_sent: bool
    mode: int
    remaining: int
    chunks: list
    pending: int
    outcome: int
    aborted: bool
    posted: bool
    cond: threading.Condition | None
    outbox: Outbox
    sendfile: tuple | None
    result: Any
    nbytes: int
    protocol: Any
    state: int
    phase: int

    # -- the job (what the pool's threads call; see corral.worker.wsgi.threads) -----------------------------------
    def cancel(self) -> bool:  # the pool was closed with this request queued
        self._post(FAILED)
        return True

    def run(self, *_: Any) -> None:
        # A fresh context per request: a contextvar set by one request never shows in the next one that
        # lands on the same thread.
        try:
            contextvars.Context().run(self._run)
        except BaseException:  # _run reports the application's errors: this would be a bug of ours
            error_logger.exception("WSGI request failed in the server")
            self._post(FAILED)

    # -- the application ------------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.aborted:
            self._post(DONE)  # the client left while the request was queued: don't run it for nobody
            return
        protocol = self.protocol
        template = protocol.server.wsgi_environ
        try:
            environ: dict | None = None
            # (the slot, not the `scope` property: a property costs 3.11 a Python call, ~600 instructions)
            scope = self._scope
            if scope is None and _native_build_parsed is not None and template is not None:
                # A request made from the read without its scope (corral.worker.wsgi.direct): its environ from
                # what the parser returned (None: from the scope, made now).
                environ = _native_build_parsed(
                    template,
                    self.parsed,
                    protocol.sockname,
                    protocol.client,
                    protocol.scheme,
                    self.input,
                    100,
                    _HEADER_KEYS,
                    _HEADER_KEY,
                    _TOO_MANY,
                    _PORTS,
                    METHODS,
                )
            if environ is None:
                if scope is None:
                    scope = self.scope
                if _native_build is None or template is None:
                    environ = build_environ(scope, self.input, 100, template=template)
                else:
                    environ = _native_build(
                        template, scope, self.input, 100, _HEADER_KEYS, _HEADER_KEY, _TOO_MANY, _PORTS
                    )
                    if environ is None:  # a scope of another shape (a root path, ...): the Python way, once
                        environ = build_environ_python(scope, self.input, 100, template=template)
        except TooManyHeaders:
            self.status = 400
            self.chunks.append(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.keep_alive = False
            self._post(DONE)
            return
        self._respond(environ)

    def _respond(self, environ: dict) -> None:
        """Call the application, frame its response and post it (the hooks' seam:
        `corral.worker.wsgi.layers.HookedWsgiCycle` runs pre_request/post_request around it)."""
        result = None
        outcome = DONE
        try:
            result = self.app(environ, self.start_response)
            rtype = type(result)
            if rtype is list or rtype is tuple:
                if len(result) == 1 and self.status and not self.head_sent and type(body := result[0]) is bytes:  # type: ignore[arg-type, index]  # a list or tuple: `rtype is` above
                    # Most responses: one bytes body, start_response called. Framed here, as _finish_list and
                    # _head frame it, without their two calls (a twentieth of a --threads 1 hello-world).
                    server = self.protocol.server
                    head, mode, self.keep_alive = response_head(
                        self.status,
                        self.headers,
                        server.default_header_bytes,
                        self.keep_alive and not server.stopping,
                        self.http11,
                        self.is_head,
                        len(body),
                    )
                    self.head_sent = True
                    if mode == len(body) and len(body) <= _JOIN_LIMIT:  # the length declared is the body's
                        self.mode = mode
                        self.remaining = mode
                        self.nbytes = mode
                        if self.phase == ON_LOOP:  # (see _finish_list)
                            self.chunks.append(head + body)
                        else:
                            with self.outbox.lock:
                                self.chunks.append(head + body)
                    else:
                        self._framed_list(head, mode, body)
                else:
                    self._finish_list(result)  # type: ignore[arg-type]  # a list or tuple: `rtype is` above
            elif getattr(result, "streaming", None) is False:
                # Django's HttpResponse says its body is in memory (`streaming = False`): collected and sent
                # with its head in one write, like a list. (Other iterables stream: PEP 3333 forbids holding
                # a block back until the next one comes.)
                self._finish_list(list(result))
            elif rtype is FileWrapper and not self.head_sent and (span := file_span(result)) is not None:  # type: ignore[arg-type]  # `rtype is FileWrapper`
                if self._finish_file(span):
                    outcome = SENDFILE  # the loop sends the file, then closes it
            elif self.phase == ON_LOOP:
                # The event loop's thread does not iterate: a body produced piece by piece must wait for the
                # client (backpressure), which would stop the loop. A pool thread iterates it (`stream_rest`).
                outcome = STREAM
            else:
                self._iterate(result)
        except ClientDisconnected:
            outcome = DONE
        except BaseException as exc:  # noqa: BLE001 - the application's error, of any kind: logged (_failed), a 500
            outcome = FAILED
            self._failed(exc)
        finally:
            kind = type(result)
            if (
                outcome != SENDFILE
                and outcome != STREAM
                and kind is not list
                and kind is not tuple
                and not self._closed(result)
            ):
                outcome = FAILED
        if outcome == SENDFILE or outcome == STREAM:
            self.result = result
        if self.phase == ON_LOOP:  # (_post's first case, inlined: every --threads 1 request)
            self.outcome = outcome
        else:
            self._post(outcome)

    def stream_rest(self) -> None:
        """Iterate the body of an application called on the loop's thread (outcome STREAM), on a pool thread."""
        result, self.result = self.result, None
        outcome = DONE
        try:
            self._iterate(result)
        except ClientDisconnected:
            pass
        except BaseException as exc:  # noqa: BLE001 - the application's error, of any kind: logged (_failed), a 500
            outcome = FAILED
            self._failed(exc)
        finally:
            if not self._closed(result):
                outcome = FAILED
        self._post(outcome)

    def _iterate(self, result: Iterable[bytes]) -> None:
        for chunk in result:
            if chunk and self._emit(chunk):
                break  # Content-Length reached (PEP 3333: stop iterating)
        self._finish_stream()

    def _failed(self, exc: BaseException) -> None:
        if not (self.aborted and isinstance(exc, OSError)):  # a write to a gone client is not a bug
            error_logger.error(
                "Exception in WSGI application (%s %s)",
                self.scope["method"],
                self.scope["path"],
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _closed(self, result: Any) -> bool:
        """Call the response iterable's close(), if it has one (not a list's); False when close() raised."""
        if result is None or type(result) is list or type(result) is tuple:
            return True
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except BaseException as exc:
                error_logger.error(
                    "Exception in close() of a WSGI response (%s %s)",
                    self.scope["method"],
                    self.scope["path"],
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
                return False
        return True

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        """PEP 3333 start_response; returns `write`."""
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self.status:
            raise RuntimeError("start_response called a second time without exc_info")
        # The status and headers an application sends again and again, looked up at once (one dict lookup for
        # both; checked and encoded the first time by the two functions below).
        key: tuple | None
        started: tuple[tuple, int] | None
        try:
            key = (status, *headers)
            started = _STARTED.get(key)
        except TypeError:  # unhashable items (lists as pairs), or headers that are not iterable: no caching
            key = started = None
        if started is None:
            started = (_encode_headers(headers), _status_code(status))
            if key is not None:
                if len(_STARTED) >= _STARTED_MAX:
                    _STARTED.clear()
                _STARTED[key] = started
        self.headers, self.status = started
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333 write(): the data is on its way when this returns (it blocks while the client lags)."""
        if data:
            self._emit(data)

    # -- framing (on the thread) -----------------------------------------------------------------------------
    def _head(self, body_length: int | None) -> bytes:
        if not self.status:
            raise RuntimeError("WSGI application produced a body before calling start_response")
        server = self.protocol.server
        head, mode, self.keep_alive = response_head(
            self.status,
            self.headers,
            server.default_header_bytes,
            self.keep_alive and not server.stopping,
            self.http11,
            self.is_head,
            body_length,
        )
        self.head_sent = True
        self.mode = mode
        self.remaining = mode
        return head

    def _finish_list(self, result: list | tuple) -> None:
        if len(result) == 1:
            body = result[0]
            if type(body) is not bytes:
                body = _as_bytes(body)
        else:
            body = b"".join([chunk if type(chunk) is bytes else _as_bytes(chunk) for chunk in result])
        if self.head_sent:  # write() was used before returning
            if body:
                self._emit(body)
            self._finish_stream()
            return
        self._framed_list(self._head(len(body)), self.mode, body)

    def _framed_list(self, head: bytes, mode: int, body: bytes) -> None:
        """The response of a whole body, its head made (`mode` its framing): posted, framed as the head says."""
        self.mode = self.remaining = mode
        if mode >= 0:
            if len(body) > mode:
                body = body[:mode]  # PEP 3333: never more than the declared Content-Length
            elif len(body) < mode:
                self._check_length(len(body))
        elif mode == NO_BODY:
            body = b""
        elif mode == CHUNKED:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        self.nbytes = len(body)
        if self.phase == ON_LOOP:  # on the loop's thread, which alone reads the chunks: no lock to take
            if len(body) <= _JOIN_LIMIT:
                self.chunks.append(head + body)
            else:
                self.chunks += (head, body)
            return
        with self.outbox.lock:
            if len(body) <= _JOIN_LIMIT:
                self.chunks.append(head + body)
            else:
                self.chunks.append(head)
                self.chunks.append(body)

    def _finish_file(self, span: tuple[int, int, int]) -> bool:
        """Head for a file response; True when the loop is to sendfile its bytes (GET with a body)."""
        fd, offset, size = span
        head = self._head(size)
        mode = self.mode
        count = min(size, mode) if mode >= 0 else size
        if mode == NO_BODY or count == 0:
            with self.outbox.lock:
                self.chunks.append(head)
            self._check_length(0)
            return False
        if mode == CHUNKED:  # a Transfer-Encoding the application chose: frame it as one chunk
            with self.outbox.lock:
                self.chunks.append(head + b"%x\r\n" % count)
            self.sendfile = (fd, offset, count, b"\r\n0\r\n\r\n")
        else:
            with self.outbox.lock:
                self.chunks.append(head)
            self.sendfile = (fd, offset, count, b"")
            if mode >= 0 and count < mode:
                self.keep_alive = False  # the file is shorter than declared: the client must see a close
        self.nbytes = count
        return True

    def _emit(self, data: Any) -> bool:
        """Post one chunk of a streamed body; True once the Content-Length is reached. Blocks while more
        than OUTPUT_WINDOW bytes wait for the transport; raises ClientDisconnected once the client left."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        head = b"" if self.head_sent else self._head(None)
        mode = self.mode
        reached = False
        if mode >= 0:
            remaining = self.remaining
            if len(data) >= remaining:
                data = data[:remaining]
                reached = True
            self.remaining = remaining - len(data)
        elif mode == NO_BODY:
            data = b""
        elif mode == CHUNKED:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.nbytes += len(data)
        outbox = self.outbox
        with outbox.lock:
            if self.aborted:
                raise ClientDisconnected("the client disconnected")
            if head:
                self.chunks.append(head)
            if data:
                self.chunks.append(data)
            self.pending += len(head) + len(data)
            post = not self.posted
            self.posted = True
        if post:
            outbox.post(self)
        if self.pending > OUTPUT_WINDOW and self.phase != ON_LOOP:  # (on the loop's thread: see ON_LOOP)
            if self.protocol.flow.write_paused:
                # The client is behind (the transport is full): the wait is on it, and another request may
                # have this thread's place meanwhile (a flood of clients that do not read cannot hold them all).
                with outbox.client_wait():
                    self._wait_output()
            else:
                self._wait_output()  # the loop has not taken the output yet
        return reached

    def _wait_output(self) -> None:
        """Block until the loop has taken the output down to OUTPUT_WINDOW (raises once the client left)."""
        with self.outbox.lock:
            cond = self.cond
            if cond is None:
                cond = self.cond = threading.Condition(self.outbox.lock)
            while self.pending > OUTPUT_WINDOW and not self.aborted:
                cond.wait()
            if self.aborted:
                raise ClientDisconnected("the client disconnected")

    def _finish_stream(self) -> None:
        if not self.head_sent:
            self._finish_list(())  # an empty iterable: a head with content-length 0
            return
        mode = self.mode
        if mode == CHUNKED:
            with self.outbox.lock:
                self.chunks.append(b"0\r\n\r\n")
        elif mode >= 0:
            self._check_length(mode - self.remaining)
        elif mode == CLOSE_DELIMITED:
            self.keep_alive = False

    def _check_length(self, sent: int) -> None:
        if self.mode >= 0 and sent < self.mode:
            self.keep_alive = False  # the client can only tell the body is short by the close
            error_logger.error(
                "WSGI response shorter than its Content-Length (%s %s)", self.scope["method"], self.scope["path"]
            )

    def _write_direct(self) -> bool:
        """Write a finished response from this thread, straight to the connection's socket, and leave its
        completion to the loop's next wake-up (`Outbox.complete_later`): no wake-up of the event loop per
        response, which is what a request costs most beside the application (bench/wsgi_dispatch.py).
        Only for the common case: one buffer, keep-alive, nothing queued in the transport, no access log.
        The loop writes nothing to this connection meanwhile: its response is this one."""
        chunks = self.chunks
        if len(chunks) != 1 or not self.keep_alive or self.aborted or self.posted:
            return False
        protocol = self.protocol
        fd = protocol.out_fd
        if fd < 0 or protocol.server.access_log is not None or protocol.transport.get_write_buffer_size():
            return False
        data = chunks[0]
        # Marked as begun first: an error the loop finds meanwhile in a pipelined request then waits for
        # this response instead of being written in the middle of it (HttpProtocol.protocol_error).
        self.state = 2
        if self.aborted:
            # Read again after the mark: a --request-timeout that fired meanwhile set `aborted` before it
            # looked at `state` (WsgiCycle.expire), so it has answered 504 and this must not write.
            return False
        try:
            sent = os.write(fd, data)
        except OSError:  # full (EAGAIN) or broken: the loop's transport deals with it
            return False
        if sent < len(data):
            chunks[0] = data[sent:]  # the loop writes the rest, in order
            return False
        chunks.clear()
        self.outcome = DONE
        self.outbox.complete_later(self)
        return True

    def _post(self, outcome: int) -> None:
        # (`_respond` has the first case inlined: keep the two alike)
        if self.phase == ON_LOOP:  # the loop writes the output once the call has returned (inline.py)
            self.outcome = outcome
            return
        if outcome == DONE and self._write_direct():
            return
        outbox = self.outbox
        with outbox.lock:
            self.outcome = outcome
            post = not self.posted
            self.posted = True
        if post:
            outbox.post(self)


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"WSGI application produced {type(data).__name__}, not bytes")
