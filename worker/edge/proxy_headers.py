"""Proxy headers: trust `Forwarded` / `X-Forwarded-*` from known proxies and rewrite the ASGI scope.

Only a trusted peer (its IP in `forwarded_allow_ips`, `*`, or `unix` for unix-socket peers) may change what
the application sees; from anyone else the headers are ignored without being looked at.

What is rewritten, and from where:

* `scope["client"]` from RFC 7239 `Forwarded: for=` or `X-Forwarded-For`. Proxies append, so the list is
  walked from the right past trusted proxies; the first untrusted address is the client (uvicorn's rule).
  If every address is trusted, the left-most one is used. The port is the one given (`"[::1]:4711"`), else
  0. A value that is not an IP address (`unknown`, `_hidden`, garbage) leaves the client unchanged.
* `scope["scheme"]` from `Forwarded: proto=` or `X-Forwarded-Proto` (http/https/ws/wss only; websocket
  scopes get ws/wss).
* the `host` request header from `Forwarded: host=` or `X-Forwarded-Host`. The header is what Django,
  Starlette, Flask and WSGI's HTTP_HOST read for URL building. `scope["server"]` is left alone: it is the
  address this server listens on, not the name the client asked for.

Proto and host come from the same hop as the client: for `Forwarded` the chosen element; for X-Forwarded-*
the value at the client's index when the list has as many entries as X-Forwarded-For, else the right-most
value (the one set by the nearest proxy, which a client cannot forge).

When both families are present, X-Forwarded-* wins: most proxies (nginx's usual configuration among
them) set X-Forwarded-* and pass a client's own `Forwarded` header through unchanged, so preferring
`Forwarded` would let a client choose its address. `headers=` (the `forwarded_headers` setting) restricts
trust to one family: 'forwarded' for a proxy that sets RFC 7239 headers, or 'x-forwarded'.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["ProxyHeaders", "make_proxy_headers", "parse_forwarded"]

# The logger keeps the module's name from before worker/ had rooms: logging configs name it.
logger = logging.getLogger("corral.worker.proxy")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = frozenset(("http", "https", "ws", "wss"))
_WS_SCHEME = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}

# RFC 7230 token, and a forwarded-pair `token=value` where value is a token or a quoted-string.
_PAIR = re.compile(r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s"]*)\s*([;,]|$)""")
_QUOTED_PAIR = re.compile(r"\\(.)")
# What a host (reg-name, IPv4, [IPv6]) with an optional port may contain; anything else is not used.
_HOST = re.compile(r"^[A-Za-z0-9._~\-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """Parse an RFC 7239 `Forwarded` field value into its elements (lower-case keys, unquoted values).

    Malformed input ends parsing: the elements parsed so far are returned.
    """
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    position, end = 0, len(value)
    while position < end:
        # Skip empty list members (", ,") that some proxies produce.
        while position < end and value[position] in " \t,":
            if value[position] == "," and current:
                elements.append(current)
                current = {}
            position += 1
        if position >= end:
            break
        match = _PAIR.match(value, position)
        if match is None:
            logger.debug("malformed Forwarded header %r at offset %d", value, position)
            break
        key, raw, separator = match.groups()
        if raw.startswith('"'):
            raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1])
        current.setdefault(key.lower(), raw)
        position = match.end()
        if separator == ",":
            elements.append(current)
            current = {}
    if current:
        elements.append(current)
    return elements


def _split_node(node: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` -> (host, port); port 0 when absent or bad."""
    node = node.strip()
    if node.startswith("["):
        close = node.find("]")
        if close == -1:
            return node, 0
        host, rest = node[1:close], node[close + 1 :]
        if rest.startswith(":") and rest[1:].isdigit():
            return host, int(rest[1:])
        return host, 0
    if node.count(":") == 1:  # IPv4 or name with a port; a bare IPv6 address has several colons
        host, _, port = node.partition(":")
        return host, int(port) if port.isdigit() else 0
    return node, 0


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ProxyHeaders:
    """Trust decision and scope rewriting for `forwarded_allow_ips`."""

    __slots__ = (
        "trust_all",
        "trust_unix",
        "_addresses",
        "_networks",
        "_literals",
        "_trusts_host",
        "enabled",
        "_use_forwarded",
        "_use_x_forwarded",
    )

    def __init__(self, forwarded_allow_ips: Iterable[str], headers: str = "auto") -> None:
        if headers not in ("auto", "forwarded", "x-forwarded"):
            raise ValueError(f"headers must be 'auto', 'forwarded' or 'x-forwarded', got {headers!r}")
        self._use_forwarded = headers != "x-forwarded"
        self._use_x_forwarded = headers != "forwarded"
        if isinstance(forwarded_allow_ips, str):
            forwarded_allow_ips = forwarded_allow_ips.split(",")
        entries = [entry.strip() for entry in forwarded_allow_ips if entry and entry.strip()]
        self.trust_all = "*" in entries
        self.trust_unix = self.trust_all or "unix" in entries
        self._addresses: set[_IPAddress] = set()
        self._networks: list[_IPNetwork] = []
        self._literals: set[str] = set()
        for entry in entries:
            if entry in ("*", "unix"):
                continue
            try:
                if "/" in entry:
                    self._networks.append(ipaddress.ip_network(entry, strict=False))
                else:
                    self._addresses.add(ipaddress.ip_address(entry))
            except ValueError:
                # Not an IP: kept as a literal (e.g. a name a custom protocol puts in scope["client"]).
                logger.warning("forwarded_allow_ips: %r is not an IP address or network; matched literally", entry)
                self._literals.add(entry)
        # Peers repeat (a proxy's few addresses), so cache the decision; bounded against address floods.
        self._trusts_host = functools.lru_cache(maxsize=1024)(self._compute_trust)
        #: False when nobody can ever be trusted: callers can skip apply() altogether.
        self.enabled = self.trust_all or self.trust_unix or bool(self._addresses or self._networks or self._literals)

    # ------------------------------------------------------------------------ trust

    def _compute_trust(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host in self._literals
        if ip in self._addresses:
            return True
        if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 from a dual-stack socket
            mapped = ip.ipv4_mapped
            if mapped in self._addresses or any(mapped in net for net in self._networks):
                return True
        return any(ip in net for net in self._networks)

    def trusts_host(self, host: str) -> bool:
        """Whether an address (a TCP peer or a hop in a forwarded chain) is a trusted proxy."""
        if self.trust_all:
            return True
        if not host or len(host) > 253:
            return False
        return self._trusts_host(host)

    def trusts(self, client_host: str | None, is_unix: bool) -> bool:
        """Whether this connection's peer is trusted; decide once per connection."""
        if is_unix:
            return self.trust_unix
        if client_host is None:
            return self.trust_all
        return self.trusts_host(client_host)

    def trusts_scope(self, scope: dict[str, Any]) -> bool:
        """Trust decision from a scope: a unix-socket peer has no client and no server port."""
        client = scope.get("client")
        if client is None:
            server = scope.get("server")
            is_unix = server is None or server[1] is None
            return self.trusts(None, is_unix)
        return self.trusts(client[0], False)

    # ------------------------------------------------------------------------ rewriting

    def apply(self, scope: dict[str, Any], trusted: bool | None = None) -> None:
        """Rewrite client/scheme/host in `scope` from proxy headers if the peer is trusted.

        Pass `trusted` when the connection already decided (see `trusts`); otherwise it is decided here.
        """
        if trusted is None:
            trusted = self.trusts_scope(scope)
        if not trusted:
            return

        forwarded: list[bytes] = []
        x_for: list[bytes] = []
        x_proto: list[bytes] = []
        x_host: list[bytes] = []
        use_x = self._use_x_forwarded
        for name, value in scope["headers"]:
            # ASGI header names are lower-case; only the x-/f- names are worth comparing.
            if name[:2] == b"x-":
                if not use_x:
                    continue
                if name == b"x-forwarded-for":
                    x_for.append(value)
                elif name == b"x-forwarded-proto":
                    x_proto.append(value)
                elif name == b"x-forwarded-host":
                    x_host.append(value)
            elif name == b"forwarded" and self._use_forwarded:
                forwarded.append(value)

        # X-Forwarded-* first: it is what proxies (nginx's usual config) set, while most of them pass a
        # client's own `Forwarded` header through untouched, so preferring it would let clients spoof.
        if x_for or x_proto or x_host:
            self._apply_x_forwarded(scope, x_for, x_proto, x_host)
        elif forwarded:
            elements = parse_forwarded(b",".join(forwarded).decode("latin-1"))
            if elements:
                self._apply_forwarded(scope, elements)

    def _pick(self, hosts: list[str]) -> int:
        """Index of the right-most untrusted hop; 0 when all hops are trusted proxies."""
        if self.trust_all:
            return 0
        for index in range(len(hosts) - 1, -1, -1):
            if not self.trusts_host(hosts[index]):
                return index
        return 0

    def _apply_forwarded(self, scope: dict[str, Any], elements: list[dict[str, str]]) -> None:
        nodes = [_split_node(element.get("for", "")) for element in elements]
        index = self._pick([host for host, _ in nodes])
        element = elements[index]
        host, port = nodes[index]
        if "for" in element and _is_ip(host):  # `unknown` / `_obfuscated` identify nobody: client unchanged
            scope["client"] = (host, port)
        if "proto" in element:
            _set_scheme(scope, element["proto"])
        if "host" in element:
            _set_host(scope, element["host"])

    def _apply_x_forwarded(
        self, scope: dict[str, Any], x_for: list[bytes], x_proto: list[bytes], x_host: list[bytes]
    ) -> None:
        index, count = 0, 0
        if x_for:
            nodes = [_split_node(item) for item in b",".join(x_for).decode("latin-1").split(",")]
            count = len(nodes)
            index = self._pick([host for host, _ in nodes])
            host, port = nodes[index]
            if _is_ip(host):
                scope["client"] = (host, port)
        if x_proto:
            _set_scheme(scope, _hop_value(x_proto, index, count))
        if x_host:
            _set_host(scope, _hop_value(x_host, index, count))


def _hop_value(values: list[bytes], index: int, count: int) -> str:
    """The value for the chosen hop: same index when aligned with X-Forwarded-For, else the right-most."""
    items = [item.strip() for item in b",".join(values).decode("latin-1").split(",")]
    if count and len(items) == count:
        return items[index]
    return items[-1]


def _set_scheme(scope: dict[str, Any], proto: str) -> None:
    proto = proto.strip().lower()
    if proto not in _SCHEMES:
        return
    scope["scheme"] = _WS_SCHEME[proto] if scope.get("type") == "websocket" else _HTTP_SCHEME[proto]


def _set_host(scope: dict[str, Any], host: str) -> None:
    host = host.strip()
    if not host or len(host) > 255 or not _HOST.match(host):
        return  # refuse anything that could smuggle a path, credentials or header syntax into URLs
    value = host.encode("latin-1")
    headers = [(name, v) for name, v in scope["headers"] if name != b"host"]
    headers.append((b"host", value))
    scope["headers"] = headers


def make_proxy_headers(settings: object) -> ProxyHeaders | None:
    """ProxyHeaders from `settings.forwarded_allow_ips` / `forwarded_headers`, or None when nobody is trusted."""
    proxy = ProxyHeaders(
        settings.forwarded_allow_ips,  # type: ignore[attr-defined]  # a Settings (typed object here, as the proxy needs only these two)
        getattr(settings, "forwarded_headers", "auto"),
    )
    return proxy if proxy.enabled else None
