"""What the server sends on an HTTP/2 connection (RFC 9113), framed into the connection's output buffer: response
heads and trailers (in CONTINUATIONs past the client's frame size), DATA, the end of a stream, RST_STREAM and
GOAWAY. `H2Machine`'s base (corral.worker.http2.machine), whose slots these attributes are: the machine reads
the client's frames, this side writes the server's. When and how much to send - the flow-control waits, one
write per loop iteration - is the asyncio side's (corral.worker.http2.send).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.worker.http2.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEAD,
    HEADERS,
    ErrorCode,
    put_frame,
    put_goaway,
    put_rst_stream,
)

if TYPE_CHECKING:
    from corral.worker.http2.state import StreamState

__all__ = ["OutputFrames"]

_pack_head = FRAME_HEAD.pack

NO_ERROR = ErrorCode.NO_ERROR.value

_MAX_RESET_IDS = 256  # streams the server reset lately, whose in-flight frames are ignored
_SIZE_UPDATE_0 = b"\x20"  # HPACK: dynamic table size 0 (the server's blocks never use the table)


class OutputFrames:
    if not TYPE_CHECKING:  # mypy would take () for every slot and refuse the assignments below
        __slots__ = ()
    out: bytearray
    streams: dict[int, StreamState]
    highest: int
    reset_ids: dict[int, None]
    send_window: int
    max_frame_out: int
    hpack_fresh: bool
    refusing: bool
    closed: bool

    def send_headers(self, stream: StreamState, block: bytes, end_stream: bool) -> None:
        """A response head or trailers (an HPACK block, corral.worker.http2.fields), in CONTINUATIONs past the
        client's frame size."""
        if not stream.local_open:
            return
        if self.hpack_fresh:  # the client's table for our blocks: size 0 once, whatever its settings say
            self.hpack_fresh = False
            block = _SIZE_UPDATE_0 + block
        out = self.out
        stream_id = stream.stream_id
        flags = END_STREAM if end_stream else 0
        size = self.max_frame_out
        if len(block) <= size:
            out += _pack_head(len(block) << 8 | HEADERS, flags | END_HEADERS, stream_id)
            out += block
        else:
            put_frame(out, HEADERS, flags, stream_id, block[:size])
            for start in range(size, len(block), size):
                piece = block[start : start + size]
                put_frame(out, CONTINUATION, END_HEADERS if start + size >= len(block) else 0, stream_id, piece)
        if end_stream:
            self._local_end(stream)

    def send_data(self, stream: StreamState, data: bytes | memoryview, end_stream: bool) -> None:
        """One DATA frame: the caller keeps it within the windows and the client's frame size."""
        size = len(data)
        stream.send_window -= size
        self.send_window -= size
        out = self.out
        out += _pack_head(size << 8 | DATA, END_STREAM if end_stream else 0, stream.stream_id)
        out += data
        if end_stream:
            self._local_end(stream)

    def end_stream(self, stream: StreamState) -> None:
        if stream.local_open:
            self.out += _pack_head(DATA, END_STREAM, stream.stream_id)
            self._local_end(stream)

    def _local_end(self, stream: StreamState) -> None:
        stream.local_open = False
        if not stream.remote_open:
            self.streams.pop(stream.stream_id, None)

    def reset(self, stream: StreamState, code: int) -> None:
        """RST_STREAM from the server (the application failed, a window stayed shut...)."""
        if stream.closed:
            return
        put_rst_stream(self.out, stream.stream_id, code)
        stream.remote_open = stream.local_open = False
        self.streams.pop(stream.stream_id, None)
        self._remember_reset(stream.stream_id)

    def go_away(self) -> None:
        """Graceful GOAWAY (NO_ERROR): the streams opened so far go on, new ones are refused."""
        if not self.refusing and not self.closed:
            self.refusing = True
            put_goaway(self.out, self.highest, NO_ERROR)

    def close(self, code: int) -> None:
        """GOAWAY with `code`: nothing more is read."""
        if not self.closed:
            self.closed = True
            put_goaway(self.out, self.highest, code)

    def take(self) -> bytearray:
        """What is queued to be written; the buffer starts afresh (the transport may keep the old one)."""
        out = self.out
        self.out = bytearray()
        return out

    def _remember_reset(self, stream_id: int) -> None:
        """A stream the server reset (here or on a stream error): the machine ignores the frames for it still in
        flight (`_closed_frame`) while it is among the latest `_MAX_RESET_IDS`."""
        reset_ids = self.reset_ids
        reset_ids[stream_id] = None
        if len(reset_ids) > _MAX_RESET_IDS:
            del reset_ids[next(iter(reset_ids))]
