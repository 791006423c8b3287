"""The compiled header loop of the WSGI environ (shared/_environ.c) against the Python loop it stands in for.

Hypothesis builds header lists (names that map to HTTP_* keys, CONTENT_TYPE and CONTENT_LENGTH, names with
"_" that are dropped, repeats, cookies, latin-1 bytes, names never seen before) and the duplicate limit; some
lists have another shape (lists for pairs, a str name, three items) that the compiled loop declines. Both
ways must leave the same environ or raise the same error with the same message.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.shared import wsgi_environ
from corral.shared.wsgi_environ import TooManyHeaders, build_environ

try:
    from corral.shared._environ import build as compiled_build
    from corral.shared._environ import fill_headers as compiled_fill
except ImportError:
    compiled_fill = compiled_build = None

pytestmark = pytest.mark.skipif(
    compiled_fill is None and not os.environ.get("REQUIRE_NATIVE"),
    reason="corral.shared._environ was not built (no C compiler at install)",
)

NAMES = st.one_of(
    st.sampled_from(
        [b"host", b"cookie", b"Cookie", b"accept", b"content-type", b"content-length", b"x-a", b"x_a", b"X-A", b"te"]
    ),
    st.binary(min_size=1, max_size=8),  # names this process has not seen: key_of is called (and remembers them)
)
VALUES = st.one_of(st.sampled_from([b"", b"v", b"a=1", b"caf\xe9", b" x "]), st.binary(max_size=8))
PAIRS = st.lists(st.tuples(NAMES, VALUES), max_size=12)
ODD = st.sampled_from(
    [
        [[b"host", b"h"]],
        [("host", b"h")],
        [(b"host", "h")],
        [(b"host", b"h", b"x")],
        ((b"host", b"h"), (b"x-a", b"1")),
        [(b"host", b"h"), [b"x-a", b"1"]],
    ]
)


def outcome(fill, environ: dict, headers, limit: int):
    try:
        done = fill(environ, headers, limit)
    except Exception as error:  # noqa: BLE001 - the error itself is what both ways must agree on
        return ("raised", type(error).__name__, str(error), environ)
    return ("done", done, environ)


def python_way(environ, headers, limit):
    wsgi_environ.fill_headers(environ, headers, limit)
    return True


def compiled_way(environ, headers, limit):
    assert compiled_fill is not None
    keys, key_of = wsgi_environ._HEADER_KEYS, wsgi_environ._header_key
    if compiled_fill(environ, headers, keys, key_of, limit or 0, TooManyHeaders):  # as build_environ calls it
        return True
    wsgi_environ.fill_headers(environ, headers, limit)  # declined: what build_environ does then
    return True


@settings(max_examples=1000)
@example(headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-a", b"1"), (b"x-a", b"2")], limit=0)
@example(headers=[(b"x-a", b"1"), (b"x-a", b"2"), (b"x-a", b"3")], limit=2)
@example(headers=[(b"x_a", b"1"), (b"x-a", b"2")], limit=100)
@given(headers=st.one_of(PAIRS, PAIRS, PAIRS, ODD), limit=st.sampled_from([0, None, 1, 2, 3, 100]))
def test_the_compiled_loop_fills_the_environ_as_the_python_loop_does(headers, limit):
    assert compiled_fill is not None
    base = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.1"}
    assert outcome(compiled_way, dict(base), headers, limit) == outcome(python_way, dict(base), headers, limit)


def test_a_browser_request_takes_the_compiled_loop_and_build_environ_agrees(monkeypatch):
    assert compiled_fill is not None
    headers = [
        (b"host", b"example.com"),
        (b"user-agent", b"Mozilla/5.0"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"accept", b"text/html"),
        (b"x_smuggled", b"dropped"),
        (b"content-type", b"text/plain"),
    ]
    assert compiled_fill({}, headers, wsgi_environ._HEADER_KEYS, wsgi_environ._header_key, 100, TooManyHeaders)
    scope = {"type": "http", "method": "POST", "path": "/p", "query_string": b"", "headers": headers}
    compiled = build_environ(scope, None)
    monkeypatch.setattr(wsgi_environ, "_fill_headers", None)
    assert build_environ(scope, None) == compiled
    assert compiled["HTTP_COOKIE"] == "a=1; b=2" and compiled["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_X_SMUGGLED" not in compiled and "HTTP_X-SMUGGLED" not in compiled


# ---------------------------------------------------------------------------- the whole environ (_environ.build)

TEMPLATE = wsgi_environ.environ_template("", {"wsgi.file_wrapper": object})
# Each key: values of the ordinary shape, which the compiled builder takes, and others, which send the scope
# the Python way (or make both raise); an ordinary value 11 times in 12, so that about two scopes in three are taken.
SCOPE_VALUES = {
    "method": (st.sampled_from(["GET", "POST", "PURGE"]), st.sampled_from([None, b"GET"])),
    "path": (st.sampled_from(["/", "/a/b", "", "/a%20b"]), st.sampled_from(["/caf\xe9", "/\u2603", b"/"])),
    "query_string": (st.sampled_from([b"", b"a=1&b=2", b"x=caf\xe9"]), st.sampled_from(["str", None])),
    "http_version": (st.sampled_from(["1.1", "1.0", "2"]), st.sampled_from([2, None])),
    "scheme": (st.sampled_from(["http", "https"]), st.sampled_from(["ws", None])),
    "root_path": (st.sampled_from(["", None]), st.sampled_from(["/app", "/app/"])),
    "server": (
        st.sampled_from([("127.0.0.1", 8000), ("/run/s.sock", None), None]),
        st.sampled_from([["h", 1], ("h", "80"), ("h", 1, 2), ("h", True)]),
    ),
    "client": (
        st.sampled_from([("10.0.0.1", 50000), ("10.0.0.1", None), None]),
        st.sampled_from([("h",), ("::1", 2**70), ["h", 1]]),
    ),
    "headers": (PAIRS, ODD),
}


@st.composite
def scopes(draw):
    scope = {"type": "http"}
    for key, (ordinary, odd) in SCOPE_VALUES.items():
        if key in ("path", "method") or draw(st.integers(0, 9)):  # most keys there, some missing
            scope[key] = draw(ordinary if draw(st.integers(0, 11)) else odd)
    return scope


def built(scope: dict, limit, compiled: bool):
    """build_environ's outcome with the compiled builder in place (whether or not this process turned the compiled
    modules off: CI's second run sets CORRAL_NO_EXTENSIONS), or with the Python lines alone."""
    saved = wsgi_environ._build
    wsgi_environ._build = compiled_build if compiled else None
    try:
        return ("done", build_environ(scope, "BODY", limit, template=TEMPLATE))
    except Exception as error:  # noqa: BLE001 - the error itself is what both ways must agree on
        return ("raised", type(error).__name__, str(error))
    finally:
        wsgi_environ._build = saved


@settings(max_examples=1000)
@example(scope={"type": "http", "method": "GET", "path": "/", "headers": [(b"x-a", b"1")] * 3}, limit=2)
@given(scope=scopes(), limit=st.sampled_from([0, None, 2, 100]))
def test_the_compiled_builder_makes_the_environ_the_python_one_makes(scope, limit):
    assert compiled_build is not None
    assert built(scope, limit, True) == built(scope, limit, False)


def test_an_ordinary_scope_takes_the_compiled_builder():
    """Guards the differential test above: the compiled builder answers (not None) for an ordinary scope."""
    assert compiled_build is not None
    scope = {
        "type": "http",
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("10.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/a",
        "query_string": b"q=1",
        "headers": [(b"host", b"example.com"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
    }
    args = (wsgi_environ._HEADER_KEYS, wsgi_environ._header_key, TooManyHeaders, wsgi_environ._PORTS)
    environ = compiled_build(TEMPLATE, scope, "BODY", 100, *args)
    assert environ is not None
    assert environ == built(scope, 100, False)[1]
    assert (environ["PATH_INFO"], environ["QUERY_STRING"], environ["REMOTE_PORT"]) == ("/a", "q=1", "50000")
    assert environ["HTTP_COOKIE"] == "a=1; b=2" and environ["wsgi.input"] == "BODY"
