"""The compiled request-head parser (worker/http1/_head.c) against the pure-Python way it stands in for.

Every read is fed to two `HTTP11Connection`s, one with the compiled parser and one without; whatever the
bytes, both must make the same requests (method, version, target, headers, keep-alive, 100-continue, body,
proxy headers noted), start the same ones, end in the same state, and refuse the same reads with the same
status. Hypothesis builds the reads from request parts near the edges the C code decides on (methods,
target characters, versions, whitespace, control bytes, obs-text, repeated and framing fields, Connection
tokens, limits, bodies too short or too long) and mutates some of them byte by byte. The common shapes must
also really take the compiled way (a differential test that always fell back would prove nothing).
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corral.worker.http1 import connection as connection_module
from corral.worker.http1 import native
from corral.worker.http1.connection import HTTP11Connection, Limits, ProtocolError

try:
    from corral.worker.http1._head import parse as compiled_parse
except ImportError:
    compiled_parse = None

# .ci/run installs corral from a wheel on a machine with a compiler: there the module must have been built.
pytestmark = pytest.mark.skipif(
    compiled_parse is None and not os.environ.get("REQUIRE_NATIVE"),
    reason="corral.worker.http1._head was not built (no C compiler at install)",
)


class Request:
    __slots__ = ("made", "events", "keep_alive")

    def __init__(self, made: tuple) -> None:
        self.made = made
        self.events: list = []
        self.keep_alive = made[4]  # the connection sets it False after an Upgrade request

    def on_body(self, chunk: bytes) -> None:
        self.events.append(("body", chunk))

    def on_body_complete(self) -> None:
        self.events.append(("complete",))


class Handler:
    def __init__(self) -> None:
        self.made: list[Request] = []
        self.started: list[int] = []

    def on_request(self, method, http_version, target, headers, keep_alive, expect_continue, has_body, forwarded):
        request = Request(
            (method, http_version, target, list(headers), keep_alive, expect_continue, has_body, forwarded)
        )
        self.made.append(request)
        return request

    def start_request(self, request: Request) -> None:
        self.started.append(self.made.index(request))


STATE = ("requests", "must_close", "client_close", "completed", "body_size", "last_host", "in_head", "upgraded")


#: What a client may send after the read under test: another request, bare line ends (which llhttp skips
#: after a request that closed the connection), a request that closes the connection itself.
AFTER = (
    (b"GET /next HTTP/1.1\r\nHost: b\r\n\r\n",),
    (b"\r\n", b"GET /next HTTP/1.1\r\nHost: b\r\n\r\n"),
    (b"GET /last HTTP/1.0\r\n\r\n", b"\r\n"),
)


def run(data: bytes, limits: Limits, compiled: bool, monkeypatch: pytest.MonkeyPatch, after=AFTER[0]):
    """What feeding `data` (one read, then the reads of `after`) did, as comparable values."""
    monkeypatch.setattr(connection_module, "_parse_head", compiled_parse if compiled else None)
    handler = Handler()
    state = HTTP11Connection(handler, limits)
    outcome = []
    for read in (data, *after):
        try:
            state.feed(read)
        except ProtocolError as error:
            outcome.append(("error", error.status))
            break
    made = [(request.made, request.events, request.keep_alive) for request in handler.made]
    return outcome, made, handler.started, {name: getattr(state, name) for name in STATE}


def compare(data: bytes, limits: Limits, monkeypatch: pytest.MonkeyPatch) -> None:
    for after in AFTER:
        general = run(data, limits, False, monkeypatch, after)
        fast = run(data, limits, True, monkeypatch, after)
        assert fast == general, (data, after)


GOOD_METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
BAD_METHODS = st.sampled_from([b"PURGE", b"get", b"G", b"CONNECT", b"GETS", b"PROPFIND", b"\x00ET"])
GOOD_TARGETS = st.builds(lambda s: b"/" + s, st.text("abcXYZ019-._~:/?[]@!$&'()*+,;=%", max_size=16).map(str.encode))
BAD_TARGETS = st.one_of(
    st.sampled_from([b"*", b"http://h/p?q", b"", b"/x#frag", b"h:80", b"/%zz"]),
    st.builds(lambda s: b"/" + s, st.binary(min_size=1, max_size=12)),
    st.builds(lambda s: b"/" + s, st.text('ab#"<>\\^`{|}~ \t', min_size=1, max_size=12).map(str.encode)),
)
GOOD_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
BAD_VERSIONS = st.sampled_from([b"HTTP/2.0", b"HTTP/1.2", b"HTTP/1", b"http/1.1", b"HTTP/0.9", b""])
BAD_LINES = st.sampled_from([b"%s  %s %s\r\n", b"%s %s %s\n", b"\r\n%s %s %s\r\n", b"%s %s %s \r\n"])
GOOD_NAMES = st.one_of(
    st.sampled_from(
        [
            b"Content-Type",
            b"Connection",
            b"Expect",
            b"X-Forwarded-For",
            b"Forwarded",
            b"User-Agent",
            b"Accept",
            b"Cookie",
            b"X-Custom",
            b"a" * 70,
        ]
    ),
    st.text("abcXYZ-_!#~.09", min_size=1, max_size=10).map(str.encode),
)
BAD_NAMES = st.sampled_from(
    [
        b"Host",
        b"HOST",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Proxy-Connection",
        b"Bad Name",
        b"Bad\x00",
        b"",
        b"X-\xff",
    ]
)
GOOD_VALUES = st.one_of(
    st.sampled_from(
        [
            b"localhost:8000",
            b"close",
            b"keep-alive",
            b"Keep-Alive",
            b"close, te",
            b"keep-alive, close",
            b"close,keep-alive",
            b"Close",
            b"closed",
            b"te,  close ",
            b"keep-alive,",
            b", close",
            b"close;x",
            b"\tclose",
            b"close\t,te",
            b"CLOSE",
            b"keep-alive , upgrade",
            b"Keep-Alive,Keep-Alive",
            b"100-continue",
            b"100-Continue",
            b"text/plain",
            b"",
            b"  padded  ",
            b"\ttabbed\t",
            b"v" + b" " * 40,  # trailing whitespace counts toward the header block's limit, as llhttp reports it
        ]
    ),
    st.text('abcXYZ 019-_/=;,:\t"', max_size=12).map(str.encode),
)
BAD_VALUES = st.one_of(
    st.sampled_from(
        [
            b"bad host",
            b"bad/host",
            b"0",
            b"007",
            b"-1",
            b"1 2",
            b"99999999999999999999",
            b"Upgrade",
            b"te, upgrade",
            b"chunked",
            b"a\x7fb",
            b"caf\xc3\xa9",
            b"a\rb",
            b"a\nb",
            b"a\r\n b",
        ]
    ),
    st.binary(min_size=1, max_size=10),
)
GOOD_HOSTS = st.sampled_from([b"example.com", b"localhost:8000", b"[::1]:80", b"", b"10.0.0.1"])
BAD_HOSTS = st.sampled_from([b"bad host", b"a/b", b"\xff", b"[::1", b"h:x"])
BAD_SEPARATORS = st.sampled_from([b":  ", b" : ", b":\t", b"; "])
LIMITS = st.sampled_from(
    [
        Limits(request_line=20, request_fields=3, header_block=60),
        Limits(request_body=5),
        Limits(requests_per_connection=1),
        Limits(keepalive=False),
    ]
)
#: What one case spoils, if anything: most cases spoil nothing (the compiled parser must take them), the rest
#: one part each, at the edges its checks decide.
SPOILS = ["nothing"] * 8 + [
    "method",
    "target",
    "version",
    "line",
    "name",
    "value",
    "host",
    "separator",
    "length",
    "trailing",
    "byte",
    "limits",
]


@st.composite
def requests(draw) -> tuple[bytes, Limits]:
    spoil = draw(st.sampled_from(SPOILS))
    method = draw(BAD_METHODS if spoil == "method" else GOOD_METHODS)
    target = draw(BAD_TARGETS if spoil == "target" else GOOD_TARGETS)
    version = draw(BAD_VERSIONS if spoil == "version" else GOOD_VERSIONS)
    head = (draw(BAD_LINES) if spoil == "line" else b"%s %s %s\r\n") % (method, target, version)
    fields = draw(st.lists(st.tuples(GOOD_NAMES, GOOD_VALUES), max_size=5, unique_by=lambda f: f[0].lower()))
    if spoil in ("name", "value"):
        bad = (draw(BAD_NAMES), draw(GOOD_VALUES)) if spoil == "name" else (draw(GOOD_NAMES), draw(BAD_VALUES))
        fields.insert(draw(st.integers(0, len(fields))), bad)
    if version == b"HTTP/1.1" or draw(st.booleans()):
        host = draw(BAD_HOSTS if spoil == "host" else GOOD_HOSTS)
        fields.insert(draw(st.integers(0, len(fields))), (draw(st.sampled_from([b"Host", b"host"])), host))
    separator = draw(BAD_SEPARATORS) if spoil == "separator" else draw(st.sampled_from([b": ", b":"]))
    for name, value in fields:
        head += name + separator + value + b"\r\n"
    body = draw(st.binary(max_size=20))
    if body or draw(st.booleans()):
        head += b"Content-Length: %d\r\n" % (len(body) + (draw(st.sampled_from([1, -1])) if spoil == "length" else 0))
    data = head + b"\r\n" + body
    if spoil == "trailing":
        data += draw(st.sampled_from([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"G", b"\r\n"]))
    elif spoil == "byte":  # one byte changed, removed, or the read cut after it
        at = draw(st.integers(0, len(data) - 1))
        data = draw(
            st.sampled_from(
                [data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :], data[:at] + data[at + 1 :], data[:at]]
            )
        )
    return data, draw(LIMITS) if spoil == "limits" else Limits()


@settings(max_examples=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(case=(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Limits()))
@example(case=(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", Limits()))
@example(case=(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n", Limits()))
@example(case=(b"POST / HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc", Limits()))
@example(case=(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc", Limits(request_body=5)))
@given(case=requests())
def test_the_compiled_parser_makes_what_the_general_way_makes(case, monkeypatch):
    assert compiled_parse is not None  # else both sides would be the general way
    data, limits = case
    compare(data, limits, monkeypatch)


COMMON = [
    b"GET / HTTP/1.1\r\nHost: localhost:8000\r\n\r\n",
    b"GET /plaintext?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: wrk\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"DELETE /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: close\r\n\r\n",
    b"OPTIONS /x HTTP/1.1\r\nHost: [::1]:80\r\nX-Tab:\tv \t\r\n\r\n",
]


@pytest.mark.parametrize("data", COMMON)
def test_common_requests_take_the_compiled_way_and_agree(data, monkeypatch):
    assert compiled_parse is not None
    assert compiled_parse(data, 8190, 100, 8190) is not None  # really the compiled way, not a fall-back
    compare(data, Limits(), monkeypatch)


def test_names_are_lowercased_values_trimmed_and_shared_names_reused():
    assert compiled_parse is not None
    data = b"GET /a HTTP/1.1\r\nHOST: h \r\nX-Odd-Name:  v  w \t\r\nConnection: close\r\n\r\n"
    method, target, http11, headers, length, host, expect, forwarded, keep_alive = compiled_parse(data, 8190, 100, 8190)
    assert (method, target, http11, length, host, expect, forwarded, keep_alive) == (
        b"GET",
        b"/a",
        True,
        -1,
        b"h",
        False,
        False,
        False,
    )
    assert headers == [(b"host", b"h"), (b"x-odd-name", b"v  w"), (b"connection", b"close")]
    again = compiled_parse(data, 8190, 100, 8190)
    assert again[0] is method and again[3][0][0] is headers[0][0]  # made once at import, not per request


def test_the_switch_off_variable_leaves_the_pure_python_way(tmp_path):
    """CORRAL_NO_EXTENSIONS=1 (CI's second run of the suite) gives a worker no compiled parser."""
    import subprocess

    probe = "from corral.worker.http1 import native; print(native.parse_head is None)"
    env = dict(os.environ, **{native.DISABLED_BY: "1"})
    off = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    env[native.DISABLED_BY] = "0"
    on = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert (off.stdout.strip(), on.stdout.strip()) == ("True", "False")
