"""The server side of one HTTP/2 connection as a state machine, apart from I/O (RFC 9113): fed the bytes the
client sent (`receive`), it calls its listener for what they mean (a request, body bytes, a reset...) and
queues what the server must answer in `out` (SETTINGS and PING acknowledgements, WINDOW_UPDATEs, RST_STREAM,
GOAWAY); the send methods (corral.worker.http2.output) frame responses into the same buffer. The asyncio side
(corral.worker.http2.protocol) writes `out` once per read and once per loop iteration of responses.

Why not the `h2` library, which this replaced: measured on the hello-world over h2c (16 streams per read),
`h2` and `hpack` were about three quarters of the worker's CPU per request - 718k instructions against 87k
for the same request over HTTP/1.1. Per frame they build event and frame objects, run a state machine
written as tables of transitions, and validate every header through a chain of generators; per response
they encode the head with HPACK's dynamic table (so nothing can be encoded once). Here the common path is
plain code: one `struct` unpack per frame head, windows as ints, no object per frame, listener methods
called directly, a request block's validated head kept while the dynamic table does not change
(`RequestHead`, corral.worker.http2.fields), response blocks encoded once (state-independent), and one output
buffer. The strictness `h2` had and h2spec checks is kept: every frame's size, stream and state rules,
padding, flow-control overflow, CONTINUATION sequencing and the RFC 9113 §8 field checks (stream errors
answered with RST_STREAM, connection errors with GOAWAY and `ProtocolError`). The control frames' rules are
in corral.worker.http2.control (`ControlFrames`, this class's base); the request frames' are here; what the
server sends is framed by its other base, `OutputFrames` (corral.worker.http2.output).

Stream states (§5.1) are two booleans on `StreamState` (corral.worker.http2.state), `remote_open` and
`local_open`; a stream leaves `streams` when both are false or it is reset. A stream id at most `highest` that
is not in `streams` is closed, unless it was skipped (§5.1.1: never opened; a frame on it is a PROTOCOL_ERROR)
or the server reset it (frames still in flight are then ignored, §5.4.2).
"""

from __future__ import annotations

import base64
import struct
from typing import Protocol

from corral.worker.http2.control import ControlFrames
from corral.worker.http2.fields import (
    Decoder,
    HeaderListTooLarge,
    HpackError,
    MalformedHeaders,
    RequestHead,
    check_trailers,
    request_head,
)
from corral.worker.http2.frames import (
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME_HEAD,
    GOAWAY,
    HEADERS,
    MIN_MAX_FRAME_SIZE,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    ErrorCode,
    FrameType,
    ProtocolError,
    Setting,
    put_goaway,
    put_rst_stream,
    put_settings,
    put_window_update,
)
from corral.worker.http2.output import OutputFrames
from corral.worker.http2.state import LocalSettings, StreamState

__all__ = ["H2Machine", "Listener"]

_U32 = struct.Struct(">L")

PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR.value
FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR.value
STREAM_CLOSED = ErrorCode.STREAM_CLOSED.value
FRAME_SIZE_ERROR = ErrorCode.FRAME_SIZE_ERROR.value
REFUSED_STREAM = ErrorCode.REFUSED_STREAM.value
COMPRESSION_ERROR = ErrorCode.COMPRESSION_ERROR.value
ENHANCE_YOUR_CALM = ErrorCode.ENHANCE_YOUR_CALM.value

_MAX_SKIPPED = 64  # ranges of stream ids a client skipped, remembered to tell "never opened" from "closed"
_MAX_HEADS = 64  # request heads kept per connection (cleared when full)
_HEAD_BLOCK_MAX = 1024  # a longer block is not kept: a warm client's repeated blocks are a few dozen bytes


class Listener(Protocol):
    """What the connection tells the server. Each is called while `receive` runs; a listener that ends the
    connection (`H2Machine.close`) stops the rest of the bytes from being read."""

    def on_request(self, stream: StreamState, head: RequestHead, end_stream: bool) -> None: ...

    def on_data(self, stream_id: int, data: bytes, flow_controlled: int, end_stream: bool) -> None: ...

    def on_end(self, stream_id: int) -> None: ...  # the request's trailers (dropped) ended it

    def on_reset(self, stream_id: int, code: int, why: str | None) -> None: ...  # why: None for the client's

    def on_window(self, stream_id: int) -> None: ...  # 0: the connection's window

    def on_settings(self, window_changed: bool) -> None: ...

    def on_ping(self) -> None: ...

    def on_priority(self) -> None: ...

    def on_goaway(self, code: int) -> None: ...


def _window_increment(processed: int, window: int, maximum: int) -> int:
    """How much of a window to give back once `processed` bytes were consumed: nothing until half the window
    is consumed (or the window is shut and over 1 KiB waits), so WINDOW_UPDATEs stay few."""
    if (window == 0 and processed > min(1024, maximum // 4)) or processed >= maximum // 2:
        return min(processed, maximum - window)
    return 0


class H2Machine(ControlFrames, OutputFrames):
    __slots__ = (
        "listener",
        "out",
        "buf",
        "need",
        "preface",
        "settings_first",
        "streams",
        "highest",
        "skipped",
        "reset_ids",
        "max_streams",
        "recv_initial",
        "max_frame_in",
        "send_window",
        "send_initial",
        "max_frame_out",
        "recv_window",
        "recv_max",
        "recv_processed",
        "decoder",
        "heads",
        "block_stream",
        "block_flags",
        "block_parts",
        "block_frames",
        "max_continuations",
        "hpack_fresh",
        "refusing",
        "closed",
        "_settings",
    )

    def __init__(self, listener: Listener, local: LocalSettings) -> None:
        self.listener = listener
        self.out = bytearray()
        self.buf = bytearray()  # a frame still coming
        self.need = 0  # the bytes `buf` must hold before it is worth parsing again
        self.preface = PREFACE  # what is still expected of the client's preface
        self.settings_first = True  # the preface is followed by a SETTINGS frame (§3.4)
        self.streams: dict[int, StreamState] = {}
        self.highest = 0  # the highest stream id the client opened
        self.skipped: list[tuple[int, int]] = []
        self.reset_ids: dict[int, None] = {}
        self.max_streams = local.max_streams
        # A stream's receive window: RFC 9113's 65535 until the client acknowledges our SETTINGS (it may send
        # that much before it reads them), then ours.
        self.recv_initial = DEFAULT_WINDOW
        self.max_frame_in = local.max_frame_size
        self.send_window = DEFAULT_WINDOW  # the connection's window for what the server sends
        self.send_initial = DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame_out = MIN_MAX_FRAME_SIZE  # the client's SETTINGS_MAX_FRAME_SIZE
        self.recv_window = self.recv_max = max(local.connection_window, DEFAULT_WINDOW)
        self.recv_processed = 0
        self.decoder = Decoder(local.header_table_size, local.max_header_list_size)
        self.heads: dict[bytes, RequestHead] = {}  # request blocks -> their validated heads, while the table holds
        self.block_stream = 0  # a header block in CONTINUATION frames is open on this stream
        self.block_flags = 0
        self.block_parts: list[bytes] = []
        self.block_frames = 0
        self.max_continuations = local.max_continuations
        self.hpack_fresh = True
        self.refusing = False  # GOAWAY sent: new streams are refused
        self.closed = False
        self._settings = {
            Setting.MAX_CONCURRENT_STREAMS: local.max_streams,
            Setting.INITIAL_WINDOW_SIZE: local.initial_window,
            Setting.MAX_FRAME_SIZE: local.max_frame_size,
            Setting.MAX_HEADER_LIST_SIZE: local.max_header_list_size,
            Setting.HEADER_TABLE_SIZE: local.header_table_size,
            Setting.ENABLE_CONNECT_PROTOCOL: 0,
        }

    # ------------------------------------------------------------------ opening

    def initiate(self) -> None:
        """The server's preface: its SETTINGS, and the connection window beyond the default."""
        out = self.out
        put_settings(out, self._settings)
        if self.recv_max > DEFAULT_WINDOW:
            put_window_update(out, 0, self.recv_max - DEFAULT_WINDOW)

    def initiate_upgrade(self, http2_settings: bytes) -> StreamState:
        """After `101 Switching Protocols` for `Upgrade: h2c` (RFC 7540 §3.2): the client's settings from the
        HTTP2-Settings header (base64url of a SETTINGS payload; the 101 acknowledges them), and stream 1 -
        the upgraded request, half-closed (remote). Raises ValueError for a malformed header."""
        text = http2_settings.strip()
        payload = base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)
        if len(payload) % 6:
            raise ValueError("HTTP2-Settings is not a SETTINGS payload")
        self.initiate()
        try:
            self._apply_settings(payload)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        self.highest = 1
        stream = self.streams[1] = StreamState(1, self.send_initial, self.recv_initial, False, None)
        return stream

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes) -> None:
        """Process the client's bytes. Raises ProtocolError for a connection error (its GOAWAY queued)."""
        if self.closed:
            return
        try:
            self._receive(data)
        except ProtocolError as exc:
            if not self.closed:
                put_goaway(self.out, self.highest, exc.code)
                self.closed = True
            raise

    def _receive(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            buf += data
            if len(buf) < self.need:
                return
            data = bytes(buf)
            buf.clear()
        if self.preface:
            want = self.preface
            if data[: len(want)] != want[: len(data)]:
                raise ProtocolError(PROTOCOL_ERROR, "an invalid connection preface")
            self.preface = want[len(data) :]
            data = data[len(want) :]
        end = len(data)
        pos = 0
        unpack = FRAME_HEAD.unpack_from
        while end - pos >= 9:
            word, flags, stream_id = unpack(data, pos)
            length = word >> 8
            if length > self.max_frame_in:
                raise ProtocolError(
                    ErrorCode.FRAME_SIZE_ERROR,
                    f"a frame of {length} bytes, over SETTINGS_MAX_FRAME_SIZE ({self.max_frame_in})",
                )
            stop = pos + 9 + length
            if stop > end:
                self.need = stop - pos
                break
            ftype = word & 0xFF
            stream_id &= 0x7FFFFFFF
            payload = data[pos + 9 : stop]
            pos = stop
            if self.block_stream and ftype != CONTINUATION:
                raise ProtocolError(
                    PROTOCOL_ERROR,
                    f"a {_frame_name(ftype)} frame inside the header block of stream {self.block_stream}",
                )
            if ftype == HEADERS:
                self._headers(flags, stream_id, payload)
            elif ftype == DATA:
                self._data(flags, stream_id, payload)
            elif self.settings_first and ftype != SETTINGS:
                raise ProtocolError(PROTOCOL_ERROR, f"a {_frame_name(ftype)} frame before the client's SETTINGS")
            else:
                handler = _HANDLERS.get(ftype)
                if handler is not None:  # a frame of an unknown type is ignored (§4.1, §5.5)
                    handler(self, flags, stream_id, payload)
            if self.closed:
                return
        else:
            self.need = 9
        if pos < end:
            self.buf += data[pos:] if pos else data

    def _stream_error(self, stream_id: int, code: int, why: str) -> None:
        """RST_STREAM (§5.4.2): the stream is closed; frames for it still in flight will be ignored."""
        put_rst_stream(self.out, stream_id, code)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.remote_open = stream.local_open = False
        self._remember_reset(stream_id)
        self.listener.on_reset(stream_id, code, why)

    def _closed_frame(self, stream_id: int, what: str) -> int:
        """A frame for a stream not in `streams`: raises for an idle (never opened) stream; returns 1 when the
        server reset it (ignore the frame), 0 when it is closed."""
        if stream_id > self.highest or stream_id & 1 == 0 or any(lo <= stream_id <= hi for lo, hi in self.skipped):
            raise ProtocolError(PROTOCOL_ERROR, f"a {what} frame on stream {stream_id}, which was never opened")
        return 1 if stream_id in self.reset_ids else 0

    def _strip_padding(self, payload: bytes, what: str) -> bytes:
        if not payload or payload[0] >= len(payload):
            raise ProtocolError(PROTOCOL_ERROR, f"a {what} frame whose padding is as long as the frame")
        return payload[1 : len(payload) - payload[0]]

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "a HEADERS frame on stream 0")
        if self.settings_first:
            raise ProtocolError(PROTOCOL_ERROR, "a HEADERS frame before the client's SETTINGS")
        if flags & PADDED:
            payload = self._strip_padding(payload, "HEADERS")
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "a HEADERS frame too short for its priority")
            if _U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
                flags |= 0x100  # depends on itself (§5.3.1): a stream error, once the block is decoded
            payload = payload[5:]
        if flags & END_HEADERS:
            self._block(flags, stream_id, payload)
        else:
            self.block_stream = stream_id
            self.block_flags = flags
            self.block_parts = [payload]
            self.block_frames = 0

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != self.block_stream or not stream_id:
            if self.block_stream:
                raise ProtocolError(
                    PROTOCOL_ERROR,
                    f"a CONTINUATION frame on stream {stream_id} inside the header block of stream {self.block_stream}",
                )
            raise ProtocolError(
                PROTOCOL_ERROR, f"a CONTINUATION frame on stream {stream_id} with no header block to continue"
            )
        self.block_frames += 1
        if self.block_frames > self.max_continuations:
            raise ProtocolError(
                ENHANCE_YOUR_CALM, f"a header block in more than {self.max_continuations} CONTINUATION frames"
            )
        self.block_parts.append(payload)
        if flags & END_HEADERS:
            block = b"".join(self.block_parts)
            self.block_stream = 0
            self.block_parts = []
            self._block(self.block_flags, stream_id, block)

    def _decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The block's fields, and whether decoding it changed the dynamic table (then the heads kept may
        decode differently now: they are dropped)."""
        decoder = self.decoder
        try:
            return decoder.decode(block), decoder.changed
        except HpackError as exc:
            raise ProtocolError(COMPRESSION_ERROR, str(exc)) from None
        except HeaderListTooLarge as exc:
            raise ProtocolError(ENHANCE_YOUR_CALM, str(exc)) from None
        finally:
            if decoder.changed:
                decoder.changed = False
                self.heads.clear()

    def _block(self, flags: int, stream_id: int, block: bytes) -> None:
        """A complete header block: a new request, or the trailers of one."""
        stream = self.streams.get(stream_id)
        if stream is None and stream_id > self.highest:
            if stream_id & 1 == 0:
                raise ProtocolError(
                    PROTOCOL_ERROR, f"a HEADERS frame opening stream {stream_id}, an even (server-initiated) id"
                )
            heads = self.heads
            head = heads.get(block)
            if head is None:
                fields, changed = self._decode(block)
                try:
                    head = request_head(fields)
                except MalformedHeaders as exc:
                    self._open_id(stream_id)
                    self._stream_error(stream_id, PROTOCOL_ERROR, f"a malformed request: {exc}")
                    return
                if not changed and len(block) <= _HEAD_BLOCK_MAX:  # decoding it again gives the same: keep it
                    if len(heads) >= _MAX_HEADS:
                        heads.clear()
                    heads[block] = head
            self._open_id(stream_id)
            if flags & 0x100:
                self._stream_error(stream_id, PROTOCOL_ERROR, f"stream {stream_id} depends on itself")
                return
            if self.refusing:
                put_rst_stream(self.out, stream_id, REFUSED_STREAM)
                self._remember_reset(stream_id)
                return
            if len(self.streams) >= self.max_streams:
                self._stream_error(
                    stream_id,
                    REFUSED_STREAM,
                    f"more than {self.max_streams} streams open (SETTINGS_MAX_CONCURRENT_STREAMS)",
                )
                return
            end = flags & END_STREAM
            expected = head.content_length
            if end and expected:
                self._stream_error(
                    stream_id, PROTOCOL_ERROR, f"a request without DATA and a content-length of {expected}"
                )
                return
            stream = StreamState(stream_id, self.send_initial, self.recv_initial, not end, expected)
            self.streams[stream_id] = stream
            self.listener.on_request(stream, head, bool(end))
            return
        fields = self._decode(block)[0]  # kept in step with the client's table whatever the stream's state
        if stream is None:
            if self._closed_frame(stream_id, "HEADERS"):
                return  # the server reset it: ignored
            raise ProtocolError(STREAM_CLOSED, f"a frame on stream {stream_id}, which is closed")
        if not stream.remote_open:
            self._stream_error(stream_id, STREAM_CLOSED, f"a HEADERS frame on stream {stream_id} after its END_STREAM")
            return
        # Trailers: they end the request (§8.1), and are dropped (ASGI has no message for them).
        if flags & 0x100:
            self._stream_error(stream_id, PROTOCOL_ERROR, f"stream {stream_id} depends on itself")
            return
        if not flags & END_STREAM:
            self._stream_error(stream_id, PROTOCOL_ERROR, "a second HEADERS frame without END_STREAM")
            return
        try:
            check_trailers(fields)
        except MalformedHeaders as exc:
            self._stream_error(stream_id, PROTOCOL_ERROR, f"malformed trailers: {exc}")
            return
        if stream.expected is not None and stream.received != stream.expected:
            self._stream_error(
                stream_id,
                PROTOCOL_ERROR,
                f"{stream.received} bytes of body, not the content-length of {stream.expected}",
            )
            return
        self._remote_end(stream)
        self.listener.on_end(stream_id)

    def _open_id(self, stream_id: int) -> None:
        highest = self.highest
        if stream_id > highest + 2:
            skipped = self.skipped
            skipped.append((highest + 1, stream_id - 1))
            if len(skipped) > _MAX_SKIPPED:
                del skipped[0]
        self.highest = stream_id

    def _remote_end(self, stream: StreamState) -> None:
        stream.remote_open = False
        if not stream.local_open:
            del self.streams[stream.stream_id]

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "a DATA frame on stream 0")
        if self.settings_first:
            raise ProtocolError(PROTOCOL_ERROR, "a DATA frame before the client's SETTINGS")
        size = len(payload)  # flow control counts the padding too (§6.9.1)
        data = self._strip_padding(payload, "DATA") if flags & PADDED else payload
        self.recv_window -= size
        if self.recv_window < 0:
            raise ProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            if size:
                self._processed(None, size)  # nobody reads it: the connection's window comes back at once
            if stream is not None:
                self._stream_error(stream_id, STREAM_CLOSED, f"a DATA frame on stream {stream_id} after its END_STREAM")
            elif not self._closed_frame(stream_id, "DATA"):
                self._stream_error(stream_id, STREAM_CLOSED, f"a frame on stream {stream_id}, which is closed")
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._processed(None, size)
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, "DATA beyond the stream's flow-control window")
            return
        end = flags & END_STREAM
        expected = stream.expected
        if expected is not None:
            stream.received += len(data)
            if stream.received > expected or (end and stream.received != expected):
                self._processed(None, size)
                self._stream_error(
                    stream_id,
                    PROTOCOL_ERROR,
                    f"{'more' if stream.received > expected else 'less'} body than the content-length of {expected}",
                )
                return
        if end:
            self._remote_end(stream)
        self.listener.on_data(stream_id, data, size, bool(end))

    # ------------------------------------------------------------------ flow control of what is received

    def acknowledge(self, stream_id: int, size: int) -> None:
        """`size` flow-controlled bytes of `stream_id` were handed to the application: give the windows back
        (WINDOW_UPDATE, batched)."""
        if self.closed:
            return
        stream = self.streams.get(stream_id)
        self._processed(stream if stream is not None and stream.remote_open else None, size)

    def _processed(self, stream: StreamState | None, size: int) -> None:
        self.recv_processed += size
        increment = _window_increment(self.recv_processed, self.recv_window, self.recv_max)
        if increment:
            self.recv_processed = 0
            self.recv_window += increment
            put_window_update(self.out, 0, increment)
        if stream is not None:
            stream.recv_processed += size
            increment = _window_increment(stream.recv_processed, stream.recv_window, stream.recv_max)
            if increment:
                stream.recv_processed = 0
                stream.recv_window += increment
                put_window_update(self.out, stream.stream_id, increment)


def _frame_name(ftype: int) -> str:
    try:
        return FrameType(ftype).name
    except ValueError:
        return f"type {ftype:#x}"


_HANDLERS = {
    PRIORITY: H2Machine._priority,
    RST_STREAM: H2Machine._rst_stream,
    SETTINGS: H2Machine._settings_frame,
    PUSH_PROMISE: H2Machine._push_promise,
    PING: H2Machine._ping,
    GOAWAY: H2Machine._goaway,
    WINDOW_UPDATE: H2Machine._window_update,
    CONTINUATION: H2Machine._continuation,
}
