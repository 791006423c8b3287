"""The slow paths of `HTTP11Connection.feed`, apart from it: reads that do not begin between requests, and
reads in which llhttp stopped where the connection must find its place again.

llhttp refuses some of what RFC 9112 allows: a method it does not know (its list is fixed), and whitespace
around a chunk extension's `;` and `=`. When it does, nothing tells where in the read it stopped, so the
connection works it out: every head ends at its first CRLFCRLF (llhttp takes no bare CR or LF) and every
body is as long as llhttp found it (a chunked one as long as its chunks, walked again). From that place a
new parser goes on (`resync`, `replay_chunked`), or `ChunkedBody` decodes the rest of a chunked body
(`take_chunked`), or the bytes of a head cut by the read are kept (`cut_head`). `feed_split` parses what
follows a head by head, as `HTTP11Connection.feed` cannot hand such reads to llhttp whole.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httptools

from corral.worker.conn.response import ProtocolError
from corral.worker.http1.chunked import ChunkedBody, ChunkError

if TYPE_CHECKING:
    from corral.worker.http1.connection import HTTP11Connection

__all__ = [
    "UnknownMethod",
    "PARSER_ERRORS",
    "feed_split",
    "head_piece",
    "resync",
    "replay_chunked",
    "take_chunked",
    "cut_head",
    "chunked_body",
    "fallback_head",
]


#: RFC 9110 §9.1: a method is a token. gunicorn's further rule, taken for methods llhttp does not know: 3 to
#: 20 characters, no lowercase letter and no `#` (every registered method fits; `get` or `-bl` is a mistake
#: or a probe).
_METHOD = re.compile(rb"[!$%&'*+\-.^_`|~0-9A-Z]{3,20}")

#: What llhttp raises through httptools: its errors, and the end of an Upgrade request.
PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


#: Bytes parsed in one go when a read may hold several requests (it begins between requests or inside a
#: head): parsing stops at the next slice boundary once `max_pipeline` requests wait, so that a client that
#: pipelines thousands of requests without reading the answers costs at most this many parsed requests
#: plus one read of raw bytes (see `feed_sliced`). A real request head is a few hundred bytes: one or two a slice.
PARSE_SLICE = 1024


def _ignore(*args: object) -> None:
    pass


def _skip_breaks(data: bytes, pos: int) -> int:
    """The position of the first byte from `pos` that is no CR or LF (llhttp skips them before a request)."""
    n = len(data)
    while pos < n and (data[pos] == 13 or data[pos] == 10):
        pos += 1
    return pos


class UnknownMethod(Exception):
    """llhttp refused a request's method (see fallback_head)."""


def request_end(conn: HTTP11Connection, data: bytes, before: int) -> int:
    """Where, in a read fed whole that began between requests, the requests completed in it end:
    each head ends at its first CRLFCRLF (llhttp takes no bare CR or LF), each body is as long as
    llhttp found it (`sizes`; the first request's, `first_size`), a chunked one as long as its chunks
    (walked again)."""
    sizes = dict(conn.sizes)
    sizes[before + 1] = conn.first_size
    conn.sizes = []
    pos = 0
    for number in range(before + 1, conn.completed + 1):
        pos = data.find(b"\r\n\r\n", _skip_breaks(data, pos)) + 4
        size = sizes.get(number, 0)
        pos = walk_chunked(conn).feed(data, pos) if size < 0 else pos + size
    return pos


def head_end(conn: HTTP11Connection, data: bytes, before: int) -> int:
    """Where the head of the request llhttp was inside when it stopped (a read fed whole) ends."""
    return data.find(b"\r\n\r\n", _skip_breaks(data, request_end(conn, data, before))) + 4


def walk_chunked(conn: HTTP11Connection) -> ChunkedBody:
    """A ChunkedBody that reads again a chunked body llhttp decoded (and delivered) already."""
    return ChunkedBody(_ignore, _ignore, conn.limit_head, conn.limit_fields)


def cut_head(conn: HTTP11Connection, data: bytes, before: int) -> None:
    """A read fed whole ended inside a head: keep that head's bytes (see head_piece)."""
    start = _skip_breaks(data, request_end(conn, data, before) if conn.completed != before else 0)
    if start < len(data):
        conn.head_parts = []
        conn.head_bytes = 0
        head_piece(conn, data[start:], False, parsed=True)


def take_chunked(conn: HTTP11Connection, data: bytes, before: int) -> None:
    """A read fed whole ended inside a chunked body that llhttp was decoding: ChunkedBody decodes the
    rest (llhttp's state cannot be read). It reads this read's part of the body again without
    delivering it, to be where llhttp was."""
    conn.native_chunked = False
    start = head_end(conn, data, before)
    try:
        body = walk_chunked(conn)
        body.feed(data, start)
    except ChunkError as exc:
        raise ProtocolError(exc.status, exc.detail) from None
    if body.done:
        raise ProtocolError(400, "chunked body")  # llhttp would have ended it: the two disagree
    body.on_data = conn.on_body
    body.on_chunk = conn.on_chunk_header
    conn.chunked = body


def replay_chunked(conn: HTTP11Connection, data: bytes, before: int) -> None:
    """llhttp refused something in a chunked body (a read fed whole): ChunkedBody decodes that body
    again from its start, delivering only what llhttp had not, and the read goes on after it."""
    conn.native_chunked = False
    # (llhttp's parser is in its error state: a new one comes when the body ends, see feed_split.)
    # Trailer fields llhttp may have reported before it stopped (see on_message_complete).
    conn.headers = []
    conn.header_size = 0
    conn.content_length = -1
    conn.te = None
    conn.expect = False
    conn.host = None
    conn.content_type = False
    conn.forwarded = False
    start = head_end(conn, data, before)
    body = conn.chunked = chunked_body(conn)
    body.skip = conn.body_size
    conn.chunks = 0
    feed_split(conn, data, start)


def resync(conn: HTTP11Connection, data: bytes, before: int) -> None:
    """llhttp refused a method (a read fed whole): its head begins where the requests completed before
    it end. A whole head falls back at once (see fallback_head); one the read cuts is parsed again by a
    new parser, head by head (and falls back when whole)."""
    conn.url = b""
    conn.headers = []
    conn.header_size = 0
    start = request_end(conn, data, before)
    end = data.find(b"\r\n\r\n", _skip_breaks(data, start))
    if end < 0:
        conn.parser = httptools.HttpRequestParser(conn)  # llhttp's parser is in its error state
        feed_split(conn, data, start)
        return
    stop = end + 4
    if fallback_head(conn, data[start:stop]):
        conn.after_upgrade(data, stop)
        return
    feed_split(conn, data, stop)


def feed_split(conn: HTTP11Connection, data: bytes, pos: int) -> None:
    """`feed` for any other read, from `pos`: heads, Content-Length bodies and chunked bodies one after
    the other. (The common steps call llhttp inline: a call less each.)"""
    n = len(data)
    while pos < n:
        if conn.upgraded:
            return
        body = conn.chunked
        if body is not None:
            try:
                pos = body.feed(data, pos)
            except ChunkError as exc:
                raise ProtocolError(exc.status, exc.detail) from None
            if body.done:
                # The body is complete. llhttp never saw it: a new parser takes the next request.
                conn.chunked = None
                conn.parser = httptools.HttpRequestParser(conn)
                conn.on_message_complete()
            continue
        if not conn.in_head:
            # A Content-Length body: llhttp counts it, and gets no byte past it.
            left = conn.body_left
            end = pos + left if left and pos + left < n else n
            piece = data[pos:end] if pos or end < n else data
            try:
                conn.parser.feed_data(piece)
            except PARSER_ERRORS as exc:
                try:
                    offset = conn.parse_failure(exc, len(piece))
                except UnknownMethod:
                    raise ProtocolError(400, "invalid method") from None
                if offset >= 0:
                    conn.after_upgrade(data, pos + offset)
                    return
            pos = end
            continue
        if conn.head_parts is None:
            # A head begins here. llhttp skips empty lines (and bare line breaks) before a request line.
            start = pos
            if data[pos] == 13 or data[pos] == 10:
                while pos < n and (data[pos] == 13 or data[pos] == 10):
                    pos += 1
                if pos == n:
                    conn.execute(data[start:])
                    return
            end = data.find(b"\r\n\r\n", pos) if pos else data.find(b"\r\n\r\n")
            if end < 0:
                head_piece(conn, data[start:], False)
                return
            stop = end + 4
            piece = data[start:stop] if start or stop < n else data
            try:
                conn.parser.feed_data(piece)
            except PARSER_ERRORS as exc:
                try:
                    offset = conn.parse_failure(exc, len(piece))
                except UnknownMethod:
                    offset = len(piece) if fallback_head(conn, piece) else -1
                if offset >= 0:
                    conn.after_upgrade(data, start + offset)
                    return
            if stop < n and not conn.in_head and conn.body_left >= n - stop and conn.chunked is None:
                # The rest of the read is this request's Content-Length body (or its start): the common
                # POST, in one more call.
                try:
                    conn.parser.feed_data(data[stop:])
                except PARSER_ERRORS as exc:
                    conn.parse_failure(exc, n - stop)
                return
            pos = stop
            continue
        # The head began in an earlier read: its CRLFCRLF may straddle the two.
        parts = conn.head_parts
        start = pos
        tail = parts[-1][-3:] if len(parts[-1]) >= 3 else b"".join(parts)[-3:]
        straddle = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
        if straddle >= 0:
            stop = pos + straddle + 4 - len(tail)
        else:
            end = data.find(b"\r\n\r\n", pos)
            stop = end + 4 if end >= 0 else -1
        if stop < 0:
            head_piece(conn, data[start:], False)
            return
        offset = head_piece(conn, data[start:stop], True)
        if offset >= 0:
            conn.after_upgrade(data, start + offset)
            return
        pos = stop


def head_piece(conn: HTTP11Connection, piece: bytes, complete: bool, parsed: bool = False) -> int:
    """Part of a head (`complete`: its end) for llhttp (`parsed`: llhttp has it already); returns llhttp's
    upgrade offset in `piece`, or -1."""
    parts = conn.head_parts
    if not complete:
        if parts is None:
            parts = conn.head_parts = []
            conn.head_bytes = 0
        parts.append(piece)
        conn.head_bytes += len(piece)
        if conn.head_bytes > conn.head_cap:
            # The parser reports the target as it goes: if it is most of the head, it is the culprit.
            too_long = 414 if len(conn.url) + 64 >= conn.head_bytes else 431
            raise ProtocolError(too_long, "request head too large")
        if parsed:
            return -1
    else:
        conn.head_parts = None
    if conn.fallback:
        if not complete:
            return -1
        conn.fallback = False
        return len(piece) if fallback_head(conn, b"".join(parts) + piece if parts else piece) else -1
    try:
        return conn.execute(piece)
    except UnknownMethod:
        if not complete:
            conn.fallback = True  # the rest of the head is buffered, then parsed by fallback_head
            conn.head_parts = [b"".join(parts)]  # type: ignore[arg-type]  # appended above
            return -1
        return len(piece) if fallback_head(conn, b"".join(parts) + piece if parts else piece) else -1


def fallback_head(conn: HTTP11Connection, head: bytes) -> bool:
    """A head (whole, as received) whose method llhttp refused: it knows a fixed list (GET, PROPFIND,
    PURGE, QUERY...), while RFC 9110 §9.1 lets a method be any token, and gunicorn and h11 hand such
    requests to the application (which may answer 405 or 501). So does corral: llhttp parses the head
    with its method swapped for GET, and the request gets its own method. Returns True when llhttp
    stopped after it for an Upgrade.

    Safe from smuggling: where this head ends was found before, as for any head (its first CRLFCRLF),
    and llhttp frames a request body by Content-Length and Transfer-Encoding alone, whatever the method
    but CONNECT (an upgrade, and a method llhttp knows). The method must look like one, by gunicorn's
    rule (`_METHOD`); anything else stays a 400."""
    head = head.lstrip(b"\r\n")
    method, space, rest = head.partition(b" ")
    if not space or _METHOD.fullmatch(method) is None:
        raise ProtocolError(400, "invalid method")
    # llhttp's parser is in its error state after the refusal: the next requests get a new one.
    conn.parser = httptools.HttpRequestParser(conn)
    conn.url = b""
    conn.headers = []
    conn.header_size = 0
    conn.method = method
    return conn.execute(b"GET " + rest) >= 0


def chunked_body(conn: HTTP11Connection) -> ChunkedBody:
    return ChunkedBody(conn.on_body, conn.on_chunk_header, conn.limit_head, conn.limit_fields)


def feed_sliced(conn: HTTP11Connection, data: bytes) -> None:
    """`HTTP11Connection.feed` for a read that may hold many requests (or when a backlog waits): parsed a
    `PARSE_SLICE` at a time, stopping at a slice boundary once `max_pipeline` requests wait (see `feed`)."""
    backlog = conn.backlog
    if backlog:
        pipeline = conn.pipeline
        if pipeline and len(pipeline) >= conn.max_pipeline:
            conn.backlog = backlog + data  # still at the bound (bytes under way when reading paused)
            return
        data = backlog + data
        conn.backlog = b""
    n = len(data)
    start = 0
    while start < n:
        if not conn.in_head and conn.body_left > 0:
            end = start + conn.body_left  # the rest of a body of known length: in one piece
        else:
            end = start + PARSE_SLICE
        conn.feed(data[start:end])  # at most a slice, or body bytes: parsed at once
        if conn.upgraded:
            upgrade_tail = getattr(conn.last, "upgrade_tail", None) if conn.last is not None else None
            if upgrade_tail is not None and end < n:
                upgrade_tail(data[end:])  # after what the slice's own upgrade handling gave it
            return
        pipeline = conn.pipeline
        if end < n and pipeline and len(pipeline) >= conn.max_pipeline:
            conn.backlog = data[end:]
            return
        start = end
