"""HTTP/2's wire vocabulary (RFC 9113 §4, §6, §7), in one place: frame types, flags, settings, error codes,
and the frames the server writes, packed with `struct` straight into the connection's output buffer.

The enums name things in logs and tests; the hot path compares the plain ints below them (an IntEnum
compares at C speed too, but each module-level name lookup of a member is an attribute fetch).
"""

from __future__ import annotations

import struct
from enum import IntEnum

__all__ = [
    "ErrorCode",
    "FrameType",
    "Setting",
    "ProtocolError",
    "PREFACE",
    "FRAME_HEAD",
    "MAX_WINDOW",
    "MIN_MAX_FRAME_SIZE",
    "MAX_MAX_FRAME_SIZE",
    "DEFAULT_WINDOW",
    "put_frame",
    "put_settings",
    "put_window_update",
    "put_rst_stream",
    "put_goaway",
    "error_name",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error code {code:#x}"


class ProtocolError(Exception):
    """A connection error (RFC 9113 §5.4.1): the GOAWAY carrying `code` is queued, the connection is over.
    `str()` says what the peer did wrong, for the log."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(what)
        self.code = code

    def __str__(self) -> str:
        return f"{self.args[0]} ({error_name(self.code)})"


# Plain ints for the hot path.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
MIN_MAX_FRAME_SIZE = 16384
MAX_MAX_FRAME_SIZE = 2**24 - 1

#: The 9-byte frame head as (length << 8 | type, flags, stream id): one unpack, one shift, one mask.
FRAME_HEAD = struct.Struct(">LBL")
_pack_head = FRAME_HEAD.pack
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_TWO_U32 = struct.Struct(">LL")


def put_frame(out: bytearray, ftype: int, flags: int, stream_id: int, payload: bytes | bytearray | memoryview) -> None:
    out += _pack_head(len(payload) << 8 | ftype, flags, stream_id)
    out += payload


def put_settings(out: bytearray, settings: dict[int, int]) -> None:
    payload = b"".join(_SETTING.pack(key, value) for key, value in settings.items())
    put_frame(out, SETTINGS, 0, 0, payload)


def put_window_update(out: bytearray, stream_id: int, increment: int) -> None:
    out += _pack_head(4 << 8 | WINDOW_UPDATE, 0, stream_id)
    out += _U32.pack(increment)


def put_rst_stream(out: bytearray, stream_id: int, code: int) -> None:
    out += _pack_head(4 << 8 | RST_STREAM, 0, stream_id)
    out += _U32.pack(code)


def put_goaway(out: bytearray, last_stream_id: int, code: int, debug: bytes = b"") -> None:
    put_frame(out, GOAWAY, 0, 0, _TWO_U32.pack(last_stream_id, code) + debug)
