"""The worker's connection vocabulary, in one place: what phase a connection is in (what the server's tick
and a stopping server look at), why its reading is paused, where a response stands.

Phases and response states are IntEnums: comparing them is C-level int comparison, as cheap as the bare
numbers they replace. Pause reasons are declared as an IntFlag, but the hot path uses plain ints derived from
it (`BODY`, `PIPELINE`, ...): IntFlag's `|`, `&` and `~` run in Python (about half a microsecond each), and
flow control combines reasons on every pipelined request and body chunk.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "Phase",
    "Pause",
    "ResponseState",
    "IDLE",
    "HEAD",
    "BUSY",
    "CLOSED",
    "WEBSOCKET",
    "FRESH",
    "BODY",
    "PIPELINE",
    "PARKED",
    "CLOSING",
    "HANDSHAKE_PAUSE",
    "QUEUE_PAUSE",
    "WRITE_PAUSE",
]


class Phase(IntEnum):
    """A connection's phase (`HttpProtocol.phase`, `WebSocketCycle.phase`)."""

    IDLE = 0  # keep-alive: waiting for the first byte of a request (the keep-alive timer runs)
    HEAD = 1  # reading a request head (the header timer runs, from its first byte: never reset per byte)
    BUSY = 2  # a request is in progress or queued (the body timer runs while its body is being read)
    CLOSED = 3
    WEBSOCKET = 4  # after the 101: a stopping server closes it at once (going away)
    FRESH = 5  # accepted, nothing read yet: the header timer runs, but a stopping server may close it


class Pause(IntFlag):
    """Why a connection stopped reading: independent reasons, reading resumes when none is left."""

    BODY = 1  # unconsumed request body above the high-water mark
    PIPELINE = 2  # a complete request waits behind the active one (or unparsed pipelined bytes do)
    PARKED = 4  # the pool is full: the request waits for a slot
    CLOSING = 8  # an error response is pending: read nothing more
    HANDSHAKE = 16  # a WebSocket handshake waits for the application's answer
    QUEUE = 32  # the application lags behind the incoming WebSocket messages
    WRITE = 64  # the WebSocket peer does not read what is written


class ResponseState(IntEnum):
    """Where an HTTP response stands (`RequestCycle.state`)."""

    IDLE = 0  # nothing sent
    STARTED = 1  # http.response.start received (the head waits for the first body message)
    HEAD_SENT = 2
    COMPLETE = 3


IDLE, HEAD, BUSY, CLOSED, WEBSOCKET, FRESH = (
    Phase.IDLE,
    Phase.HEAD,
    Phase.BUSY,
    Phase.CLOSED,
    Phase.WEBSOCKET,
    Phase.FRESH,
)
BODY, PIPELINE, PARKED, CLOSING = int(Pause.BODY), int(Pause.PIPELINE), int(Pause.PARKED), int(Pause.CLOSING)
HANDSHAKE_PAUSE, QUEUE_PAUSE, WRITE_PAUSE = int(Pause.HANDSHAKE), int(Pause.QUEUE), int(Pause.WRITE)
