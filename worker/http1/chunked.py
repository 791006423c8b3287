"""A chunked request body (RFC 9112 §7.1), decoded apart from I/O: bytes in, body bytes out.

`HTTP11Connection` hands llhttp each request head and decodes chunked bodies here itself. llhttp refuses
whitespace around a chunk extension's `;` and `=` (`5 ; ext=1`, `5; a; b=c`), which RFC 9112 §7.1.1 writes
as BWS: "bad" whitespace a sender must not generate but a recipient must accept. No llhttp leniency covers
it (`lenient_spaces_after_chunk_size` takes the space before `;`, not after it, and also takes `0 ` with no
extension), so the grammar is checked here, exactly:

    chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    last-chunk     = 1*("0") [ chunk-ext ] CRLF
    chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    trailer-section = *( field-line CRLF ) CRLF

Everything else stays strict: no whitespace before the size or after it without an extension, no sign, no
`0x`, no bare CR or LF, CRLF after each chunk's data. Trailer fields are checked (a token name, a value
without control characters, no obs-fold, none of the fields that would change framing, routing or
credentials after the fact) and dropped: the application got its scope with the head.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httptools

__all__ = ["ChunkedBody", "ChunkError", "MAX_CHUNK_LINE"]

#: A chunk-size line (extensions included) may be this long; a longer one is refused.
MAX_CHUNK_LINE = 4096

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# RFC 9112 section 7.1.1, with at most 16 hex digits (llhttp's 64 bits). Lines this refuses are asked of
# llhttp too (`_llhttp_takes`), which also takes a few that are outside the grammar (`5;=b`, `5;a=`): what
# llhttp takes must be taken here, or a body would be taken or refused depending on how reads cut it
# (llhttp decodes the chunked bodies it can: see HTTP11Connection.feed).
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)")

#: RFC 9110 §6.5.1: a trailer field must not be one that the message's framing, routing, authentication or
#: its own trailer handling depend on; a request that sends one is refused (as gunicorn does).
FORBIDDEN_TRAILERS = frozenset((b"host", b"content-length", b"transfer-encoding", b"trailer", b"authorization", b"te"))

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

_SIZE_PROBE = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
_TRAILER_PROBE = _SIZE_PROBE + b"0\r\n"


class _Nothing:
    pass


def _llhttp_takes(data: bytes) -> bool:
    """Whether llhttp parses `data` (a chunked request up to one line) without an error."""
    try:
        httptools.HttpRequestParser(_Nothing()).feed_data(data)
    except httptools.HttpParserError:
        return False
    return True


class ChunkError(Exception):
    """The chunked body broke RFC 9112 or a limit: answer `status` and close."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ChunkedBody:
    """One chunked body. `feed(data, pos)` consumes from `data[pos:]` and returns where it stopped: at the end
    of `data`, or right after the body (`done`); body bytes go to `on_data`, and `on_chunk` is called once
    per chunk (the connection's CPU guard)."""

    __slots__ = (
        "state",
        "left",
        "line",
        "trailer_bytes",
        "trailer_fields",
        "max_trailer_bytes",
        "max_trailer_fields",
        "on_data",
        "on_chunk",
        "skip",
    )

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_chunk: Callable[[], None],
        max_trailer_bytes: int,
        max_trailer_fields: int,
    ) -> None:
        self.state = _SIZE
        self.left = 0  # bytes of the current chunk's data still to come (_DATA); 2 or 1 of its CRLF (_DATA_END)
        self.line = b""  # the start of a line that a read cut
        self.trailer_bytes = 0
        self.trailer_fields = 0
        self.max_trailer_bytes = max_trailer_bytes
        self.max_trailer_fields = max_trailer_fields
        self.on_data = on_data
        self.on_chunk = on_chunk
        # Body bytes not to deliver: llhttp had delivered them before it refused something later.
        self.skip = 0

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes, pos: int) -> int:
        n = len(data)
        while pos < n:
            state = self.state
            if state == _DATA:
                end = pos + self.left
                if end > n:
                    self.left -= n - pos
                    self._deliver(data[pos:] if pos else data)
                    return n
                self._deliver(data[pos:end])
                pos = end
                if data[pos : pos + 2] == b"\r\n":  # the CRLF after the data, most often in the same read
                    pos += 2
                    self.state = _SIZE
                else:
                    self.state = _DATA_END
                    self.left = 2
            elif state == _SIZE and not self.line:
                end = data.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
                if end < 0:
                    line, pos = self._line(data, pos)  # cut by the read (kept), or too long
                    continue
                self._size_line(data[pos:end])
                pos = end + 2
                if self.state == _TRAILER and data[pos : pos + 2] == b"\r\n":
                    self.state = _DONE  # the last chunk, with no trailer section: the common end
                    return pos + 2
            elif state == _DATA_END:
                # The CRLF after a chunk's data, cut between reads.
                expected = b"\r\n"[2 - self.left :]
                got = data[pos : pos + self.left]
                if got != expected[: len(got)]:
                    raise ChunkError(400, "chunk data not followed by CRLF")
                pos += len(got)
                self.left -= len(got)
                if not self.left:
                    self.state = _SIZE
            elif state == _DONE:
                return pos
            else:
                line, pos = self._line(data, pos)
                if line is None:
                    return n
                if state == _SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
        return pos

    def _deliver(self, piece: bytes) -> None:
        skip = self.skip
        if skip:
            self.skip = skip - len(piece) if skip > len(piece) else 0
            piece = piece[skip:]
            if not piece:
                return
        self.on_data(piece)

    def _line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """The next CRLF-ended line (without its CRLF) and the position after it; (None, len) when the line
        goes on past `data` (kept in `line`)."""
        limit = MAX_CHUNK_LINE if self.state == _SIZE else self.max_trailer_bytes
        kept = self.line
        if kept:
            buffer = kept + data[pos : pos + limit + 2]
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > limit:
                    raise self._too_long()
                self.line = buffer
                return None, len(data)
            if end > limit:
                raise self._too_long()
            self.line = b""
            return buffer[:end], pos + end + 2 - len(kept)
        end = data.find(b"\r\n", pos, pos + limit + 2)
        if end < 0:
            rest = data[pos:]
            if len(rest) > limit:
                raise self._too_long()
            self.line = rest
            return None, len(data)
        return data[pos:end], end + 2

    def _too_long(self) -> ChunkError:
        if self.state == _SIZE:
            return ChunkError(400, "chunk-size line too long")
        return ChunkError(431, "trailer section too large")

    def _size_line(self, line: bytes) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            match = _HEX.match(line)
            if match is None or not _llhttp_takes(_SIZE_PROBE + line + b"\r\n"):
                raise ChunkError(400, "invalid chunk-size line")
        size = int(match.group(0 if match.re is _HEX else 1), 16)
        if size >= 1 << 64:
            raise ChunkError(400, "invalid chunk-size line")
        self.on_chunk()
        if size:
            self.state = _DATA
            self.left = size
        else:
            self.state = _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.state = _DONE
            return
        self.trailer_bytes += len(line) + 2
        self.trailer_fields += 1
        if self.trailer_bytes > self.max_trailer_bytes or self.trailer_fields > self.max_trailer_fields:
            raise ChunkError(431, "trailer section too large")
        match = _FIELD_LINE.fullmatch(line)  # obs-fold (a line starting with whitespace) does not match
        if match is None:
            if not _llhttp_takes(_TRAILER_PROBE + line + b"\r\n"):
                raise ChunkError(400, "invalid trailer field")
            name = line.partition(b":")[0]
        else:
            name = match.group(1)
        if name.lower() in FORBIDDEN_TRAILERS:
            raise ChunkError(400, "a trailer field that must not be one")
