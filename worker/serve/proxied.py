"""`ProxiedHttpProtocol`: the HTTP/1.1 protocol behind a TCP load balancer that speaks the PROXY protocol
(`--proxy-protocol`). It reads the PROXY header (`corral.worker.edge.proxy_protocol`) before the first request, then
behaves exactly as `HttpProtocol` (one extra call per read).

Who may send a header: peers in `--proxy-allow-ips`. A trusted peer may also send no header (gunicorn's
rule: a balancer's own checks, a local probe), and is then served with its own address. A header from any
other peer is an attempt to choose the address the application sees: the connection is closed with one
log line, as is a malformed header from a trusted peer. The header timer (`--header-timeout`) runs from the
connection's opening, over the PROXY header and the first request head alike.

What the application sees: `scope["client"]` is the header's source address and port; `scope["scheme"]` is
https/wss when the client's connection to the balancer was TLS (the v2 SSL TLV); `scope["extensions"]`
gets `proxy_protocol` (version, source, destination, ALPN, authority, unique id, SSL details, raw TLVs) and,
for TLS clients, ASGI's `tls` extension. X-Forwarded-* / Forwarded are then trusted only if that client
address is in `--forwarded-allow-ips`: the balancer's own address no longer stands for the client.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import CLOSED
from corral.worker.edge.proxy_protocol import (
    V1_PREFIX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    looks_like_header,
    parse_header,
    tls_extension,
)
from corral.worker.http1.protocol import HttpProtocol

__all__ = ["proxied_protocol", "ProxiedHttpProtocol"]

logger = logging.getLogger("corral.error")


def proxied_protocol(base: type[HttpProtocol] = HttpProtocol) -> type[HttpProtocol]:
    """`base` reading a PROXY header first (the server chooses its protocol class once: see WorkerServer)."""
    if base is HttpProtocol:
        return ProxiedHttpProtocol
    return type("ProxiedHttpProtocol", (_Proxied, base), {"__slots__": ("preamble", "header_trusted")})


if TYPE_CHECKING:
    from corral.worker.http1.host import Host

    _Mixin = HttpProtocol  # what the mixin is put in front of, for mypy
else:
    _Mixin = object


class _Proxied(_Mixin):
    """The PROXY protocol part, mixed in front of a protocol class (plain, metered, with a health path)."""

    if not TYPE_CHECKING:  # the slots are the class's it is mixed into (mypy would refuse assignments)
        __slots__ = ()
    preamble: bytes | None
    header_trusted: bool

    def __init__(self, server: Host, sockname: tuple[Any, ...] | None = None) -> None:
        super().__init__(server, sockname)
        self.preamble: bytes | None = b""  # bytes read before the header is decided; None once it is
        self.header_trusted = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        client = self.client
        self.header_trusted = bool(
            self.server.proxy_trust.trusts(client[0] if client else None, self.sockname[1] is None)  # type: ignore[index]  # set by now
        )

    def data_received(self, data: bytes) -> None:
        preamble = self.preamble
        if preamble is None:
            super().data_received(data)
            return
        if self.phase == CLOSED:
            return
        if preamble:
            data = preamble + data
        if not data.startswith((V1_PREFIX, V2_SIGNATURE)):
            if looks_like_header(data):
                self.preamble = data  # the start of a PROXY signature, or of "PUT", "POST", ...: wait
                return
            self.preamble = None  # no header: plain HTTP from this peer, with its own address
            super().data_received(data)
            return
        peer = self.client[0] if self.client else "unix socket"
        if not self.header_trusted:
            logger.warning("PROXY protocol header from %s, which is not in --proxy-allow-ips: closing", peer)
            self.close()
            return
        try:
            parsed = parse_header(data)
        except ProxyProtocolError as exc:
            logger.warning("Malformed PROXY protocol header from %s (%s): closing", peer, exc)
            self.close()
            return
        if parsed is None:
            self.preamble = data
            return
        header, used = parsed
        self.preamble = None
        self.apply(header)
        if len(data) > used:
            super().data_received(data[used:])

    def apply(self, header: ProxyHeader) -> None:
        server = self.server
        if not header.local and header.source is not None:
            self.client = header.source
        if header.tls:
            self.scheme = "https"
        extensions: dict[str, Any] = dict(self.extensions or {})
        extensions["proxy_protocol"] = header.describe()
        tls = tls_extension(header)
        if tls is not None:
            extensions["tls"] = tls
        self.extensions = extensions  # every request of the connection gets them
        trusts = getattr(server.proxy, "trusts", None) if server.proxy is not None else None
        if trusts is not None:  # X-Forwarded-* trust follows the client the header named
            local_unix = self.sockname[1] is None and header.local  # type: ignore[index]  # set by connection_made
            self.trusted = bool(trusts(self.client[0] if self.client else None, local_unix))


class ProxiedHttpProtocol(_Proxied, HttpProtocol):
    __slots__ = ("preamble", "header_trusted")
