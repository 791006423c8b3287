"""HTTP/1.1 connection state, apart from I/O (the h11 idea): bytes in, request events and response bytes out.

`HTTP11Connection` is fed the bytes a connection reads; it drives httptools (llhttp), enforces the limits
and the request-smuggling guards, decides keep-alive, and keeps the pipelining queue. It calls a *handler*
(the asyncio protocol) to make a request object for each request head and to start the next request;
request objects receive their body through `on_body(chunk)` / `on_body_complete()`. Nothing here touches a
transport, a timer or the event loop.

Pipelining (RFC 9112 §9.3.2): requests are parsed ahead and queued; the next request's application starts
only after the previous response finished, so responses go out strictly in order. The asyncio side pauses
reading while a request waits in the queue, which bounds what is buffered.

`response_head()` (in `corral.worker.conn.response`, re-exported here) decides the framing of a response
(RFC 9112 §6.3 / §7.1) and encodes its head.

Keep-alive is decided in two steps and nowhere else: the request's side when its head completes
(`on_headers_complete`: the version and its Connection header, `--max-requests-per-connection`,
`--keep-alive 0`), the response's side in `response_head` (the application's `connection: close`,
close-delimited framing, a stopping server). The protocol only acts on the result (`response_complete`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import httptools

# The response side (status lines, error responses, the head's framing decision), re-exported here.
from corral.worker.conn.response import (
    CHUNKED,
    CLOSE_DELIMITED,
    CONTINUE_RESPONSE,
    ERROR_RESPONSES,
    NO_BODY,
    STATUS_LINES,
    ProtocolError,
    encode_headers,
    response_head,
)
from corral.worker.http1.chunked import FORBIDDEN_TRAILERS, ChunkedBody
from corral.worker.http1.exchange import Exchange, RequestHandler
from corral.worker.http1.fields import LOOKED_AT, VALID_HOST, transfer_coding_problem
from corral.worker.http1.limits import FREE_CHUNKS, Limits
from corral.worker.http1.native import parse_head, take_parsed
from corral.worker.http1.reads import (
    PARSE_SLICE,
    PARSER_ERRORS,
    UnknownMethod,
    chunked_body,
    cut_head,
    feed_sliced,
    feed_split,
    replay_chunked,
    resync,
    take_chunked,
)

__all__ = [
    "HTTP11Connection",
    "ProtocolError",
    "ERROR_RESPONSES",
    "CONTINUE_RESPONSE",
    "STATUS_LINES",
    "response_head",
    "encode_headers",
    "NO_BODY",
    "CHUNKED",
    "CLOSE_DELIMITED",
]

logger = logging.getLogger("corral.error")

_parse_head = parse_head  # None where the compiled parser is not there or is turned off (see native)


#: What llhttp says about a method it knows only in RTSP (DESCRIBE, SETUP, PLAY...): a token like any other.
_RTSP_METHOD = "Invalid method for HTTP/x.x request"

#: How the request line of an HTTP/1.1 request ends (see on_headers_complete).
_HTTP11_LINE_END = b"HTTP/1.1\r\n"


class HTTP11Connection:
    """Per-connection request parsing, limits, keep-alive and pipelining; no I/O."""

    __slots__ = (
        "handler",
        "parser",
        "limit_line",
        "limit_fields",
        "limit_head",
        "limit_body",
        "max_requests",
        "head_cap",
        "url",
        "headers",
        "header_size",
        "content_length",
        "te",
        "expect",
        "in_head",
        "head_bytes",
        "completed",
        "request",
        "last",
        "body_size",
        "requests",
        "must_close",
        "upgraded",
        "active",
        "pipeline",
        "error",
        "client_close",
        "host",
        "last_host",
        "max_pipeline",
        "backlog",
        "min_chunk",
        "chunks",
        "body_left",
        "upgrade_body",
        "upgrade_request",
        "content_type",
        "head_parts",
        "chunked",
        "fallback",
        "method",
        "sole",
        "sizes",
        "first_size",
        "native_chunked",
        "forwarded",
        "whole",
        "after_close",
    )

    def __init__(self, handler: RequestHandler[Any], limits: Limits) -> None:
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        # Copied into the connection's slots: the checks run per header field, one attribute hop each.
        self.limit_line: int = limits.request_line
        self.limit_fields: int = limits.request_fields
        self.limit_head: int = limits.header_block
        self.limit_body: int = limits.request_body
        self.max_requests: int = limits.requests_per_connection
        self.max_pipeline: int = limits.pipelined_requests
        self.min_chunk: int = limits.min_chunk_size
        # What one head may take in all: a bound on bytes buffered by the parser for a head that never
        # completes (a single endless header line never reaches on_header).
        self.head_cap = self.limit_line + self.limit_head + 1024
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_size = 0
        self.content_length = -1
        self.te: bytes | None = None
        self.expect = False
        self.host: bytes | None = None  # the Host field of the head being parsed
        self.content_type = False  # the head being parsed has a Content-Type field
        self.forwarded = False  # the head being parsed has a proxy header (fields.PROXY_HEADERS)
        self.last_host = b""  # the last Host value found valid: clients repeat theirs, checked once
        self.chunks = 0  # chunks of the body being parsed
        self.body_left = 0  # bytes of a Content-Length body still to come
        # A request with an Upgrade header this server does not take (h2c with a body, TLS/1.0, anything but
        # a WebSocket) and a Content-Length body: httptools has llhttp skip the body of any Upgrade request
        # and hands what follows the head over as upgrade data; that many bytes of it are this request's body.
        self.upgrade_body = 0
        self.upgrade_request: Exchange | None = None
        self.in_head = True  # between requests or inside a head: the header timer's concern
        # The bytes of a head that reads have cut, so far (None between heads, and when every head came
        # whole), and their count.
        self.head_parts: list[bytes] | None = None
        self.head_bytes = 0
        self.chunked: ChunkedBody | None = None  # the chunked body being decoded
        self.fallback = False  # head_parts hold a head whose method llhttp refused, until it is whole
        self.method: bytes | None = None  # that head's method, for on_headers_complete
        # While a read is fed whole (see feed): the number its first request gets when complete, else -1;
        # and the body sizes of the requests it completed (the first's apart).
        self.sole = -1
        self.sizes: list[tuple[int, int]] = []
        self.first_size = 0
        self.native_chunked = False  # llhttp is decoding a chunked body, in a read fed whole
        self.whole = b""  # that read, while llhttp parses it (see on_headers_complete)
        self.after_close = False  # the compiled parser made a request that closes the connection (see feed)
        self.completed = 0  # messages complete
        self.request: Exchange | None = None  # the request whose body is being parsed
        self.last: Exchange | None = None  # the request made last
        self.body_size = 0
        self.requests = 0
        self.must_close = False  # no further request is served on this connection
        # The client said its last request has come (`Connection: close`, or HTTP/1.0 without keep-alive):
        # it sends nothing after it.
        self.client_close = False
        self.upgraded = False
        self.active: Exchange | None = None  # the request whose response is in progress
        # Requests queued behind the active one: an empty tuple until a client pipelines (a deque costs
        # ~0.7 KiB, and most connections never need one).
        self.pipeline: deque[Exchange] | tuple[Any, ...] = ()
        self.error: ProtocolError | None = None
        # Bytes read but not parsed yet: parsing stopped because `max_pipeline` requests wait (see feed).
        self.backlog = b""

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes) -> None:
        """Parse bytes read from the client; raises ProtocolError for anything the client got wrong.

        A read that begins between requests is given to llhttp whole (below). llhttp refuses some of what
        RFC 9112 allows: a method it does not know (`reads.fallback_head`) and whitespace around a chunk
        extension's `;` (`ChunkedBody`). Then, and where a read ends inside a head or a chunked body, the
        connection finds its place in the read: every head ends at its first CRLFCRLF (llhttp takes no
        bare CR or LF) and every body is as long as llhttp found it. Reads that do not begin between
        requests go to `reads.feed_split`, which hands llhttp one head at a time and decodes chunked bodies with
        `ChunkedBody`.

        A read that may hold more requests than `max_pipeline` is parsed a slice at a time (`reads.feed_sliced`),
        and parsing stops at a slice boundary once `max_pipeline` requests wait behind the active one: the
        rest is kept unparsed in `backlog` (the protocol stops reading meanwhile) and parsed by `feed(b"")`
        when the queue shrinks. Parsed requests cost ~1 KiB each (scope, headers, cycle), raw bytes ~30: so a
        client pipelining without reading answers holds a bounded number of parsed requests and at most one
        read of bytes.
        """
        if self.upgraded:
            if self.upgrade_body:
                self._upgrade_body(data)
            return  # bytes after an Upgrade request belong to a protocol this server does not speak
        if self.after_close:
            # After a request that closes the connection, parsed by the compiled parser: what llhttp does after
            # one it parsed (CR and LF skipped, anything else refused and then ignored by parse_failure).
            if data.strip(b"\r\n"):
                self.upgraded = True
            return
        if self.backlog or (len(data) > PARSE_SLICE and self.in_head and data.count(b"HTTP/1.") >= self.max_pipeline):
            # Every request line that llhttp accepts names its version (HTTP/0.9 and 2.0 are refused, CRLF
            # after the version is required): a read with fewer of them than the bound cannot queue past
            # it and is parsed whole, below. (A body that contains the string only costs the slicing.)
            feed_sliced(self, data)
            return
        if self.in_head and self.head_parts is None:
            if _parse_head is not None and not self.must_close:
                # The compiled parser takes a read that is exactly one request of the common shape (and
                # returns None for anything else, errors included, which the general way below answers).
                parsed = _parse_head(data, self.limit_line, self.limit_fields, self.limit_head)
                if parsed is not None and take_parsed(self, parsed, data):
                    return
            # A read that begins between requests (almost every read) is fed whole. Where llhttp refuses what
            # RFC 9112 allows (a method it does not know, whitespace in a chunk extension), the connection
            # finds the place in the read and goes on without it (`resync`, `replay_chunked`); where the
            # read ends inside a head or a chunked body, that is found too (`cut_head`, `take_chunked`).
            before = self.completed
            self.sole = before + 1  # the number the read's first request will have when complete
            self.first_size = 0
            self.whole = data
            try:
                self.parser.feed_data(data)
            except PARSER_ERRORS as exc:
                self.sole = -1
                self.whole = b""
                if self.native_chunked and self.error is None and not isinstance(exc, httptools.HttpParserUpgrade):
                    replay_chunked(self, data, before)  # llhttp refused something in a chunked body
                    return
                try:
                    offset = self.parse_failure(exc, len(data))
                except UnknownMethod:
                    resync(self, data, before)
                    return
                if offset >= 0:
                    self.after_upgrade(data, offset)
                return
            self.sole = -1
            self.whole = b""
            if self.native_chunked:
                take_chunked(self, data, before)  # the read ended inside a chunked body
            elif self.in_head and data[-4:] != b"\r\n\r\n" and not self.upgraded:
                # The read may end inside a head (one that ends with CRLFCRLF ends a head or a body, never
                # inside a head). It does not when it held one request whose body ends it (a POST): the
                # first CRLFCRLF found is then that head's end, as any earlier one would leave bytes over.
                if self.completed != before + 1 or data.find(b"\r\n\r\n") + 4 + self.body_size != len(data):
                    cut_head(self, data, before)
            if self.sizes:
                self.sizes = []
            return
        feed_split(self, data, 0)

    def execute(self, data: bytes) -> int:
        """llhttp parses `data`; returns -1, or where the bytes after an Upgrade request begin in `data`.
        Raises ProtocolError (the client's error), or UnknownMethod."""
        try:
            self.parser.feed_data(data)
        except PARSER_ERRORS as exc:
            return self.parse_failure(exc, len(data))
        return -1

    def parse_failure(self, exc: Exception, size: int) -> int:
        """What llhttp raising `exc` on `size` bytes means: the offset of the bytes after an Upgrade request,
        -1 (the rest is ignored), ProtocolError raised (the client's error), or UnknownMethod raised."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            return exc.args[0] if exc.args else size
        error = self.error
        if error is None:
            if self.must_close and self.request is None:
                # llhttp refuses data after a `Connection: close` request: nothing more is served
                # on this connection anyway, so the bytes are ignored rather than answered.
                self.upgraded = True
                return -1
            if isinstance(exc, httptools.HttpParserInvalidMethodError) or str(exc) == _RTSP_METHOD:
                raise UnknownMethod from None
            if isinstance(exc, httptools.HttpParserCallbackError):
                # A bug of ours, not the client's: httptools keeps only the repr of the exception.
                logger.error("Error in a request parser callback: %s", exc)
            error = ProtocolError(400, str(exc))
        self.error = None
        raise error from None

    def after_upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stopped after an Upgrade request whose head ends at `offset` in `data`."""
        # RFC 9110 §7.8: a server may ignore Upgrade. The request was dispatched as plain HTTP; what
        # follows it is not HTTP/1.1, so the connection closes after the response.
        self.upgraded = True
        self.must_close = True
        if self.last is not None:
            self.last.keep_alive = False
            # WebSocket hook (corral.worker.websocket.protocol): bytes sent right behind a WebSocket handshake
            # belong to the WebSocket.
            upgrade_tail = getattr(self.last, "upgrade_tail", None)
            if upgrade_tail is not None and offset < len(data):
                upgrade_tail(data[offset:])
        if self.upgrade_body:
            self._upgrade_body(data[offset:])

    # ------------------------------------------------------------------ methods llhttp does not know

    def _upgrade_body(self, data: bytes) -> None:
        """The body of a plain request that carried an Upgrade header (see `upgrade_body`)."""
        request = self.upgrade_request
        take = data[: self.upgrade_body]
        if request is None:
            return
        if take:
            self.upgrade_body -= len(take)
            request.on_body(take)
        if not self.upgrade_body:
            self.upgrade_request = None
            request.on_body_complete()

    def new_head(self) -> None:
        """Forget what the head parsed last said (its fields, framing and flags): the next head starts clean."""
        self.url = b""
        self.headers = []
        self.header_size = 0
        self.content_length = -1
        self.te = None
        self.expect = False
        self.host = None
        self.content_type = False
        self.forwarded = False

    def admit(self, keep_alive: bool) -> bool:
        """Count a request whose head is complete; `keep_alive` is what the client's head says (its version and
        Connection field). Returns whether the connection is kept after it: the request side of keep-alive,
        decided here for both parsers (--max-requests-per-connection, --keep-alive 0)."""
        if not keep_alive:
            self.client_close = True
        self.requests = requests = self.requests + 1
        if self.max_requests and requests >= self.max_requests:
            keep_alive = False
        if not keep_alive:
            self.must_close = True
        return keep_alive

    def enqueue(self, request: Exchange) -> None:
        """A request made from a complete head: the active one when none is, else queued behind it."""
        if self.active is None:
            self.active = request
            self.handler.start_request(request)
        else:
            pipeline = self.pipeline
            if type(pipeline) is tuple:
                pipeline = self.pipeline = deque()
            pipeline.append(request)  # type: ignore[union-attr]  # the empty tuple became a deque just above

    def fail(self, status: int, detail: str) -> ProtocolError:
        # Raised inside a parser callback: httptools wraps it, so feed() re-raises the one kept here.
        self.error = error = ProtocolError(status, detail)
        return error

    # ------------------------------------------------------------------ httptools callbacks

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limit_line:
            raise self.fail(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_size += len(name) + len(value) + 4
        if len(self.headers) >= self.limit_fields:
            raise self.fail(431, "too many header fields")
        if self.header_size > self.limit_head:
            raise self.fail(431, "header block too large")
        if value and (value[-1] == 32 or value[-1] == 9):
            # RFC 9112 §5: optional whitespace around a field value is not part of it (llhttp strips the
            # leading OWS only). Checked for every field, not only the framing ones: applications compare
            # values too (h11 strips them all). Measured at ~50 ns a field.
            value = value.rstrip(b" \t")
        name = name.lower()
        if name in LOOKED_AT:
            if name == b"content-length":
                # RFC 9112 §6.3 item 5: differing or repeated lengths make the framing unreliable.
                if self.content_length >= 0 or not value.isdigit():
                    raise self.fail(400, "invalid or repeated Content-Length")
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                self.te = value if self.te is None else self.te + b"," + value
            elif name == b"host":
                # RFC 9112 §3.2: more than one Host, or an invalid one, is a 400.
                if self.host is not None:
                    raise self.fail(400, "more than one Host header field")
                if value != self.last_host:
                    if VALID_HOST.fullmatch(value) is None:
                        raise self.fail(400, "invalid Host header field")
                    self.last_host = value
                self.host = value
            elif name == b"content-type":
                if self.content_type:
                    raise self.fail(400, "more than one Content-Type header field")
                self.content_type = True
            elif name == b"expect":
                self.expect = value.lower() == b"100-continue"
            else:
                self.forwarded = True
        self.headers.append((name, value))

    def on_chunk_header(self) -> None:
        # CPU guard: each chunk costs the parser and a callback whatever its size, so a body framed in
        # tiny chunks (a 5 MB body as 1-byte chunks is 30 MB on the wire) must keep an average chunk
        # size once past the free allowance.
        self.chunks = chunks = self.chunks + 1
        if chunks > FREE_CHUNKS and self.min_chunk and (chunks - FREE_CHUNKS) * self.min_chunk > self.body_size:
            raise self.fail(400, "chunked body framed in too many small chunks")

    def on_headers_complete(self) -> None:
        self.in_head = False
        url = self.url
        headers = self.headers
        te = self.te
        content_length = self.content_length
        expect = self.expect
        host = self.host
        forwarded = self.forwarded
        # Reset for the next head here rather than in an on_message_begin callback (one call less per
        # request): parse state of one head is only read until this point.
        self.new_head()
        parser = self.parser
        method = self.method
        if method is None:
            method = parser.get_method()
        else:
            self.method = None  # a method llhttp does not know (reads.fallback_head)
        if len(method) + len(url) + 10 > self.limit_line:  # "METHOD SP target SP HTTP/1.1"
            raise self.fail(414, "request line too long")
        if self.sole == self.completed + 1 and self.whole.startswith(_HTTP11_LINE_END, len(method) + len(url) + 2):
            # The first request of a read fed whole: its request line opens the read (where empty lines come
            # first, the bytes looked at hold the space before the version and do not match). httptools'
            # get_http_version() formats the string (about 2,000 instructions).
            http_version = "1.1"
        else:
            http_version = parser.get_http_version()
        if http_version != "1.1":
            if http_version != "1.0":
                # An HTTP/0.9 line (no version) is not HTTP/1.x; a 2.x or later major version is one this
                # server does not speak over HTTP/1.1 framing (RFC 9110 §15.6.6).
                if http_version[0] in "23456789":
                    raise self.fail(505, "HTTP version not supported")
                raise self.fail(400, "not an HTTP/1.x request")
        elif host is None:
            raise self.fail(400, "missing Host header field")  # RFC 9112 §3.2
        if url == b"*" and method != b"OPTIONS":
            raise self.fail(400, "asterisk-form is only for OPTIONS")  # RFC 9112 §3.2.4
        if te is not None:
            problem = transfer_coding_problem(te, content_length, http_version)
            if problem is not None:
                raise self.fail(*problem)
            has_body = True
            self.chunks = 0
            if self.sole >= 0:
                self.native_chunked = True  # in a read fed whole, llhttp decodes it (see feed)
            else:
                self.chunked = chunked_body(self)  # llhttp got the head alone: the body is ChunkedBody's
        elif content_length > 0:
            if self.limit_body and content_length > self.limit_body:
                raise self.fail(413, "request body too large")  # known before the application runs
            has_body = True
            self.body_left = content_length
        else:
            has_body = False
        self.body_size = 0
        if self.must_close:
            self.request = None  # the connection closes after what is queued: ignore this one
            return
        keep_alive = self.admit(parser.should_keep_alive())  # RFC 9112 §9.3: version default + Connection
        # RFC 9110 §10.1.1: a server MUST ignore 100-continue from an HTTP/1.0 client.
        expect_continue = expect and has_body and http_version != "1.0"
        self.request = self.last = request = self.handler.on_request(
            method, http_version, url, headers, keep_alive, expect_continue, has_body, forwarded
        )
        if has_body and parser.should_upgrade() and getattr(request, "upgrade_tail", None) is None:
            if te is not None:
                raise self.fail(400, "a chunked body on an Upgrade request")  # llhttp would not parse it
            self.upgrade_body = content_length
            self.upgrade_request = request
        self.enqueue(request)

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self.body_left -= size
        self.body_size += size
        request = self.request
        if request is None:
            return
        if self.limit_body and self.body_size > self.limit_body:
            raise self.fail(413, "request body too large")  # chunked: as soon as it is exceeded
        request.on_body(body)

    def on_message_complete(self) -> None:
        self.completed += 1
        if self.sole >= 0 and (self.body_size or self.native_chunked):  # a read fed whole: see reads.request_end
            size = -1 if self.native_chunked else self.body_size
            self.native_chunked = False
            if self.completed == self.sole:
                self.first_size = size
            else:
                self.sizes.append((self.completed, size))
        self.body_left = 0
        if self.header_size:
            # A trailer section (RFC 9112 §7.1.2) after a chunked body that llhttp decoded: llhttp reports
            # its fields through on_header, into the header list made for the *next* head (with its Host,
            # Expect, ... checks and limits). Those that must not be trailers are refused (as ChunkedBody
            # does); the rest are dropped here: the application started with the head and its scope cannot
            # carry fields that come later, and they must never reach the next request.
            for name, _ in self.headers:
                if name in FORBIDDEN_TRAILERS:
                    raise self.fail(400, "a trailer field that must not be one")
            self.new_head()
        request = self.request
        self.request = None
        self.in_head = True
        if request is not None and request is not self.upgrade_request:  # that one's body is still to come
            request.on_body_complete()

    # ------------------------------------------------------------------ responses

    def response_done(self) -> Exchange | None:
        """The active response finished: return the next queued request (now active) or None."""
        if self.last is self.active:
            self.last = None  # an idle connection keeps no request (its scope, headers) alive
        pipeline = self.pipeline
        self.active = request = pipeline.popleft() if pipeline else None  # type: ignore[union-attr]  # a non-empty pipeline is the deque
        return request

    def release(self) -> None:
        """The connection is gone: drop the references that close cycles (the parser's callbacks bound to
        this object, the handler that owns it, the requests that point back at the handler), so that
        reference counting frees a closed connection at once instead of leaving ~20 objects per connection
        to the cyclic garbage collector (measured: ~5 us of collections per `Connection: close` request).
        Nothing is parsed afterwards (`feed` ignores data)."""
        self.upgraded = True
        self.parser = None  # type: ignore[assignment]  # released: nothing is parsed after an upgrade
        self.handler = None  # type: ignore[assignment]  # released with it (feed returns first)
        self.request = self.last = self.active = self.upgrade_request = None
        self.pipeline = ()
        self.backlog = b""

    def drop(self, request: Exchange) -> None:
        """Forget a queued request that will never run (its body broke the protocol)."""
        try:
            self.pipeline.remove(request)  # type: ignore[union-attr]  # the request is in the pipeline: the deque
        except (ValueError, AttributeError):  # not queued (an empty tuple: nothing ever was)
            pass
