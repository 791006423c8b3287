"""WebSocket (RFC 6455) protocol state, apart from I/O: handshake checks and bytes, frames in, events out.

Nothing here touches a transport, a timer or the event loop (the h11 idea, as in `corral.worker.http1.connection`):
`corral.worker.websocket.protocol` feeds bytes in and writes the bytes that come out.

The frame protocol is `websockets`' sans-I/O `Protocol` (its C masking, its validation, permessage-deflate,
the closing handshake). It was measured against wsproto 1.3 for the echo of one masked client frame (bytes
in, events out, echo frame out, same process, same data): websockets 17 took 5.8 us for 16 bytes, 6.4 us for
1 KiB and 1.05 ms for 1 MiB; wsproto 16.6 us, 19.1 us and 3.8 ms (pure-Python masking and a Python-level
UTF-8 decoder). The fast path below brings the common case to 1.3 us (16 bytes) and 36 us (1 MiB).
On top of it `WebSocketConnection` adds:

- a fast path for the common frame: a complete, final, masked text or binary frame, with no extension
  negotiated and no fragmented message in progress, is unmasked (websockets' C `apply_mask`) and handed
  over without going through the generator-based parser; every other frame (control frames, fragments,
  reserved bits, bad opcodes, unmasked frames, compressed frames) goes to `websockets`, which is fed whole
  frames only so that it always stands at a frame boundary when the fast path runs;
- message assembly (fragments) and UTF-8 validation of text messages (close 1007), which the sans-I/O
  layer of websockets leaves to its I/O layers;
- outgoing data frames written directly (an unmasked server frame is a 2-10 byte head and the payload)
  when no extension is active.

`handshake()` checks an upgrade request's headers (RFC 6455 section 4.2.1) and negotiates
permessage-deflate; `accept_response()` encodes the 101.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import Any

from websockets.exceptions import InvalidHeader, InvalidState, NegotiationError
from websockets.exceptions import ProtocolError as WSProtocolError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.protocol import CLOSED, CLOSING, OPEN, Protocol, Side
from websockets.speedups import apply_mask

__all__ = [
    "WebSocketConnection",
    "HandshakeFailure",
    "handshake",
    "accept_key",
    "accept_response",
    "MESSAGE",
    "PONG_EVENT",
    "CLOSE_EVENT",
]

logger = logging.getLogger("corral.error")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

# Event kinds returned by `WebSocketConnection.receive_data` (tuples: kind, ...).
MESSAGE = 0  # (MESSAGE, str | bytes)
PONG_EVENT = 1  # (PONG_EVENT, payload)
CLOSE_EVENT = 2  # (CLOSE_EVENT, code, reason): the peer closed, or the connection failed (code we sent)

# websockets 16 (the last release for Python 3.10) exports only the Opcode enum, 17 also its members.
TEXT, BINARY, CONT, PONG, CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG, Opcode.CLOSE

_TEXT_FIN_MASKED = 0x81
_BINARY_FIN_MASKED = 0x82
#: Fragments a message may use before the size of its fragments is checked: past them, the fragments must
#: average MIN_FRAGMENT bytes. Each fragment costs a trip through the frame parser and ~40 bytes of list
#: and object overhead whatever its size, so a 16 MiB message sent as 1-byte fragments would otherwise
#: cost seconds of CPU and ~700 MiB.
FREE_FRAGMENTS = 1024
MIN_FRAGMENT = 64

# Payloads up to this size are joined with their frame head into one bytes object; bigger ones are
# returned as (head, payload) so the payload is not copied.
_JOIN_LIMIT = 16384


class HandshakeFailure(Exception):
    """The upgrade request is not a valid WebSocket handshake: answer `status` (400 or 426) and close."""

    def __init__(self, status: int, detail: str, headers: bytes = b"") -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers  # extra response header lines, e.g. Sec-WebSocket-Version for a 426


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def is_websocket_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    """The request asks for `Upgrade: websocket` (whatever else may be wrong with it)."""
    for name, value in headers:  # noqa: SIM110 - a loop, not any(): no generator per request
        if name == b"upgrade" and b"websocket" in _tokens(value):
            return True
    return False


def handshake(
    method: bytes, http_version: str, headers: list[tuple[bytes, bytes]], deflate: bool
) -> tuple[bytes, list[str], bytes, list[Any]]:
    """Check an upgrade request; returns (Sec-WebSocket-Accept, offered subprotocols, the
    Sec-WebSocket-Extensions response value or b"", extensions to run).

    Raises HandshakeFailure for a request that is not a valid version-13 opening handshake.
    """
    if method != b"GET":
        raise HandshakeFailure(400, "a WebSocket handshake is a GET")
    if http_version != "1.1":
        raise HandshakeFailure(400, "a WebSocket handshake needs HTTP/1.1")
    key = version = None
    connection_upgrade = False
    protocols: list[str] = []
    offers: list[bytes] = []
    for name, value in headers:
        if name == b"sec-websocket-key":
            if key is not None:
                raise HandshakeFailure(400, "repeated Sec-WebSocket-Key")
            key = value.strip()
        elif name == b"sec-websocket-version":
            version = value.strip()
        elif name == b"connection":
            connection_upgrade = connection_upgrade or b"upgrade" in _tokens(value)
        elif name == b"sec-websocket-protocol":
            protocols.extend(t.strip() for t in value.decode("latin-1").split(",") if t.strip())
        elif name == b"sec-websocket-extensions":
            offers.append(value)
    if version != b"13":
        # RFC 6455 section 4.4: say which version this server speaks.
        raise HandshakeFailure(426, "unsupported WebSocket version", b"sec-websocket-version: 13\r\n")
    if not connection_upgrade:
        raise HandshakeFailure(400, "missing Connection: Upgrade")
    if key is None:
        raise HandshakeFailure(400, "missing Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeFailure(400, "invalid Sec-WebSocket-Key")
    extension_header = b""
    extensions: list[Any] = []
    if deflate and offers:
        extension_header, extensions = negotiate_deflate(offers)
    return accept_key(key), protocols, extension_header, extensions


# websockets' memory-conscious server settings (the ones uvicorn uses too): a 4 KiB window each way, memLevel 5 -
# about 64 KiB of zlib state per socket instead of about 320 KiB. The factory keeps no state of a negotiation
# (each accepted offer gets an extension object of its own): one serves every handshake.
_DEFLATE = ServerPerMessageDeflateFactory(
    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
)


def negotiate_deflate(offers: list[bytes]) -> tuple[bytes, list[Any]]:
    """Accept the first acceptable permessage-deflate offer (RFC 7692); others are ignored."""
    factory = _DEFLATE
    for offer in offers:
        try:
            parsed = parse_extension(offer.decode("latin-1"))
        except InvalidHeader:
            continue  # a malformed offer: ignore it rather than fail the handshake
        for name, params in parsed:
            if name != factory.name:
                continue
            try:
                response_params, extension = factory.process_request_params(params, [])
            except NegotiationError:
                continue
            return build_extension([(name, response_params)]).encode("latin-1"), [extension]
    return b"", []


def accept_response(
    accept: bytes, default_headers: bytes, subprotocol: bytes | None, extension_header: bytes, extra: bytes
) -> bytes:
    """The 101 Switching Protocols response; `extra` is the application's (validated) header block."""
    parts = [
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
        accept,
        b"\r\n",
    ]
    if extension_header:
        parts += (b"sec-websocket-extensions: ", extension_header, b"\r\n")
    if subprotocol:
        parts += (b"sec-websocket-protocol: ", subprotocol, b"\r\n")
    parts += (default_headers, extra, b"\r\n")
    return b"".join(parts)


class _QuietLogger:
    """What websockets' Protocol logs through: debug when asked for, its one INFO line per closed
    connection dropped, errors to corral's error log."""

    __slots__ = ("_logger",)

    def __init__(self, target: logging.Logger) -> None:
        self._logger = target

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging.Logger's name, which websockets calls
        return self._logger.isEnabledFor(level)

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self._logger.debug(*args, **kwargs)

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass

    def warning(self, *args: Any, **kwargs: Any) -> None:
        self._logger.warning(*args, **kwargs)

    def error(self, *args: Any, **kwargs: Any) -> None:
        self._logger.error(*args, **kwargs)

    def exception(self, *args: Any, **kwargs: Any) -> None:
        self._logger.exception(*args, **kwargs)  # noqa: LOG004 - websockets calls this within its handlers


_PROTOCOL_LOGGER = _QuietLogger(logging.getLogger("corral.websocket"))


class WebSocketConnection:
    """One open WebSocket's protocol state (after the 101): `receive_data(bytes) -> events`, and
    `send_*()` / `data_to_send()` return the bytes to write.

    `eof` turns True when the TCP connection should be closed once what is to send is written (the
    closing handshake is over, or the connection failed); `failed` when it ended on an error.
    """

    __slots__ = (
        "proto",
        "limit",
        "max_size",
        "buffer",
        "need",
        "fast",
        "fragments",
        "fragment_text",
        "fragment_bytes",
        "eof",
        "controls",
    )

    def __init__(self, max_size: int, extensions: list[Any] | None = None) -> None:
        self.limit = limit = max_size or (1 << 62)  # the largest message, decompressed
        if extensions:
            # A compressed frame of incompressible data is a little longer than the data (deflate adds at
            # most 5 bytes per 16 KiB block): the wire limit leaves room for that, and the message size
            # is checked again once decompressed. websockets' decoder never inflates past the wire limit.
            limit = limit + limit // 64 + 1024
        proto = self.proto = Protocol(
            Side.SERVER,
            state=OPEN,
            max_size=limit if max_size else None,
            logger=_PROTOCOL_LOGGER,  # type: ignore[arg-type]  # duck-typed: the methods websockets calls
        )
        if extensions:
            proto.extensions = list(extensions)
        self.max_size = limit  # the wire limit of a frame (of a message, when fragmented)
        self.buffer = bytearray()  # an incomplete frame
        self.need = 0  # bytes the incomplete frame needs at least before it is worth parsing again
        self.fast = not extensions  # the fast paths run only without extensions
        self.fragments: list[bytes | bytearray | memoryview] | None = None  # a fragmented message being assembled
        self.fragment_text = False
        self.fragment_bytes = 0
        self.eof = False
        self.controls = 0  # ping and pong frames received (the I/O layer bounds their rate)

    # ------------------------------------------------------------------ state

    @property
    def open(self) -> bool:
        return self.proto.state is OPEN

    @property
    def closing(self) -> bool:
        return self.proto.state is CLOSING

    @property
    def closed(self) -> bool:
        return self.proto.state is CLOSED

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray) -> list[tuple[Any, ...]]:
        """Bytes read from the peer -> events (see MESSAGE, PONG_EVENT, CLOSE_EVENT); then call
        `data_to_send()` (pongs, close replies)."""
        proto = self.proto
        events: list[tuple[Any, ...]] = []
        if self.eof or proto.state is CLOSED:
            return events  # after the closing handshake (or a failure) nothing more is read
        buffer = self.buffer
        if buffer:
            # An incomplete frame is pending: append (amortised, a bytearray) until it is complete.
            buffer += data
            if len(buffer) < self.need:
                return events
            data = buffer
            self.buffer = bytearray()
        n = len(data)
        pos = 0
        view = None
        need = 2
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - head < 2:
                    need = 4
                    break
                length = (data[head] << 8) | data[head + 1]
                head += 2
            elif length == 127:
                if n - head < 8:
                    need = 10
                    break
                length = int.from_bytes(data[head : head + 8], "big")
                head += 8
            if b1 & 0x80:
                head += 4
            if length > self.max_size:
                # Too big: websockets says 1009 as soon as it reads the length; the payload is never kept.
                self._slow(data[pos : min(head, n)], events)
                return events
            end = head + length
            if end > n:
                need = end - pos
                break
            if (
                (b0 == _BINARY_FIN_MASKED or b0 == _TEXT_FIN_MASKED)
                and b1 & 0x80
                and self.fast
                and self.fragments is None
                and proto.state is OPEN
            ):
                if view is None:
                    view = memoryview(data)
                payload = apply_mask(view[head:end], view[head - 4 : head])  # type: ignore[arg-type]  # C: any buffer
                if b0 == _TEXT_FIN_MASKED:
                    try:
                        events.append((MESSAGE, payload.decode()))
                    except UnicodeDecodeError as exc:
                        self._invalid_utf8(exc, events)
                        return events
                else:
                    events.append((MESSAGE, payload))
            else:
                self._slow(data[pos:end], events)
                if self.eof or proto.state is CLOSED:
                    return events
            pos = end
        if pos < n:
            if view is not None:
                view.release()
            self.buffer = bytearray(data[pos:])
            self.need = need
        return events

    def _slow(self, frame_bytes: bytes | bytearray, events: list[tuple[Any, ...]]) -> None:
        """Whole frames (or a head websockets will refuse) through websockets' parser."""
        proto = self.proto
        if self.fragments is not None and frame_bytes and frame_bytes[0] & 0x0F == 0x8:
            # RFC 6455 §5.4: control frames may come between the fragments of a message, a close too.
            # websockets fails the connection (1002) for a close that interrupts a message; here the
            # close is answered with the normal closing handshake and the unfinished message is dropped
            # (§1.4: after a close, a peer discards any further data).
            proto.current_size = None
            self.fragments = None
        proto.receive_data(frame_bytes)
        frames: list[Frame] = proto.events_received()  # type: ignore[assignment]  # past the handshake: frames only
        for frame in frames:
            opcode = frame.opcode
            if opcode is TEXT or opcode is BINARY:
                if frame.fin:
                    self._message(opcode is TEXT, frame.data, events)
                else:
                    self.fragments = [frame.data]
                    self.fragment_text = opcode is TEXT
                    self.fragment_bytes = len(frame.data)
            elif opcode is CONT:
                fragments = self.fragments
                if fragments is None:  # websockets refuses this before; kept as a guard
                    continue
                fragments.append(frame.data)
                self.fragment_bytes += len(frame.data)
                if (
                    len(fragments) > FREE_FRAGMENTS
                    and (len(fragments) - FREE_FRAGMENTS) * MIN_FRAGMENT > self.fragment_bytes
                ):
                    self.fragments = None
                    reason = "message split in too many small fragments"
                    self._fail(1008, reason)
                    events.append((CLOSE_EVENT, 1008, reason))
                    break
                if frame.fin:
                    self.fragments = None
                    self._message(self.fragment_text, b"".join(fragments), events)
            elif opcode is PONG:
                self.controls += 1
                events.append((PONG_EVENT, bytes(frame.data)))
            elif opcode is CLOSE:
                close = proto.close_rcvd
                if close is not None:
                    events.append((CLOSE_EVENT, close.code, close.reason))
            else:  # PING: websockets has queued the pong already
                self.controls += 1
            if self.eof:
                break
        if proto.parser_exc is not None and proto.close_sent is not None and not self._closed_reported(events):
            # The peer broke the protocol (1002), sent bad UTF-8 in a close reason (1007) or too big a
            # message (1009): websockets failed the connection with that code.
            events.append((CLOSE_EVENT, proto.close_sent.code, proto.close_sent.reason))
        if proto.eof_sent:
            self.eof = True

    @staticmethod
    def _closed_reported(events: list[tuple[Any, ...]]) -> bool:
        return bool(events) and events[-1][0] == CLOSE_EVENT

    def _message(self, text: bool, data: bytes | bytearray | memoryview, events: list[tuple[Any, ...]]) -> None:
        if len(data) > self.limit:  # decompressed past the limit (the wire limit has a margin)
            reason = f"message exceeds limit of {self.limit} bytes"
            self._fail(1009, reason)
            events.append((CLOSE_EVENT, 1009, reason))
            return
        if text:
            try:
                events.append((MESSAGE, data.decode() if isinstance(data, bytes) else bytes(data).decode()))
            except UnicodeDecodeError as exc:
                self._invalid_utf8(exc, events)
        else:
            events.append((MESSAGE, data if isinstance(data, bytes) else bytes(data)))

    def _invalid_utf8(self, exc: UnicodeDecodeError, events: list[tuple[Any, ...]]) -> None:
        reason = f"{exc.reason} at position {exc.start}"
        self._fail(1007, reason)
        events.append((CLOSE_EVENT, 1007, reason))

    def receive_eof(self) -> None:
        """The peer half-closed the TCP connection."""
        proto = self.proto
        if not proto.reader.eof:
            proto.receive_eof()
        self.eof = True

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        writes = self.proto.writes
        if not writes:
            return b""
        self.proto.writes = []
        return b"".join(writes)  # an empty chunk (websockets' SEND_EOF) joins to nothing; see `eof`

    def send_message(self, data: bytes, text: bool) -> bytes | tuple[bytes, bytes]:
        """A data message as one frame: bytes, or (head, payload) for a big payload without extensions.

        Raises InvalidState after the closing handshake has begun.
        """
        proto = self.proto
        if self.fast and proto.state is OPEN:
            length = len(data)
            if length < 126:
                head = bytes((0x81 if text else 0x82, length))
            elif length < 65536:
                head = bytes((0x81 if text else 0x82, 126, length >> 8, length & 0xFF))
            else:
                head = bytes((0x81 if text else 0x82, 127)) + length.to_bytes(8, "big")
            if length <= _JOIN_LIMIT:
                return head + data
            return head, data
        if text:
            proto.send_text(data)
        else:
            proto.send_binary(data)
        return self.data_to_send()

    def send_ping(self, payload: bytes) -> bytes:
        self.proto.send_ping(payload)
        return self.data_to_send()

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake (no-op once it has begun). Raises ValueError for a bad code."""
        proto = self.proto
        if proto.state is not OPEN:
            return b""
        reason = truncate_reason(reason)
        try:
            Close(code, reason).check()
        except WSProtocolError:
            raise ValueError(f"invalid WebSocket close code {code!r}") from None
        proto.send_close(code, reason)
        return self.data_to_send()

    def fail(self, code: int, reason: str = "") -> bytes:
        """Fail the connection: send a close frame with `code` (if none was sent) and expect EOF."""
        self._fail(code, reason)
        return self.data_to_send()

    def _fail(self, code: int, reason: str) -> None:
        proto = self.proto
        if proto.state is OPEN or proto.state is CLOSING:
            try:
                proto.fail(code, truncate_reason(reason))
            except (InvalidState, AssertionError):
                pass
        self.eof = True


def truncate_reason(reason: str) -> str:
    """A close reason cut to the 123 bytes a control frame leaves for it, on a UTF-8 boundary."""
    if not reason:
        return ""
    encoded = reason.encode()
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode("utf-8", "ignore")
