"""The control frames of an HTTP/2 connection (RFC 9113 §6.3-6.9): PRIORITY, RST_STREAM, SETTINGS,
PUSH_PROMISE, PING, GOAWAY and WINDOW_UPDATE, each checked as the RFC says, answered in the connection's
output buffer (SETTINGS and PING acknowledgements) and told to its listener. `H2Machine`'s base
(corral.worker.http2.machine), whose slots these attributes are; the request frames (HEADERS, CONTINUATION,
DATA) and the errors are the machine's own.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from corral.worker.http2.frames import (
    ACK,
    MAX_MAX_FRAME_SIZE,
    MAX_WINDOW,
    MIN_MAX_FRAME_SIZE,
    PING,
    SETTINGS,
    ErrorCode,
    ProtocolError,
    Setting,
    put_frame,
)

if TYPE_CHECKING:
    from corral.worker.http2.state import StreamState

__all__ = ["ControlFrames"]

_U32 = struct.Struct(">L")
_PRIORITY = struct.Struct(">LB")
_SETTING = struct.Struct(">HL")

PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR.value
FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR.value


class ControlFrames:
    if not TYPE_CHECKING:  # mypy would take () for every slot and refuse the assignments below
        __slots__ = ()
    listener: Any
    out: bytearray
    streams: dict[int, StreamState]
    settings_first: bool
    send_window: int
    send_initial: int
    recv_initial: int
    max_frame_out: int
    _settings: dict[int, int]

    def _stream_error(self, stream_id: int, code: int, why: str) -> None:
        raise NotImplementedError

    def _closed_frame(self, stream_id: int, what: str) -> int:
        raise NotImplementedError

    def _priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "a PRIORITY frame on stream 0")
        if len(payload) != 5:
            self._stream_error(stream_id, ErrorCode.FRAME_SIZE_ERROR, f"a PRIORITY frame of {len(payload)} bytes")
            return
        if _PRIORITY.unpack(payload)[0] & 0x7FFFFFFF == stream_id:
            self._stream_error(stream_id, PROTOCOL_ERROR, f"stream {stream_id} depends on itself")
            return
        self.listener.on_priority()

    def _rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "a RST_STREAM frame on stream 0")
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"a RST_STREAM frame of {len(payload)} bytes")
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            self._closed_frame(stream_id, "RST_STREAM")
        else:  # closed; a frame from the client on it is now an error (it knows it is closed)
            stream.remote_open = stream.local_open = False
        self.listener.on_reset(stream_id, _U32.unpack(payload)[0], None)

    def _settings_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(PROTOCOL_ERROR, f"a SETTINGS frame on stream {stream_id}")
        if flags & ACK:
            if payload:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            window = self._settings[Setting.INITIAL_WINDOW_SIZE]
            delta = window - self.recv_initial
            if delta:  # our initial window holds from now on, for the streams already open too (§6.9.2)
                self.recv_initial = window
                for stream in self.streams.values():
                    stream.recv_window += delta
                    stream.recv_max += delta
            return
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"a SETTINGS frame of {len(payload)} bytes")
        self.settings_first = False
        changed = self._apply_settings(payload)
        put_frame(self.out, SETTINGS, ACK, 0, b"")
        self.listener.on_settings(changed)

    def _apply_settings(self, payload: bytes) -> bool:
        """The client's settings, in order; True when its initial window changed."""
        changed = False
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value}, over 2^31-1")
                delta = value - self.send_initial
                self.send_initial = value
                if delta:
                    changed = True
                    for stream in self.streams.values():  # §6.9.2: windows follow, negative ones included
                        stream.send_window += delta
                        if stream.send_window > MAX_WINDOW:
                            raise ProtocolError(
                                FLOW_CONTROL_ERROR,
                                "SETTINGS_INITIAL_WINDOW_SIZE that takes a stream's window over 2^31-1",
                            )
            elif key == Setting.MAX_FRAME_SIZE:
                if not MIN_MAX_FRAME_SIZE <= value <= MAX_MAX_FRAME_SIZE:
                    raise ProtocolError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}, out of range")
                self.max_frame_out = value
            elif key == Setting.ENABLE_PUSH or key == Setting.ENABLE_CONNECT_PROTOCOL:
                if value > 1:
                    raise ProtocolError(PROTOCOL_ERROR, f"{Setting(key).name} {value}, neither 0 nor 1")
            # HEADER_TABLE_SIZE: the server's blocks never use the dynamic table; MAX_CONCURRENT_STREAMS: no
            # push; MAX_HEADER_LIST_SIZE: advisory; unknown settings are ignored (§6.5.2).
        return changed

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(PROTOCOL_ERROR, f"a PING frame on stream {stream_id}")
        if len(payload) != 8:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"a PING frame of {len(payload)} bytes")
        if not flags & ACK:
            put_frame(self.out, PING, ACK, 0, payload)
            self.listener.on_ping()

    def _goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(PROTOCOL_ERROR, f"a GOAWAY frame on stream {stream_id}")
        if len(payload) < 8:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"a GOAWAY frame of {len(payload)} bytes")
        self.listener.on_goaway(_U32.unpack_from(payload, 4)[0])

    def _window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"a WINDOW_UPDATE frame of {len(payload)} bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise ProtocolError(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError(
                    FLOW_CONTROL_ERROR, "a WINDOW_UPDATE that takes the connection's window over 2^31-1"
                )
            self.listener.on_window(0)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            self._closed_frame(stream_id, "WINDOW_UPDATE")  # a closed stream's: in flight, ignored (§5.1)
            return
        if not increment:
            self._stream_error(stream_id, PROTOCOL_ERROR, f"a WINDOW_UPDATE of 0 on stream {stream_id}")
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(
                stream_id, FLOW_CONTROL_ERROR, "a WINDOW_UPDATE that takes a stream's window over 2^31-1"
            )
            return
        self.listener.on_window(stream_id)

    def _push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ProtocolError(PROTOCOL_ERROR, "a PUSH_PROMISE frame from a client")
