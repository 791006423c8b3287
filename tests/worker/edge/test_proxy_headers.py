import pytest

from corral.worker.edge.proxy_headers import ProxyHeaders, parse_forwarded


def make_scope(headers=(), client=("127.0.0.1", 5000), server=("127.0.0.1", 8000), type="http", scheme="http"):
    return {
        "type": type,
        "scheme": scheme if type == "http" else scheme.replace("http", "ws"),
        "client": client,
        "server": server,
        "headers": [(k.encode(), v.encode()) for k, v in headers] + [(b"host", b"internal:8000")],
    }


def host_header(scope):
    values = [v for k, v in scope["headers"] if k == b"host"]
    assert len(values) == 1
    return values[0].decode()


# ---------------------------------------------------------------------------- trust


def test_trust_ips_cidr_star_unix():
    proxy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32", "::1"])
    assert proxy.trusts("127.0.0.1", False)
    assert proxy.trusts("10.1.2.3", False)
    assert proxy.trusts("2001:db8::5", False)
    assert proxy.trusts("::1", False)
    assert proxy.trusts("::ffff:127.0.0.1", False)  # v4-mapped from a dual-stack socket
    assert not proxy.trusts("11.0.0.1", False)
    assert not proxy.trusts("2001:db9::1", False)
    assert not proxy.trusts("not-an-ip", False)
    assert not proxy.trusts(None, False)
    assert not proxy.trusts(None, True)  # unix peers need 'unix'

    assert ProxyHeaders(["unix"]).trusts(None, True)
    assert not ProxyHeaders(["unix"]).trusts("127.0.0.1", False)
    star = ProxyHeaders(["*"])
    assert star.trusts("8.8.8.8", False) and star.trusts(None, True)


def test_comma_string_accepted_and_enabled_flag():
    assert ProxyHeaders("127.0.0.1, 10.0.0.0/8").trusts("10.9.9.9", False)
    assert not ProxyHeaders([]).enabled
    assert ProxyHeaders(["unix"]).enabled


def test_trusts_scope_detects_unix_peer():
    proxy = ProxyHeaders(["unix"])
    assert proxy.trusts_scope({"client": None, "server": ("/tmp/s.sock", None)})
    assert proxy.trusts_scope({"client": None, "server": None})
    assert not ProxyHeaders(["127.0.0.1"]).trusts_scope({"client": None, "server": ("/tmp/s.sock", None)})


# ---------------------------------------------------------------------------- X-Forwarded-*


def test_x_forwarded_for_proto_host():
    proxy = ProxyHeaders(["127.0.0.1"])
    scope = make_scope(
        [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "example.com")]
    )
    proxy.apply(scope)
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert host_header(scope) == "example.com"
    assert scope["server"] == ("127.0.0.1", 8000)  # the listening address is not rewritten


def test_x_forwarded_for_chain_rightmost_untrusted():
    proxy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"])
    # client spoofs 1.1.1.1; real client 198.51.100.1; then two trusted proxies.
    scope = make_scope([("x-forwarded-for", "1.1.1.1, 198.51.100.1, 10.0.0.2, 10.0.0.3")])
    proxy.apply(scope)
    assert scope["client"] == ("198.51.100.1", 0)


def test_x_forwarded_for_multiple_headers_joined():
    proxy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"])
    scope = make_scope([("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "10.0.0.2")])
    proxy.apply(scope)
    assert scope["client"] == ("198.51.100.1", 0)


def test_all_hops_trusted_gives_leftmost():
    proxy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"])
    scope = make_scope([("x-forwarded-for", "10.0.0.1, 10.0.0.2")])
    proxy.apply(scope)
    assert scope["client"] == ("10.0.0.1", 0)


def test_star_uses_leftmost():
    scope = make_scope([("x-forwarded-for", "198.51.100.1, 203.0.113.9")], client=("8.8.8.8", 1))
    ProxyHeaders(["*"]).apply(scope)
    assert scope["client"] == ("198.51.100.1", 0)


def test_x_forwarded_for_ipv6_and_ports():
    proxy = ProxyHeaders(["127.0.0.1"])
    scope = make_scope([("x-forwarded-for", "2001:db8::1")])
    proxy.apply(scope)
    assert scope["client"] == ("2001:db8::1", 0)
    scope = make_scope([("x-forwarded-for", "[2001:db8::1]:4711")])
    proxy.apply(scope)
    assert scope["client"] == ("2001:db8::1", 4711)
    scope = make_scope([("x-forwarded-for", "203.0.113.7:1234")])
    proxy.apply(scope)
    assert scope["client"] == ("203.0.113.7", 1234)


def test_x_forwarded_for_non_ip_leaves_client():
    scope = make_scope([("x-forwarded-for", "unknown")])
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] == ("127.0.0.1", 5000)
    scope = make_scope([("x-forwarded-for", "")])
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] == ("127.0.0.1", 5000)


def test_x_forwarded_proto_aligned_with_chain():
    proxy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"])
    # the client forged "https, ..." but the hop it really reached says http
    scope = make_scope(
        [("x-forwarded-for", "6.6.6.6, 198.51.100.1, 10.0.0.2"), ("x-forwarded-proto", "https, http, http")]
    )
    proxy.apply(scope)
    assert scope["client"] == ("198.51.100.1", 0)
    assert scope["scheme"] == "http"
    # not aligned -> the right-most value (set by the nearest proxy)
    scope = make_scope([("x-forwarded-for", "6.6.6.6, 198.51.100.1"), ("x-forwarded-proto", "http, https, https")])
    proxy.apply(scope)
    assert scope["scheme"] == "https"


@pytest.mark.parametrize(
    "proto,http_scheme,ws_scheme",
    [("https", "https", "wss"), ("http", "http", "ws"), ("wss", "https", "wss"), ("ws", "http", "ws")],
)
def test_proto_for_websocket_scopes(proto, http_scheme, ws_scheme):
    proxy = ProxyHeaders(["127.0.0.1"])
    scope = make_scope([("x-forwarded-proto", proto)])
    proxy.apply(scope)
    assert scope["scheme"] == http_scheme
    scope = make_scope([("x-forwarded-proto", proto.upper())], type="websocket")
    proxy.apply(scope)
    assert scope["scheme"] == ws_scheme


def test_bad_proto_and_bad_host_ignored():
    scope = make_scope([("x-forwarded-proto", "javascript"), ("x-forwarded-host", "evil.com/path@x")])
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["scheme"] == "http"
    assert host_header(scope) == "internal:8000"


def test_host_with_port_and_ipv6_host():
    proxy = ProxyHeaders(["127.0.0.1"])
    scope = make_scope([("x-forwarded-host", "example.com:8443")])
    proxy.apply(scope)
    assert host_header(scope) == "example.com:8443"
    scope = make_scope([("forwarded", 'host="[2001:db8::1]:8080"')])
    proxy.apply(scope)
    assert host_header(scope) == "[2001:db8::1]:8080"


def test_host_header_added_when_missing():
    scope = {
        "type": "http",
        "scheme": "http",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [(b"x-forwarded-host", b"example.com")],
    }
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert (b"host", b"example.com") in scope["headers"]


# ---------------------------------------------------------------------------- untrusted peers


def test_untrusted_peer_spoofing_ignored():
    proxy = ProxyHeaders(["10.0.0.1"])
    headers = [
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bank.com"),
        ("forwarded", "for=1.2.3.4;proto=https;host=bank.com"),
    ]
    scope = make_scope(headers, client=("203.0.113.50", 4000))
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in scope.items()}
    proxy.apply(scope)
    assert scope == before


def test_explicit_trusted_argument_skips_decision():
    proxy = ProxyHeaders(["10.0.0.1"])
    scope = make_scope([("x-forwarded-for", "1.2.3.4")], client=("10.0.0.1", 1))
    proxy.apply(scope, trusted=False)
    assert scope["client"] == ("10.0.0.1", 1)
    proxy.apply(scope, trusted=True)
    assert scope["client"] == ("1.2.3.4", 0)


def test_unix_socket_peer_trust_on_and_off():
    headers = [("x-forwarded-for", "198.51.100.1"), ("x-forwarded-proto", "https")]
    scope = make_scope(headers, client=None, server=("/run/app.sock", None))
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] is None and scope["scheme"] == "http"
    scope = make_scope(headers, client=None, server=("/run/app.sock", None))
    ProxyHeaders(["unix"]).apply(scope)
    assert scope["client"] == ("198.51.100.1", 0) and scope["scheme"] == "https"
    scope = make_scope(headers, client=None, server=("/run/app.sock", None))
    ProxyHeaders(["*"]).apply(scope)
    assert scope["client"] == ("198.51.100.1", 0)


# ---------------------------------------------------------------------------- RFC 7239 Forwarded


def test_parse_forwarded():
    assert parse_forwarded("for=192.0.2.60;proto=http;by=203.0.113.43") == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}
    ]
    assert parse_forwarded('For="[2001:db8:cafe::17]:4711"') == [{"for": "[2001:db8:cafe::17]:4711"}]
    assert parse_forwarded("for=192.0.2.43, for=198.51.100.17") == [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]
    assert parse_forwarded('for="a\\"b;c, d";host=x') == [{"for": 'a"b;c, d', "host": "x"}]
    assert parse_forwarded("for = 1.2.3.4 ; proto = https") == [{"for": "1.2.3.4", "proto": "https"}]
    assert parse_forwarded("garbage") == []
    assert parse_forwarded("for=1.2.3.4, garbage") == [{"for": "1.2.3.4"}]


def test_forwarded_basic():
    scope = make_scope([("forwarded", "for=203.0.113.7;proto=https;host=example.com")])
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert host_header(scope) == "example.com"


def test_forwarded_ipv6_quoted_with_port():
    scope = make_scope([("forwarded", 'for="[2001:db8::1]:4711";proto=https')])
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] == ("2001:db8::1", 4711)


def test_forwarded_chain_rightmost_untrusted_uses_that_elements_proto_and_host():
    proxy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"])
    value = (
        "for=6.6.6.6;proto=http;host=forged.com, for=198.51.100.1;proto=https;host=shop.example, "
        "for=10.0.0.2;proto=http;host=internal"
    )
    scope = make_scope([("forwarded", value)])
    proxy.apply(scope)
    assert scope["client"] == ("198.51.100.1", 0)
    assert scope["scheme"] == "https"
    assert host_header(scope) == "shop.example"


def test_forwarded_multiple_headers():
    proxy = ProxyHeaders(["127.0.0.1", "10.0.0.0/8"])
    scope = make_scope([("forwarded", "for=198.51.100.1;proto=https"), ("forwarded", "for=10.0.0.2")])
    proxy.apply(scope)
    assert scope["client"] == ("198.51.100.1", 0) and scope["scheme"] == "https"


@pytest.mark.parametrize("node", ["unknown", "_hidden", '"_SEVKISEK"'])
def test_forwarded_obfuscated_for_leaves_client_but_uses_proto(node):
    scope = make_scope([("forwarded", f"for={node};proto=https")])
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] == ("127.0.0.1", 5000)
    assert scope["scheme"] == "https"


def test_x_forwarded_takes_precedence_over_a_forwarded_header_the_proxy_passed_through():
    # nginx sets X-Forwarded-* and passes a client's Forwarded header on: that one must not win.
    scope = make_scope(
        [
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "x.com"),
            ("forwarded", "for=2.2.2.2;proto=https;host=f.com"),
        ]
    )
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] == ("1.1.1.1", 0)
    assert scope["scheme"] == "http"
    assert host_header(scope) == "x.com"


def test_forwarded_only_setting_ignores_x_forwarded():
    scope = make_scope([("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2;proto=https;host=f.com")])
    ProxyHeaders(["127.0.0.1"], headers="forwarded").apply(scope)
    assert scope["client"] == ("2.2.2.2", 0)
    assert scope["scheme"] == "https"
    assert host_header(scope) == "f.com"


def test_unparseable_forwarded_changes_nothing():
    scope = make_scope([("forwarded", "@@@")])
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope["client"] == ("127.0.0.1", 5000)


def test_no_headers_nothing_changes():
    scope = make_scope([("user-agent", "x")])
    before = dict(scope)
    ProxyHeaders(["127.0.0.1"]).apply(scope)
    assert scope == before


def test_header_family_restriction():
    headers = [("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]
    scope = make_scope(headers)
    ProxyHeaders(["127.0.0.1"], headers="x-forwarded").apply(scope)
    assert scope["client"] == ("1.1.1.1", 0)  # a client-forged Forwarded header cannot win
    scope = make_scope(headers)
    ProxyHeaders(["127.0.0.1"], headers="forwarded").apply(scope)
    assert scope["client"] == ("2.2.2.2", 0)
    scope = make_scope([("x-forwarded-for", "1.1.1.1")])
    ProxyHeaders(["127.0.0.1"], headers="forwarded").apply(scope)
    assert scope["client"] == ("127.0.0.1", 5000)
    with pytest.raises(ValueError):
        ProxyHeaders(["127.0.0.1"], headers="both")


def test_make_proxy_headers_from_settings():
    from corral.shared.settings import Settings
    from corral.worker.edge.proxy_headers import make_proxy_headers

    proxy = make_proxy_headers(Settings())
    assert proxy is not None and proxy.trusts("127.0.0.1", False) and not proxy.trusts(None, True)
    assert make_proxy_headers(Settings(forwarded_allow_ips="")) is None
    proxy = make_proxy_headers(Settings(forwarded_allow_ips="unix", forwarded_headers="x-forwarded"))
    assert proxy.trusts(None, True)
