"""PROXY protocol v1 and v2: the parser on its own (every field, truncated and oversized headers, TLVs, CRC32C),
then through a real worker: the scope, trust, closing, the header timer."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from corral.shared.settings import Settings
from corral.worker.edge.proxy_protocol import (
    MAX_V2_LENGTH,
    V1_MAX,
    V2_SIGNATURE,
    ProxyProtocolError,
    crc32c,
    looks_like_header,
    parse_header,
    tls_extension,
)
from worker_http_helpers import Client, run_server

# ---------------------------------------------------------------------------- building v2 headers (tests' own)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(
    command: int = 1,
    family: int = 0x11,
    addresses: bytes | None = None,
    tlvs: bytes = b"",
    version: int = 2,
    length: int | None = None,
) -> bytes:
    if addresses is None:
        addresses = socket.inet_aton("203.0.113.7") + socket.inet_aton("198.51.100.1") + struct.pack("!HH", 51234, 443)
    body = addresses + tlvs
    return (
        V2_SIGNATURE
        + bytes([(version << 4) | command, family])
        + struct.pack("!H", len(body) if length is None else length)
        + body
    )


def ssl_tlv(
    flags: int = 0x01,
    verify: int = 0,
    version: str = "TLSv1.3",
    cn: str | None = None,
    cipher: str = "TLS_AES_128_GCM_SHA256",
) -> bytes:
    subs = tlv(0x21, version.encode()) + tlv(0x23, cipher.encode())
    if cn is not None:
        subs += tlv(0x22, cn.encode())
    return tlv(0x20, bytes([flags]) + struct.pack("!I", verify) + subs)


# ---------------------------------------------------------------------------- v1


def test_v1_tcp4_and_tcp6():
    header, used = parse_header(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /")
    assert used == len(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n")
    assert (header.version, header.local) == (1, False)
    assert header.source == ("192.0.2.1", 56324) and header.destination == ("198.51.100.2", 443)
    header, _ = parse_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n")
    assert header.source == ("2001:db8::1", 65535) and header.destination == ("2001:db8::2", 0)


def test_v1_unknown_uses_the_connection_addresses():
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        header, used = parse_header(line)
        assert header.local and header.source is None and used == len(line)


def test_v1_longest_header_is_accepted():
    addresses = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    assert parse_header(b"PROXY TCP6 " + addresses)[0].source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    line = b"PROXY UNKNOWN " + addresses  # the spec's worst case
    assert len(line) == V1_MAX
    assert parse_header(line)[1] == V1_MAX


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 x\r\n",  # one too many
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",  # not IPv4
        b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",  # not IPv6
        b"PROXY TCP4 192.0.2.300 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 0443 2\r\n",  # a leading zero
        b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
        b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\xff\r\n",
    ],
)
def test_v1_malformed(line):
    with pytest.raises(ProxyProtocolError):
        parse_header(line)


def test_v1_truncated_waits_and_oversized_fails():
    assert parse_header(b"PROXY TCP4 192.0.2.1 198.") is None
    assert parse_header(b"PRO") is None
    with pytest.raises(ProxyProtocolError, match="longer than"):
        parse_header(b"PROXY TCP4 " + b"1" * 200)


def test_looks_like_header():
    assert looks_like_header(b"P") and looks_like_header(b"PROX") and looks_like_header(b"PROXY TCP4")
    assert looks_like_header(b"\r\n\r\n\x00") and looks_like_header(V2_SIGNATURE + b"!")
    assert not looks_like_header(b"POST / HTTP/1.1") and not looks_like_header(b"GET /")
    assert not looks_like_header(b"\r\n\r\nGET") and not looks_like_header(b"")


# ---------------------------------------------------------------------------- v2


def test_v2_tcp4_and_tcp6_every_address_field():
    header, used = parse_header(v2() + b"GET /")
    assert used == 16 + 12 and (header.version, header.local) == (2, False)
    assert header.source == ("203.0.113.7", 51234) and header.destination == ("198.51.100.1", 443)
    addresses = (
        socket.inet_pton(socket.AF_INET6, "2001:db8::7")
        + socket.inet_pton(socket.AF_INET6, "::1")
        + struct.pack("!HH", 1, 65535)
    )
    header, used = parse_header(v2(family=0x21, addresses=addresses))
    assert used == 16 + 36
    assert header.source == ("2001:db8::7", 1) and header.destination == ("::1", 65535)


def test_v2_local_and_unspec_use_the_connection_addresses():
    header, _ = parse_header(v2(command=0))  # LOCAL: a balancer's health check; the addresses are ignored
    assert header.local and header.source is None
    header, used = parse_header(v2(family=0x00, addresses=b""))
    assert header.local and used == 16
    header, _ = parse_header(v2(family=0x31, addresses=b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")))
    assert not header.local and header.source is None  # a unix-socket client: no address to give


def test_v2_tlvs_alpn_authority_unique_id_noop_and_ssl():
    tlvs = (
        tlv(0x01, b"h2")
        + tlv(0x02, b"example.com")
        + tlv(0x04, b"\0\0\0")
        + tlv(0x05, b"id-123")
        + ssl_tlv(flags=0x07, verify=0, cn="client.example", version="TLSv1.2")
        + tlv(0xEA, b"\x01vpce-1")
    )
    header, _ = parse_header(v2(tlvs=tlvs))
    assert header.alpn == b"h2" and header.authority == "example.com"
    assert header.tlvs[0x05] == b"id-123" and header.tlvs[0xEA] == b"\x01vpce-1" and 0x04 not in header.tlvs
    assert header.tls and header.ssl == {
        "version": "TLSv1.2",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "cn": "client.example",
    }
    assert tls_extension(header) == {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": "client.example",
        "client_cert_error": None,
        "tls_version": 0x0303,
        "cipher_suite": None,
    }
    described = header.describe()
    assert described["alpn"] == b"h2" and described["unique_id"] == b"id-123" and described["version"] == 2


def test_v2_ssl_without_client_tls_and_a_failed_verification():
    header, _ = parse_header(v2(tlvs=ssl_tlv(flags=0x00)))
    assert not header.tls and tls_extension(header) is None
    header, _ = parse_header(v2(tlvs=ssl_tlv(flags=0x03, verify=20, cn="x")))
    assert tls_extension(header)["client_cert_error"] == "verify result 20"


def test_v2_crc32c_is_checked():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    unsigned = v2(tlvs=tlv(0x03, b"\0\0\0\0") + tlv(0x01, b"http/1.1"))
    good = unsigned.replace(tlv(0x03, b"\0\0\0\0"), tlv(0x03, struct.pack("!I", crc32c(unsigned))))
    header, _ = parse_header(good)
    assert header.alpn == b"http/1.1"
    bad = good[:-1] + b"2"  # the ALPN changed after the checksum was made
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse_header(bad)


@pytest.mark.parametrize(
    "data, message",
    [
        (v2(version=1), "version"),
        (v2(command=2), "command"),
        (v2(family=0x41), "family"),
        (v2(family=0x13), "family"),
        (v2(length=MAX_V2_LENGTH + 1), "more than"),
        (v2(addresses=b"\x01" * 8), "address block"),  # shorter than a TCP4 block
        (v2(tlvs=b"\x01\x00"), "truncated"),
        (v2(tlvs=b"\x01\x00\x09ab"), "longer than the header"),
        (v2(tlvs=tlv(0x20, b"\x01\0\0")), "SSL TLV truncated"),
        (v2(tlvs=tlv(0x20, b"\x01\0\0\0\0" + b"\x21\x00\x09ab")), "sub-TLV"),
        (v2(tlvs=tlv(0x03, b"\0\0")), "CRC32C"),
        (V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + b"\0" * 12, "not a PROXY"),
    ],
)
def test_v2_malformed(data, message):
    with pytest.raises(ProxyProtocolError, match=message):
        parse_header(data)


def test_v2_truncated_waits():
    header = v2(tlvs=tlv(0x01, b"h2"))
    for cut in (1, 11, 15, 16, len(header) - 1):
        assert parse_header(header[:cut]) is None


def test_not_a_header():
    with pytest.raises(ProxyProtocolError):
        parse_header(b"GET / HTTP/1.1\r\n")


# ---------------------------------------------------------------------------- through a worker


class Scopes:
    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        with self.lock:
            self.seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(
            {"type": "http.response.body", "body": b"%s|%s" % (str(scope["client"]).encode(), scope["scheme"].encode())}
        )


def proxied(**values) -> Settings:
    return Settings(proxy_protocol=True, **values)


def test_a_v1_header_sets_the_client_for_every_request_on_the_connection():
    app = Scopes()
    with run_server(app, proxied()) as (host, port, _), Client(host, port) as client:
        client.send(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n")
        assert client.get().body == b"('192.0.2.1', 56324)|http"
        assert client.get("/again").body == b"('192.0.2.1', 56324)|http"
    assert app.seen[0]["extensions"]["proxy_protocol"]["destination"] == ("198.51.100.2", 443)


def test_a_v2_header_split_across_reads_with_tls_gives_https_and_the_tls_extension():
    app = Scopes()
    header = v2(tlvs=tlv(0x01, b"http/1.1") + ssl_tlv(flags=0x01))
    with run_server(app, proxied()) as (host, port, _), Client(host, port) as client:
        client.send(header[:5])
        client.send(header[5:20])
        client.send(header[20:] + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert client.response().body == b"('203.0.113.7', 51234)|https"
    extensions = app.seen[0]["extensions"]
    assert extensions["tls"]["tls_version"] == 0x0304 and extensions["proxy_protocol"]["alpn"] == b"http/1.1"


def test_a_trusted_peer_may_send_no_header():
    with run_server(Scopes(), proxied()) as (host, port, _), Client(host, port) as client:
        assert client.get().body.startswith(b"('127.0.0.1', ")
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")  # "P" could have been PROXY
        assert client.response().status == 200


def test_a_header_from_an_untrusted_peer_closes_the_connection(caplog):
    with run_server(Scopes(), proxied(proxy_allow_ips="192.0.2.99")) as (host, port, _):
        with Client(host, port) as client:
            client.send(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert client.closed()  # nothing answered
        with Client(host, port) as client:  # the same peer without a header is served as itself
            assert client.get().body.startswith(b"('127.0.0.1', ")
    assert [r.getMessage() for r in caplog.records if "not in --proxy-allow-ips" in r.getMessage()]


def test_a_malformed_header_from_a_trusted_peer_closes_the_connection(caplog):
    with run_server(Scopes(), proxied()) as (host, port, _):
        with Client(host, port) as client:
            client.send(b"PROXY TCP4 192.0.2.1 nonsense 1 2\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert client.closed()
        with Client(host, port) as client:
            client.send(v2(length=MAX_V2_LENGTH + 100))
            assert client.closed()
        with Client(host, port) as client:
            assert client.get().status == 200
    assert len([r for r in caplog.records if "Malformed PROXY protocol header" in r.getMessage()]) == 2


def test_the_header_timer_covers_an_unfinished_header():
    with run_server(Scopes(), proxied(header_timeout=0.3)) as (host, port, _), Client(host, port) as client:
        client.send(b"PROXY TCP4 192.0.2.1 ")
        assert client.response().status == 408
        assert client.closed()


def test_forwarded_headers_are_trusted_only_from_the_client_the_header_names():
    app = Scopes()
    with run_server(app, proxied()) as (host, port, _), Client(host, port) as client:
        client.send(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n")
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n")
        assert client.response().body == b"('192.0.2.1', 56324)|http"  # not 10.1.1.1: 192.0.2.1 is no proxy
