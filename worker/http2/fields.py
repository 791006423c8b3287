"""HTTP/2 header fields both ways, apart from I/O: HPACK decoding of request blocks (RFC 7541), the checks
RFC 9113 §8.2-8.3 make of a request's fields, and the encoding of response heads.

Decoding is this module's own loop over the block (the `hpack` library supplies the Huffman decoder and the
static table): it knows exactly when a block changes the dynamic table (`Decoder.changed`), which is what
lets the connection keep the validated request of a block, keyed by its bytes, for as long as the table does
not change (corral.worker.http2.machine). A client's blocks repeat byte for byte once its table is warm: every
field indexed.

Response blocks use only the static table and literals without indexing, so their bytes do not depend on
any connection's state: the block of an application's header list is encoded once and kept (keyed by the
list as a tuple, as HTTP/1.1's heads are), the server's `server`/`date` fields once per second. No Huffman
coding: a few bytes more per response, no per-byte Python.
"""

from __future__ import annotations

import re
from typing import Any

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = [
    "HpackError",
    "HeaderListTooLarge",
    "MalformedHeaders",
    "Decoder",
    "RequestHead",
    "request_head",
    "check_trailers",
    "response_block",
    "fields_block",
    "HOP_BY_HOP",
]

STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE  # RFC 7541 Appendix A, index 1 first
_STATIC_LEN = len(STATIC)
DEFAULT_TABLE_SIZE = 4096


class HpackError(Exception):
    """A header block that cannot be decoded: a connection error of type COMPRESSION_ERROR."""


class HeaderListTooLarge(Exception):
    """A decoded header list over SETTINGS_MAX_HEADER_LIST_SIZE (an HPACK bomb): the connection ends."""


class MalformedHeaders(Exception):
    """A request (or trailers) RFC 9113 §8.1.1 calls malformed: a stream error of type PROTOCOL_ERROR."""


# ---------------------------------------------------------------------------- HPACK decoding


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The continuation bytes of an integer whose prefix was all ones (`value`), from `pos`."""
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HpackError("a header block cut inside an integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("an integer over 2^28 in a header block")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HpackError("a header block cut before a string")
    byte = data[pos]
    length = byte & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(data, pos, 0x7F)
    stop = pos + length
    if stop > len(data):
        raise HpackError("a header block cut inside a string")
    text = data[pos:stop]
    if byte & 0x80:
        try:
            text = decode_huffman(text)
        except HPACKDecodingError as exc:
            raise HpackError(f"a Huffman-coded string that is not valid: {exc}") from None
    return text, stop


class Decoder:
    """HPACK decoder for one connection's request blocks. `changed` turns True whenever a block changes the
    dynamic table (an insertion or a size update): blocks decoded before then may decode differently now."""

    __slots__ = ("entries", "size", "max_size", "allowed", "max_list", "changed")

    def __init__(self, allowed: int, max_list: int) -> None:
        self.entries: list[tuple[bytes, bytes]] = []  # newest first: dynamic index 62 is entries[0]
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE  # until the client's size update (RFC 7541 §4.2)
        self.allowed = allowed  # our SETTINGS_HEADER_TABLE_SIZE
        self.max_list = max_list  # our SETTINGS_MAX_HEADER_LIST_SIZE
        self.changed = False

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if index <= _STATIC_LEN:
            if index == 0:
                raise HpackError("header field index 0")
            return STATIC[index - 1]
        try:
            return self.entries[index - _STATIC_LEN - 1]
        except IndexError:
            raise HpackError(f"header field index {index}, past the dynamic table") from None

    def _literal(self, data: bytes, pos: int, mask: int) -> tuple[tuple[bytes, bytes], int]:
        """A literal field at `pos` (§6.2): its name indexed under `mask`'s prefix or given as a string, then its
        value; returns the field and the position after it."""
        index = data[pos] & mask
        pos += 1
        if index == mask:
            index, pos = _integer(data, pos, index)
        if index:
            name = self._field(index)[0]
        else:
            name, pos = _string(data, pos)
        value, pos = _string(data, pos)
        return (name, value), pos

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + 32
        entries = self.entries
        if size > self.max_size:  # RFC 7541 §4.4: an entry larger than the table empties it
            entries.clear()
            self.size = 0
        else:
            entries.insert(0, field)
            self.size += size
            self._evict()
        self.changed = True

    def _evict(self) -> None:
        entries = self.entries
        while self.size > self.max_size:
            name, value = entries.pop()
            self.size -= len(name) + len(value) + 32

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        append = fields.append
        pos = 0
        end = len(data)
        total = 0
        max_list = self.max_list
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed header field (§6.1)
                index = byte & 0x7F
                pos += 1
                if index == 0x7F:
                    index, pos = _integer(data, pos, index)
                field = self._field(index)
            elif byte & 0x40:  # literal with incremental indexing (§6.2.1)
                field, pos = self._literal(data, pos, 0x3F)
                self._add(field)
            elif byte & 0x20:  # dynamic table size update (§6.3): only before the first field
                if fields:
                    raise HpackError("a dynamic table size update after a header field")
                size = byte & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = _integer(data, pos, size)
                if size > self.allowed:
                    raise HpackError(
                        f"a dynamic table size update to {size}, over SETTINGS_HEADER_TABLE_SIZE ({self.allowed})"
                    )
                self.max_size = size
                self._evict()
                self.changed = True
                continue
            else:  # literal without indexing (§6.2.2) or never indexed (§6.2.3)
                field, pos = self._literal(data, pos, 0x0F)
            total += len(field[0]) + len(field[1]) + 32
            if total > max_list:
                raise HeaderListTooLarge(f"a header list larger than {max_list} bytes (SETTINGS_MAX_HEADER_LIST_SIZE)")
            append(field)
        if self.max_size > self.allowed:
            raise HpackError(
                f"a dynamic table of {self.max_size} bytes, over SETTINGS_HEADER_TABLE_SIZE "
                f"({self.allowed}), without a size update"
            )
        return fields


# ---------------------------------------------------------------------------- requests

# RFC 9113 §8.2.1: no controls, space, uppercase, colon (but a pseudo-header's first) or non-ASCII in names;
# no NUL, CR or LF in values, nor whitespace around them.
_NAME = re.compile(rb"[^\x00-\x20A-Z:\x7f-\xff]+").fullmatch
_VALUE = re.compile(rb"[^\x00\r\n]*").fullmatch
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
# Connection-specific fields (RFC 9113 §8.2.2): malformed in an HTTP/2 request, dropped from a response.
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))


class RequestHead:
    """A request's validated head, kept by the connection for as long as its block decodes the same.
    `headers` are the regular fields as the application sees them (a `host` first when only :authority was
    sent); `derived` is the consumer's own memo of what it makes of the head (its scope's fixed parts)."""

    __slots__ = ("method", "path", "authority", "headers", "content_length", "derived")

    def __init__(
        self, method: bytes, path: bytes, authority: bytes | None, headers: tuple, content_length: int | None
    ) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers
        self.content_length = content_length
        self.derived: Any = None


def _check_value(name: bytes, value: bytes) -> None:
    if value and (not _VALUE(value) or value[0] in b" \t" or value[-1] in b" \t"):
        raise MalformedHeaders(f"a {name.decode('latin-1')!r} field value with a forbidden character")


def request_head(fields: list[tuple[bytes, bytes]]) -> RequestHead:
    """Validate a request's fields (RFC 9113 §8.2, §8.3.1); raises MalformedHeaders."""
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    host = None
    content_length = None
    for name, value in fields:
        if name[:1] == b":":
            if headers:
                raise MalformedHeaders(f"the pseudo-header {name.decode('latin-1')} after a regular field")
            if name not in _PSEUDO:
                raise MalformedHeaders(f"the pseudo-header {name.decode('latin-1')!r}, not one of a request's")
            if name in pseudo:
                raise MalformedHeaders(f"the pseudo-header {name.decode('latin-1')} twice")
            pseudo[name] = value
            _check_value(name, value)
            continue
        if not _NAME(name):
            raise MalformedHeaders(f"the field name {name.decode('latin-1')!r} (uppercase, or a forbidden character)")
        _check_value(name, value)
        if name in HOP_BY_HOP:
            raise MalformedHeaders(f"the connection-specific field {name.decode('latin-1')!r}")
        if name == b"te":
            if value.lower() != b"trailers":
                raise MalformedHeaders("a te field other than 'trailers'")
        elif name == b"host":
            if host is not None:
                raise MalformedHeaders("two host fields")
            host = value
        elif name == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise MalformedHeaders(f"the content-length {value.decode('latin-1')!r}")
            content_length = int(value)
        headers.append((name, value))
    method = pseudo.get(b":method")
    if method is None:
        raise MalformedHeaders("a request without :method")
    if method == b"CONNECT":
        raise MalformedHeaders("a CONNECT request (not served)")
    path = pseudo.get(b":path")
    if path is None or b":scheme" not in pseudo:
        raise MalformedHeaders(f"a request without {':path' if path is None else ':scheme'}")
    if not path:
        raise MalformedHeaders("an empty :path")
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        raise MalformedHeaders("a request with neither :authority nor host")
    if authority is not None:
        if host is None:
            headers.insert(0, (b"host", authority))
        elif host != authority:
            raise MalformedHeaders("a host field that differs from :authority")
    return RequestHead(method, path, authority, tuple(headers), content_length)


def check_trailers(fields: list[tuple[bytes, bytes]]) -> None:
    for name, value in fields:
        if name[:1] == b":":
            raise MalformedHeaders(f"the pseudo-header {name.decode('latin-1')} in trailers")
        if not _NAME(name):
            raise MalformedHeaders(f"the field name {name.decode('latin-1')!r} (uppercase, or a forbidden character)")
        _check_value(name, value)


# ---------------------------------------------------------------------------- responses

_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, _field in enumerate(STATIC, 1):
    _STATIC_FIELD.setdefault(_field, _index)
    _STATIC_NAME.setdefault(_field[0], _index)
_NEVER_INDEXED = frozenset((b"set-cookie", b"cookie", b"authorization", b"proxy-authorization"))
_DROPPED = HOP_BY_HOP | {b"te"}


def _int(value: int, bits: int, first: int) -> bytes:
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(text: bytes) -> bytes:
    return _int(len(text), 7, 0) + text


def _encode_field(name: bytes, value: bytes) -> bytes:
    index = _STATIC_FIELD.get((name, value))
    if index is not None:
        return bytes((0x80 | index,))  # every static index is under 127: one byte
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    index = _STATIC_NAME.get(name)
    if index is not None:
        return _int(index, 4, first) + _literal(value)
    return bytes((first,)) + _literal(name) + _literal(value)


def fields_block(headers: Any) -> bytes:
    """An application's response fields (or trailers) as an HPACK block: names lowercased, connection-specific
    fields dropped. Raises ValueError (with what is wrong) for a field HTTP/2 cannot carry."""
    parts = []
    try:
        for name, value in headers:
            name = name.lower()
            if name in _DROPPED:
                continue
            if not _NAME(name):
                raise ValueError(f"invalid response header name {name!r}")
            value = value.strip(b" \t")
            if not _VALUE(value):
                raise ValueError(f"response header {name!r} has a value with NUL, CR or LF")
            parts.append(_encode_field(name, value))
    except (TypeError, AttributeError):
        raise ValueError(f"response headers must be an iterable of (bytes, bytes) pairs, got {headers!r}") from None
    return b"".join(parts)


#: `:status` for each status code: the static table's entry where there is one, else a literal.
_STATUS: dict[int, bytes] = {status: _encode_field(b":status", b"%d" % status) for status in range(100, 600)}

# Applications mostly send the same few header lists: their block is kept, keyed by the list as a tuple
# (bounded; cleared when full, so varying headers such as cookies only cost a miss), as for HTTP/1.1 heads.
_ENCODED: dict[tuple, bytes] = {}
_ENCODED_MAX = 512
_ENCODED_BLOCK_MAX = 1024
_defaults: list[Any] = [None, b""]  # the server's default header bytes (HTTP/1.1 lines) -> their block


def _default_block(lines: bytes) -> bytes:
    """`server` / `date` (HTTP/1.1 lines, refreshed by the server's tick) encoded once per change."""
    if lines is not _defaults[0]:
        pairs = []
        for line in lines.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                pairs.append((name.strip(), value.strip()))
        _defaults[0], _defaults[1] = lines, fields_block(pairs)
    return _defaults[1]


def response_block(status: int, headers: Any, default_lines: bytes) -> bytes:
    """The HPACK block of a response head. Raises ValueError for an invalid status or field."""
    try:
        block = _STATUS[status]
    except (KeyError, TypeError):
        raise ValueError(f"invalid HTTP status {status!r}") from None
    try:
        key = tuple(headers)
        encoded = _ENCODED.get(key)
    except TypeError:  # not iterable, or unhashable items (lists): encode without keeping it
        encoded = fields_block(headers)
    else:
        if encoded is None:
            encoded = fields_block(key)
            if len(encoded) <= _ENCODED_BLOCK_MAX:
                if len(_ENCODED) >= _ENCODED_MAX:
                    _ENCODED.clear()
                _ENCODED[key] = encoded
    return block + encoded + _default_block(default_lines)
