"""The environ made from the compiled parser's tuple (shared/_environ.c's build_parsed) against the environ made from
the scope the worker makes of that tuple (worker/http1/_head.c's make_scope, then build_environ).

A WSGI request a --threads 1 worker takes from the read has no scope made (corral.worker.wsgi.direct): its environ
comes from what the parser returned. Hypothesis builds the tuples (methods, targets with and without a query, '%'
in the path or the query, HTTP/1.0 and 1.1, header lists), the connection's addresses and scheme, the root path
and the duplicate limit. Where build_parsed answers, it must give the environ (or raise the error) the scope
would; where it declines (None), the request's scope is made and the environ built from it.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.shared import wsgi_environ
from corral.shared.wsgi_environ import TooManyHeaders, build_environ_python, environ_template
from corral.worker.http1.scope import METHODS, decode_path, scope_template

try:
    from corral.shared._environ import build_parsed
    from corral.worker.http1._head import make_scope, parse
except ImportError:
    build_parsed = make_scope = parse = None

pytestmark = pytest.mark.skipif(
    build_parsed is None and not os.environ.get("REQUIRE_NATIVE"),
    reason="corral.shared._environ or corral.worker.http1._head was not built (no C compiler at install)",
)

ARGS = (wsgi_environ._HEADER_KEYS, wsgi_environ._header_key, TooManyHeaders, wsgi_environ._PORTS)
NAMES = st.sampled_from([b"cookie", b"Cookie", b"accept", b"x-b", b"x-a", b"x_a"])  # (one Content-Type at most: parse)
VALUES = st.sampled_from([b"", b"v", b"a=1", b"x y"])
TARGETS = st.sampled_from(
    [b"/", b"/a/b", b"/a?", b"/a?x=1&y=2", b"/q?%41=caf%C3%A9", b"/a%20b", b"/a%2Fb?x", b"/?", b"/a?b?c", b"/~x;p"]
)
ADDRESSES = st.sampled_from([("127.0.0.1", 8000), ("::1", 443), ("/run/s.sock", None), ("h", "80"), None, "path"])


def parsed_of(method: bytes, target: bytes, version: bytes, fields: list) -> tuple:
    """What the compiled parser returns for this request (the test's requests are all of a shape it takes)."""
    head = b"%s %s HTTP/%s\r\nHost: h\r\n" % (method, target, version)
    head += b"".join(b"%s: %s\r\n" % pair for pair in fields)
    parsed = parse(head + b"\r\n", 8190, 100, 65536)
    assert parsed is not None, head
    return parsed


@st.composite
def requests(draw):
    fields = draw(st.lists(st.tuples(NAMES, VALUES), max_size=6))
    return parsed_of(
        draw(st.sampled_from(list(METHODS))), draw(TARGETS), draw(st.sampled_from([b"1.1", b"1.0"])), fields
    )


def from_scope(template, root, parsed, server, client, scheme, limit):
    scope = make_scope(scope_template(root), *parsed[:4], server, client, scheme, {}, None, decode_path)
    try:
        return ("done", build_environ_python(scope, "BODY", limit, template=template))
    except TooManyHeaders as error:
        return ("raised", str(error))


def from_parsed(template, parsed, server, client, scheme, limit):
    try:
        environ = build_parsed(template, parsed, server, client, scheme, "BODY", limit, *ARGS, METHODS)
    except TooManyHeaders as error:
        return ("raised", str(error))
    return None if environ is None else ("done", environ)


@settings(max_examples=800)
@example(
    parsed=parsed_of(b"GET", b"/", b"1.1", [(b"x-a", b"1")] * 3),
    server=("127.0.0.1", 8000),
    client=("10.0.0.1", 5000),
    scheme="http",
    root="",
    limit=2,
)
@given(
    parsed=requests(),
    server=ADDRESSES,
    client=ADDRESSES,
    scheme=st.sampled_from(["http", "https"]),
    root=st.sampled_from(["", "", "", "/", "/app"]),
    limit=st.sampled_from([0, 2, 100]),
)
def test_the_environ_from_the_parsed_request_is_the_one_from_its_scope(parsed, server, client, scheme, root, limit):
    template = environ_template(root, {"wsgi.file_wrapper": object})
    made = from_parsed(template, parsed, server, client, scheme, limit)
    if made is not None:
        assert made == from_scope(template, root, parsed, server, client, scheme, limit)


def test_an_ordinary_request_is_made_from_the_tuple():
    """Guards the test above (a builder that always declined would pass it): the common requests are taken, and
    those with a percent-encoded path, a root path or an unknown method are not."""
    template = environ_template("", {"wsgi.file_wrapper": object})
    addresses = (("127.0.0.1", 8000), ("10.0.0.1", 50000), "http")
    fields = [(b"cookie", b"a=1"), (b"cookie", b"b=2")]
    for target in (b"/", b"/a?x=1", b"/a?%41", b"/a?"):
        for version in (b"1.1", b"1.0"):
            parsed = parsed_of(b"GET", target, version, fields)
            made = from_parsed(template, parsed, *addresses, 100)
            assert made is not None and made == from_scope(template, "", parsed, *addresses, 100)
    assert made[1]["HTTP_COOKIE"] == "a=1; b=2" and made[1]["SERVER_PROTOCOL"] == "HTTP/1.0"
    declined = [
        (parsed_of(b"GET", b"/a%20b", b"1.1", fields), template),
        ((b"PURGE", b"/", True, []), template),
        (parsed_of(b"GET", b"/", b"1.1", fields), environ_template("/app")),
    ]
    for parsed, other in declined:
        assert from_parsed(other, parsed, *addresses, 100) is None
