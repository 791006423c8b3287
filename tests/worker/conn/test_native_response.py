"""The compiled response head (worker/conn/_response.c) against the Python function it stands in for.

Hypothesis builds responses (statuses with and without a prepared line, header lists with Content-Length,
Connection and Transfer-Encoding fields in any case, CR/LF injections, str or list items, bad lengths) and
the framing inputs (keep-alive, HTTP/1.0 or 1.1, HEAD, the body's length); the compiled head must return what
`encode_response_head` returns, or raise the same error with the same message (it hands every response it does
not encode itself to that function).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.shared import native
from corral.worker.conn import response
from corral.worker.conn.response import STATUS_LINES, encode_response_head

try:
    from corral.worker.conn import _response as compiled
except ImportError:
    compiled = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    compiled is None and not os.environ.get("REQUIRE_NATIVE"),
    reason="corral.worker.conn._response was not built (no C compiler at install)",
)


@pytest.fixture(autouse=True)
def set_up_compiled_head():
    """The compiled head set up as response.py sets it up, also where this process turned the compiled modules off
    (CI's second run sets CORRAL_NO_EXTENSIONS: response_head is then the Python function, untouched)."""
    if compiled is not None:
        compiled.setup(STATUS_LINES, encode_response_head)


DEFAULTS = b"date: Mon, 07 Dec 2026 04:00:00 GMT\r\nserver: corral\r\n"
ORDINARY_NAMES = st.sampled_from([b"content-type", b"CONNECTION", b"connection", b"x-a", b"set-cookie"])
LENGTH_NAMES = st.sampled_from([b"Content-Length", b"content-length"])
ODD_NAMES = st.sampled_from([b"Transfer-Encoding", b"x\r\ninjected", b"", b"Content-Length"])
ORDINARY_VALUES = st.sampled_from([b"text/plain", b"", b"close", b"Keep-Alive, CLOSE", b"a=1; Path=/"])
DIGITS = st.sampled_from([b"13", b" 5 ", b"007", b"\t42\t", b"0"])
ODD_VALUES = st.one_of(st.sampled_from([b"-1", b"1x", b"chunked", b"a\nb", b"1" * 19]), st.binary(max_size=6))
ODD = st.sampled_from([[("content-type", "text/plain")], [[b"x-a", b"1"]], [(b"x-a",)], 5, None, [(b"x-a", 1)]])
ORDINARY_STATUSES = st.sampled_from([200, 201, 204, 304, 101, 404, 500, 302, 206])
ODD_STATUSES = st.sampled_from([599, 999, 1000, 99, True, 200.0, "200"])
ORDINARY_LENGTHS = st.one_of(st.none(), st.integers(0, 10**6))
ODD_LENGTHS = st.sampled_from([-1, 2**70, 1.0])


@st.composite
def responses(draw):
    """(status, headers, body length): each part, and each header field, of an odd kind one time in ten (about
    half of the responses are then of the shape the C code encodes itself)."""

    def odd() -> bool:
        return draw(st.integers(0, 9)) == 0

    status = draw(ODD_STATUSES if odd() else ORDINARY_STATUSES)
    if odd():
        headers = draw(ODD)
    else:
        pairs = []
        for _ in range(draw(st.integers(0, 4))):
            if odd():
                pairs.append((draw(st.one_of(ODD_NAMES, ORDINARY_NAMES)), draw(st.one_of(ODD_VALUES, DIGITS))))
            elif draw(st.integers(0, 3)) == 0:
                pairs.append((draw(LENGTH_NAMES), draw(DIGITS)))
            else:
                pairs.append((draw(ORDINARY_NAMES), draw(ORDINARY_VALUES)))
        headers = tuple(pairs) if draw(st.booleans()) else pairs
    return status, headers, draw(ODD_LENGTHS if odd() else ORDINARY_LENGTHS)


def outcome(function, *args):
    try:
        return ("done", function(*args))
    except Exception as error:  # noqa: BLE001 - the error itself is what both ways must agree on
        return ("raised", type(error).__name__, str(error))


@settings(max_examples=2000)
@example(response=(200, [(b"content-type", b"text/plain")], 5), keep_alive=True, http11=True, head=False)
@example(
    response=(200, [(b"Content-Length", b"3"), (b"content-length", b"3")], 3), keep_alive=True, http11=True, head=False
)
@example(response=(204, [(b"connection", b"close")], None), keep_alive=True, http11=False, head=False)
@example(
    response=(200, [(b"connection", b"close"), (b"connection", b"x")], None), keep_alive=True, http11=True, head=False
)
@given(response=responses(), keep_alive=st.booleans(), http11=st.booleans(), head=st.booleans())
def test_the_compiled_head_is_the_python_one(response, keep_alive, http11, head):
    assert compiled is not None
    status, headers, length = response
    args = (status, headers, DEFAULTS, keep_alive, http11, head, length)
    assert outcome(compiled.head, *args) == outcome(encode_response_head, *args)


def test_an_ordinary_response_is_encoded_in_c_and_response_head_is_the_c_function(monkeypatch):
    """Guards the test above: ordinary responses do not reach the fallback; and response_head is the C one."""
    assert compiled is not None
    assert (response.response_head is compiled.head) == native.enabled()  # bound to it unless turned off
    calls = []

    def fallback(*args):
        calls.append(args)
        return encode_response_head(*args)

    compiled.setup(STATUS_LINES, fallback)
    try:
        cases = [
            (200, [(b"content-type", b"text/plain")], DEFAULTS, True, True, False, 5),
            (404, ((b"Content-Length", b" 9 "), (b"Connection", b"close")), DEFAULTS, True, True, False, 9),
            (200, [], DEFAULTS, True, False, True, 12),
            (200, [(b"x-a", b"1")], DEFAULTS, True, True, False, None),
        ]
        for args in cases:
            assert compiled.head(*args) == encode_response_head(*args)
        assert calls == []
        assert compiled.head(200, [(b"transfer-encoding", b"chunked")], DEFAULTS, True, True, False, None)
        assert len(calls) == 1  # a Transfer-Encoding the application set: the Python function's
    finally:
        compiled.setup(STATUS_LINES, encode_response_head)
