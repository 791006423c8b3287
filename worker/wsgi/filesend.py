"""`wsgi.file_wrapper` (PEP 3333), and a WSGI file response (the wrapper on a regular file) sent by the event
loop: `os.sendfile` from the file to a dup of the connection's socket, watched for writing while the client lags,
or, when bytes are still queued in the transport ahead of it (or for HEAD, or without a socket), read and written
through the transport in steps that respect its high-water mark. `FileSending` is part of `WsgiCycle`
(corral.worker.wsgi.cycle), kept apart as the one piece of it that deals with files and descriptors."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import stat
from typing import TYPE_CHECKING, Any

__all__ = ["FileSending", "FileWrapper", "file_span"]

error_logger = logging.getLogger("corral.error")

_SENDFILE_STEP = 1 << 20


class FileWrapper:
    """`wsgi.file_wrapper`: a file-like object as a response iterable (PEP 3333). A regular file with a
    `fileno()` is sent with `os.sendfile` instead of being iterated."""

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Any:
        read = self.filelike.read
        blksize = self.blksize
        while True:
            data = read(blksize)
            if not data:
                return
            yield data

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def file_span(wrapper: FileWrapper) -> tuple[int, int, int] | None:
    """(fd, offset, bytes to the end) when `wrapper` holds a regular file sendfile can read; else None."""
    filelike = wrapper.filelike
    try:
        fd = filelike.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        offset = filelike.tell() if hasattr(filelike, "tell") else 0
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    # tell(), not the fd's offset: a buffered file has read ahead of what it handed out.
    return fd, offset, max(0, st.st_size - offset)


class FileSending:
    """WsgiCycle's file sending (a mixin: no state of its own; `sendfile` is the cycle's slot: the file's
    (fd, offset, count, tail) until sending starts, then (out, fd, offset, count, tail, watching))."""

    # No slot of its own (the cycle has them); mypy, which would take the empty slots for all there are, sees
    # the attributes declared below instead.
    if not TYPE_CHECKING:
        __slots__ = ()
    else:
        sendfile: tuple | None
        protocol: Any
        outbox: Any
        is_head: bool
        disconnected: bool
        keep_alive: bool

        def _close_result(self) -> None: ...

        def _complete(self) -> None: ...

        def _respond_done(self) -> None: ...

    def _start_sendfile(self) -> None:
        fd, offset, count, tail = self.sendfile  # type: ignore[misc]  # set (a 4-tuple) before the loop is asked to send
        transport = self.protocol.transport
        sock = transport.get_extra_info("socket")
        if self.is_head or sock is None or transport.get_write_buffer_size():
            # Bytes are still queued in the transport ahead of the file (or there is no socket): copy
            # through the transport instead, in steps that respect its high-water mark.
            self._copy_file(fd, offset, count, tail)
            return
        try:
            # The transport's own fd is registered with the loop for reading; a dup of it can be watched
            # for writing separately. Nothing else writes to this connection while its response is ours.
            out = os.dup(sock.fileno())
        except OSError:
            self._copy_file(fd, offset, count, tail)
            return
        self.sendfile = (out, fd, offset, count, tail, False)
        self._sendfile_step()

    def _sendfile_step(self) -> None:
        if self.sendfile is None or len(self.sendfile) != 6:
            return  # ended already
        out, fd, offset, count, tail, watching = self.sendfile
        loop = self.outbox.loop or asyncio.get_running_loop()
        error: OSError | EOFError | None = None
        while count and not self.disconnected:
            try:
                sent = os.sendfile(out, fd, offset, min(count, _SENDFILE_STEP))
            except (BlockingIOError, InterruptedError):
                if not watching:
                    loop.add_writer(out, self._sendfile_step)
                self.sendfile = (out, fd, offset, count, tail, True)
                return
            except OSError as exc:
                error = exc
                break
            if sent == 0:  # the file shrank under us
                error = EOFError("file ended before its announced length")
                break
            offset += sent
            count -= sent
        if watching:
            loop.remove_writer(out)
        os.close(out)
        self.sendfile = None
        self._close_result()
        if self.disconnected:
            self._complete()
            return
        if error is not None:
            if not isinstance(error, ConnectionError):
                error_logger.error("sendfile of a WSGI file response failed: %s", error)
            self.keep_alive = False
            self._complete()
            return
        if tail:
            self.protocol.transport.write(tail)
        self._respond_done()

    def _copy_file(self, fd: int, offset: int, count: int, tail: bytes) -> None:
        """The fallback for sendfile: read and write through the transport, waiting for it to drain."""
        transport = self.protocol.transport
        flow = self.protocol.flow
        while count and not self.disconnected:
            if flow.write_paused:
                self.sendfile = (fd, offset, count, tail)
                flow.add_drain_callback(lambda _=None: self._copy_file(*self.sendfile))
                return
            data = os.pread(fd, min(count, 256 * 1024), offset)
            if not data:
                self.keep_alive = False
                break
            transport.write(data)
            offset += len(data)
            count -= len(data)
        self.sendfile = None
        self._close_result()
        if self.disconnected:
            self._complete()
            return
        if tail and not count:
            transport.write(tail)
        self._respond_done()
