"""`wsgi.input` for a request body that is still arriving: the file-like API a WSGI application's thread reads
through, over a buffer the event loop fills. Shared by the worker's native WSGI path
(`corral.worker.wsgi.input.StreamInput`) and the ASGI adapter (`corral.shared.wsgi`); each provides the
buffer (`_buf`, a bytearray), its lock (`_cond`, a Condition), `_eof`, `_disconnected`, and its backpressure
in `_consumed(left)` (told after each take how many bytes are left unread).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

__all__ = ["BlockingReader", "ClientDisconnected"]


class ClientDisconnected(OSError):
    """The client went away before the request body was complete (raised by `wsgi.input` reads), so a
    truncated body is never mistaken for a whole one."""


class BlockingReader:
    """read/readline/readlines/iteration, each blocking until enough of the body has arrived (the slots are
    the subclass's)."""

    if not TYPE_CHECKING:  # mypy would take () for every slot and refuse the assignments below
        __slots__ = ()
    _cond: Any
    _buf: bytearray
    _eof: bool

    _disconnected: bool

    def disconnect(self) -> None:
        """The client went away (on the event loop): a read waiting for more of the body raises."""
        with self._cond:
            if not self._eof:
                self._disconnected = True
                self._cond.notify_all()

    # -- the application's thread (with the lock held) ---------------------------------------------------
    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]  # cheap: bytearray drops a prefix by moving its start
        self._consumed(len(buf))
        return data

    def _consumed(self, left: int) -> None:
        """`left` bytes are still unread after a read: resume the loop's reading if it waits for room."""
        raise NotImplementedError

    def _wait(self) -> None:
        if self._disconnected:
            raise ClientDisconnected("the client disconnected before the request body was complete")
        self._cond.wait()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """`size` bytes (fewer only at the end of the body), or all that is left if size < 0; blocks until
        they have arrived; raises ClientDisconnected if the client leaves first."""
        if size is None or size < 0:
            size = sys.maxsize
        parts = []
        with self._cond:
            while size:
                if self._buf:
                    data = self._take(size)
                    parts.append(data)
                    size -= len(data)
                elif self._eof:
                    break
                else:
                    self._wait()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = sys.maxsize
        parts = []
        with self._cond:
            while size:
                buf = self._buf
                if buf:
                    end = buf.find(b"\n", 0, size)
                    if end >= 0:
                        parts.append(self._take(end + 1))
                        break
                    data = self._take(size)
                    parts.append(data)
                    size -= len(data)
                elif self._eof:
                    break
                else:
                    self._wait()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        pass
