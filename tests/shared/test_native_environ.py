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
    from corral.shared._environ import fill_headers as compiled_fill
except ImportError:
    compiled_fill = None

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
