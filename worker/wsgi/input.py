"""`wsgi.input` for a request body larger than the pre-read bound: streamed to the application's thread.

Bodies up to `wsgi_body_buffer` never get here: the event loop reads them whole before the application is
given a thread (`corral.worker.wsgi.cycle`), so a client that stalls mid-body holds no thread. A larger
body is handed over as it arrives: the event loop `feed()`s it; the application's thread blocks in
`read()` until enough has come. Backpressure both ways: above `high_water` unread bytes the connection
stops reading (the owner's `pause`), and the reader resumes it once it has consumed half (`resume`, called
on the event loop). `Expect: 100-continue` is answered on the first read (`on_first_read`): an application
that refuses a large upload without reading it never makes the client send it.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from corral.shared.bodystream import BlockingReader, ClientDisconnected

__all__ = ["StreamInput", "ExpiringInput", "ClientDisconnected"]


class StreamInput(BlockingReader):
    __slots__ = ("_loop", "_cond", "_buf", "_eof", "_disconnected", "_paused", "_high", "_resume",
                 "_first_read", "waiting", "_client_wait")  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        high_water: int,
        resume: Callable[[], None],
        first_read: Callable[[], None] | None = None,
        client_wait: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self._loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._buf = bytearray()
        self._eof = False
        self._disconnected = False
        self._paused = False  # the owner paused reading: the reader must call `resume` once it drains
        self._high = high_water
        self._resume = resume
        self._first_read = first_read
        self.waiting = False  # the application's thread waits for body bytes (read by the minimum body rate)
        # Around that wait (the pool lets another thread run meanwhile: WorkerThreads.client_wait); None: nothing.
        self._client_wait = client_wait

    # -- event-loop side -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        """Add body bytes; True when the owner should pause reading (the reader will resume it)."""
        with self._cond:
            self._buf += data
            self._cond.notify()
            if len(self._buf) > self._high:
                self._paused = True
                return True
            return False

    def end(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def expire(self) -> None:
        """The request is past --request-timeout: every later read raises, even with bytes left."""
        with self._cond:
            self._buf.clear()
            self._eof = False
            self._disconnected = True
            self._cond.notify_all()

    # -- the application's thread (with the lock held) -------------------------------------------------------
    def _consumed(self, left: int) -> None:
        if self._paused and left <= self._high // 2:
            self._paused = False
            try:
                self._loop.call_soon_threadsafe(self._resume)
            except RuntimeError:  # the loop is closed: nobody reads any more
                pass

    def _wait(self) -> None:
        first_read = self._first_read
        if first_read is not None:
            self._first_read = None
            try:
                self._loop.call_soon_threadsafe(first_read)
            except RuntimeError:
                pass
        self.waiting = True
        try:
            if self._client_wait is None:
                BlockingReader._wait(self)
            else:
                with self._client_wait():
                    BlockingReader._wait(self)
        finally:
            self.waiting = False


class ExpiringInput(io.BytesIO):
    """`wsgi.input` of a pre-read body under --request-timeout: once `expire()`d, reads raise
    ClientDisconnected, as StreamInput's do (plain `io.BytesIO` when the deadline is off)."""

    __slots__ = ("expired",)

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.expired = False

    def expire(self) -> None:
        self.expired = True

    def _check(self) -> None:
        if self.expired:
            raise ClientDisconnected("the request is past its deadline (--request-timeout)")

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        return super().read(size)

    def read1(self, size: int | None = -1) -> bytes:
        self._check()
        return super().read1(size)

    def readinto(self, buffer: Any) -> int:
        self._check()
        return super().readinto(buffer)

    def readline(self, size: int | None = -1) -> bytes:
        self._check()
        return super().readline(size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        self._check()
        return super().readlines(hint)

    def __next__(self) -> bytes:
        self._check()
        return super().__next__()
