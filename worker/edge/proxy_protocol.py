"""The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt), apart from I/O.

A TCP load balancer (HAProxy `send-proxy` / `send-proxy-v2`, AWS NLB, GCP) opens its connection to the
server with a header saying whose connection it relays: the client's address and port, the address it was
addressed to, and (v2) TLVs such as the ALPN and TLS details of the client's connection to the balancer.
`parse_header(data)` reads one from the start of a connection's bytes.

Rules kept from the spec:
- v1 is one text line of at most 107 bytes: `PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n`; UNKNOWN
  (and v2's LOCAL command or UNSPEC family) means "use the connection's own addresses": a balancer's health
  check.
- v2 is a 16-byte binary head (the 12-byte signature, version/command, family/transport, length) and the
  address block and TLVs. A CRC32C TLV, when present, is checked. Header sizes are bounded
  (`MAX_V2_LENGTH` for what the length field may announce), so a peer cannot make a connection buffer much.
- Anything malformed is a `ProxyProtocolError`; the caller closes the connection (it never guesses).

Which peers may send a header is the caller's decision (`--proxy-allow-ips`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from typing import Any

from corral.worker.edge.tlsinfo import TLS_VERSIONS

__all__ = [
    "ProxyHeader",
    "ProxyProtocolError",
    "parse_header",
    "looks_like_header",
    "V1_MAX",
    "V2_SIGNATURE",
    "MAX_V2_LENGTH",
    "tls_extension",
]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (spec §2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The most a v2 header may announce after its 16-byte head. The spec allows 65535; addresses and the TLVs
#: balancers send (ALPN, authority, unique id up to 128 bytes, SSL details, AWS/Azure/GCP ids) fit well
#: within this, and it bounds what a connection may buffer before its first request.
MAX_V2_LENGTH = 4096

# v2 TLV types (spec §2.2.7) and the SSL sub-TLVs.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_SSL_SUBTYPES = {
    PP2_SUBTYPE_SSL_VERSION: "version",
    PP2_SUBTYPE_SSL_CN: "cn",
    PP2_SUBTYPE_SSL_CIPHER: "cipher",
    PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
    PP2_SUBTYPE_SSL_KEY_ALG: "key_alg",
}

# v2 address families (high nibble) with their address block sizes; transport (low nibble).
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_ADDRESS_SIZES = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_LOCAL, _PROXY = 0x0, 0x1


class ProxyProtocolError(ValueError):
    """A malformed, truncated or oversized PROXY header; `str()` is the one line to log."""


class ProxyHeader:
    """What a PROXY header said. `source` / `destination` are (host, port), or None where the header says to
    use the connection's own addresses (v1 UNKNOWN, v2 LOCAL or UNSPEC) or for unix-socket families."""

    __slots__ = ("version", "local", "source", "destination", "tlvs", "ssl", "client_flags", "verify")

    def __init__(self, version: int) -> None:
        self.version = version
        self.local = True
        self.source: tuple[str, int] | None = None
        self.destination: tuple[str, int] | None = None
        self.tlvs: dict[int, bytes] = {}
        self.ssl: dict[str, str] = {}  # the SSL sub-TLVs by name, when the SSL TLV is present
        self.client_flags = 0
        self.verify = 0

    @property
    def alpn(self) -> bytes | None:
        return self.tlvs.get(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        value = self.tlvs.get(PP2_TYPE_AUTHORITY)
        return value.decode("utf-8", "replace") if value is not None else None

    @property
    def tls(self) -> bool:
        """The client's connection to the balancer was TLS."""
        return bool(self.client_flags & PP2_CLIENT_SSL)

    def describe(self) -> dict[str, Any]:
        """The header for `scope["extensions"]["proxy_protocol"]`."""
        return {
            "version": self.version,
            "source": self.source,
            "destination": self.destination,
            "alpn": self.alpn,
            "authority": self.authority,
            "unique_id": self.tlvs.get(PP2_TYPE_UNIQUE_ID),
            "ssl": dict(self.ssl) if self.client_flags & PP2_CLIENT_SSL else None,
            "tlvs": dict(self.tlvs),
        }


def looks_like_header(data: bytes) -> bool:
    """Whether these first bytes of a connection begin (or may begin) a PROXY header of either version."""
    if not data:
        return False
    if data[:1] == b"P":
        n = min(len(data), len(V1_PREFIX))
        return data[:n] == V1_PREFIX[:n]
    n = min(len(data), len(V2_SIGNATURE))
    return data[:n] == V2_SIGNATURE[:n]


def parse_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY header at the start of `data`: (header, its length), or None when more bytes are
    needed. Raises ProxyProtocolError for anything else (including data that is no PROXY header)."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    raise ProxyProtocolError("not a PROXY protocol header")


# ---------------------------------------------------------------------------- version 1


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if not looks_like_header(data):
            raise ProxyProtocolError("not a PROXY protocol header")
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX} bytes")
        return None
    line = data[:end]
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError("not a PROXY protocol header")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    parts = text.split(" ")
    header = ProxyHeader(1)
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return header, end + 2  # the rest of the line is to be ignored (spec §2.1)
    if len(parts) != 6:
        raise ProxyProtocolError("v1 header needs 6 fields")
    _, proto, src, dst, sport, dport = parts
    if proto == "TCP4":
        version = 4
    elif proto == "TCP6":
        version = 6
    else:
        raise ProxyProtocolError(f"v1 protocol {proto[:10]!r} is not TCP4, TCP6 or UNKNOWN")
    header.local = False
    header.source = (_v1_address(src, version), _v1_port(sport))
    header.destination = (_v1_address(dst, version), _v1_port(dport))
    return header, end + 2


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 address {text[:46]!r} is not an IP address") from None
    if address.version != version:
        raise ProxyProtocolError(f"v1 address {text!r} is not IPv{version}")
    return str(address)


def _v1_port(text: str) -> int:
    # Decimal, no sign, no leading zero (spec §2.1), 0-65535.
    if not text.isdigit() or not text.isascii() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"v1 port {text[:8]!r} is not a port number")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 port {port} is out of range")
    return port


# ---------------------------------------------------------------------------- version 2

_V2_HEAD = struct.Struct("!12sBBH")


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        if not looks_like_header(data):
            raise ProxyProtocolError("not a PROXY protocol header")
        return None
    signature, version_command, family_transport, length = _V2_HEAD.unpack_from(data)
    if signature != V2_SIGNATURE:
        raise ProxyProtocolError("not a PROXY protocol header")
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (_LOCAL, _PROXY):
        raise ProxyProtocolError(f"v2 header with command {command}")
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"v2 header of {length} bytes (more than {MAX_V2_LENGTH})")
    total = 16 + length
    if len(data) < total:
        return None
    family, transport = family_transport >> 4, family_transport & 0x0F
    size = _ADDRESS_SIZES.get(family)
    if size is None or transport > 2:
        raise ProxyProtocolError(f"v2 header with address family 0x{family_transport:02x}")
    if length < size:
        raise ProxyProtocolError("v2 header shorter than its address block")
    header = ProxyHeader(2)
    block = data[16 : 16 + size]
    if command == _PROXY and family in (_AF_INET, _AF_INET6) and transport != 0:
        header.local = False
        if family == _AF_INET:
            src, dst, sport, dport = struct.unpack("!4s4sHH", block)
            af = socket.AF_INET
        else:
            src, dst, sport, dport = struct.unpack("!16s16sHH", block)
            af = socket.AF_INET6
        header.source = (socket.inet_ntop(af, src), sport)
        header.destination = (socket.inet_ntop(af, dst), dport)
    elif command == _PROXY and family == _AF_UNIX:
        header.local = False  # a unix-socket client: no address to give the application
    _parse_tlvs(data, 16 + size, total, header)
    return header, total


def _walk_tlvs(data: bytes, position: int, end: int, what: str, within: str) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value size) of each type-length-value in data[position:end] (spec §2.2.7's
    layout, for the header's TLVs and the SSL TLV's sub-TLVs alike)."""
    while position < end:
        if end - position < 3:
            raise ProxyProtocolError(f"v2 {what} truncated")
        kind = data[position]
        size = int.from_bytes(data[position + 1 : position + 3], "big")
        start = position + 3
        if start + size > end:
            raise ProxyProtocolError(f"v2 {what} 0x{kind:02x} longer than the {within}")
        yield kind, start, size
        position = start + size


def _parse_tlvs(data: bytes, position: int, end: int, header: ProxyHeader) -> None:
    tlvs = header.tlvs
    crc_at = -1
    for kind, start, size in _walk_tlvs(data, position, end, "TLV", "header"):
        value = data[start : start + size]
        if kind == PP2_TYPE_CRC32C:
            if size != 4:
                raise ProxyProtocolError("v2 CRC32C TLV is not 4 bytes")
            crc_at = start
        elif kind == PP2_TYPE_SSL:
            _parse_ssl(value, header)
        if kind != PP2_TYPE_NOOP:
            tlvs[kind] = value
    if crc_at >= 0:
        whole = bytearray(data[:end])
        whole[crc_at : crc_at + 4] = b"\x00\x00\x00\x00"
        if crc32c(bytes(whole)) != int.from_bytes(data[crc_at : crc_at + 4], "big"):
            raise ProxyProtocolError("v2 header CRC32C mismatch")


def _parse_ssl(value: bytes, header: ProxyHeader) -> None:
    if len(value) < 5:
        raise ProxyProtocolError("v2 SSL TLV truncated")
    header.client_flags = value[0]
    header.verify = int.from_bytes(value[1:5], "big")
    for kind, start, size in _walk_tlvs(value, 5, len(value), "SSL sub-TLV", "SSL TLV"):
        name = _SSL_SUBTYPES.get(kind)
        if name is not None:
            header.ssl[name] = value[start : start + size].decode("utf-8", "replace")


def tls_extension(header: ProxyHeader) -> dict[str, Any] | None:
    """ASGI's TLS extension (`scope["extensions"]["tls"]`) from the balancer's SSL TLV, or None when the
    client's connection to the balancer was not TLS. The balancer terminated TLS: there is no server
    certificate or client chain to give, only what the TLV says."""
    if not header.client_flags & PP2_CLIENT_SSL:
        return None
    has_cert = bool(header.client_flags & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS))
    return {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": header.ssl.get("cn") if has_cert else None,
        "client_cert_error": None if not has_cert or header.verify == 0 else f"verify result {header.verify}",
        "tls_version": TLS_VERSIONS.get(header.ssl.get("version", "")),
        "cipher_suite": None,  # the TLV names the cipher; its number is not known here
    }


# ---------------------------------------------------------------------------- CRC32C (Castagnoli)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (table-driven; headers are at most a few KiB, checked once per connection)."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
