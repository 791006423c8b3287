"""HTTP11Connection and response_head on their own: bytes in, events and bytes out, no I/O."""

from __future__ import annotations

import pytest

from corral.shared.settings import Settings
from corral.worker.http1.connection import (
    CHUNKED,
    CLOSE_DELIMITED,
    NO_BODY,
    HTTP11Connection,
    Limits,
    ProtocolError,
    response_head,
)


class Request:
    def __init__(self, **fields):
        self.__dict__.update(fields)
        self.body = b""
        self.complete = False

    def on_body(self, chunk):
        self.body += chunk

    def on_body_complete(self):
        self.complete = True


class Handler:
    def __init__(self):
        self.made = []
        self.started = []

    def on_request(self, method, http_version, target, headers, keep_alive, expect_continue, has_body, forwarded):
        request = Request(
            method=method,
            version=http_version,
            target=target,
            headers=headers,
            keep_alive=keep_alive,
            expect=expect_continue,
            has_body=has_body,
        )
        self.made.append(request)
        return request

    def start_request(self, request):
        self.started.append(request)


def connection(**values):
    handler = Handler()
    return HTTP11Connection(handler, Limits.from_settings(Settings(**values))), handler


def test_pipelined_requests_queue_behind_the_active_one():
    state, handler = connection()
    state.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    first, second = handler.made
    assert handler.started == [first]
    assert list(state.pipeline) == [second]
    assert second.body == b"hi" and second.complete
    assert state.response_done() is second
    assert state.active is second
    assert state.response_done() is None


def test_keep_alive_decisions():
    state, handler = connection()
    state.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert handler.made[-1].keep_alive is False
    state, handler = connection()
    state.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert handler.made[-1].keep_alive is True
    state, handler = connection()
    state.feed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.target for r in handler.made] == [b"/"]  # nothing after a close is served


def test_max_requests_marks_the_last_one():
    state, handler = connection(max_requests_per_connection=2)
    state.feed(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert [(r.target, r.keep_alive) for r in handler.made] == [(b"/1", True), (b"/2", False)]


def test_headers_lower_cased_in_order_and_expect():
    state, handler = connection()
    state.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nEXPECT: 100-Continue\r\nContent-Length: 1\r\n\r\n")
    request = handler.made[0]
    assert request.headers == [(b"host", b"x"), (b"x-a", b"1"), (b"expect", b"100-Continue"), (b"content-length", b"1")]
    assert request.expect is True and request.has_body is True


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET /" + b"a" * 50 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(5)) + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"NOT HTTP\r\n\r\n", 400),
    ],
)
def test_errors(data, status):
    state, _ = connection(limit_request_line=40, limit_request_fields=4, limit_request_body=10)
    with pytest.raises(ProtocolError) as info:
        state.feed(data)
    assert info.value.status == status
    assert info.value.response.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close\r\n" in info.value.response


def test_head_bytes_are_counted_across_reads():
    state, _ = connection(limit_request_line=50, limit_request_field_size=100)
    state.feed(b"GET / HTTP/1.1\r\nX: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(20):
            state.feed(b"v" * 100)
    assert info.value.status == 431


def test_many_pipelined_requests_in_one_read_are_not_mistaken_for_a_big_head():
    state, handler = connection(limit_request_line=50, limit_request_field_size=100)
    state.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 200 + b"GET / HTTP/1.1\r\nHo")
    while state.backlog or state.pipeline:  # answer them as the protocol does: parsing goes on
        state.response_done()
        if len(state.pipeline) < state.max_pipeline:
            state.feed(b"")
    assert len(handler.made) == 200
    assert state.url == b"/" and state.in_head  # the last, incomplete head waits for its bytes


HEADERS = [(b"content-type", b"text/plain")]


def test_response_head_single_body_gets_content_length():
    head, mode, keep_alive = response_head(200, HEADERS, b"server: corral\r\n", True, True, False, 5)
    assert head == b"HTTP/1.1 200 OK\r\nserver: corral\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
    assert (mode, keep_alive) == (5, True)


def test_response_head_framing_modes():
    assert response_head(200, [], b"", True, True, False, None)[1:] == (CHUNKED, True)
    head, mode, keep_alive = response_head(200, [], b"", True, False, False, None)
    assert (mode, keep_alive) == (CLOSE_DELIMITED, False) and b"connection: close" in head
    assert response_head(204, [], b"", True, True, False, None)[1] == NO_BODY
    assert response_head(304, [], b"", True, True, False, None)[1] == NO_BODY
    head, mode, _ = response_head(200, [], b"", True, True, True, 10)
    assert mode == NO_BODY and b"content-length: 10" in head  # HEAD: the GET's headers, no body
    head, mode, _ = response_head(200, [(b"Content-Length", b"7")], b"", True, True, False, None)
    assert mode == 7 and head.count(b"ength") == 1
    head, _, keep_alive = response_head(200, [], b"", True, False, False, 0)
    assert keep_alive and b"connection: keep-alive" in head  # HTTP/1.0 persistence is opt-in
    head, _, keep_alive = response_head(200, [(b"connection", b"close")], b"", True, True, False, 0)
    assert not keep_alive and head.count(b"close") == 1


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x", b"a\r\nb: c")],
        [(b"x\n", b"a")],
        [(b"content-length", b"abc")],
        [(b"content-length", b"1"), (b"content-length", b"1")],
        [("str", "headers")],
    ],
)
def test_response_head_rejects_bad_headers(headers):
    with pytest.raises(RuntimeError):
        response_head(200, headers, b"", True, True, False, 1)


def test_unknown_status_code():
    assert response_head(299, [], b"", True, True, False, 0)[0].startswith(b"HTTP/1.1 299 \r\n")
    with pytest.raises(RuntimeError):
        response_head(99, [], b"", True, True, False, 0)


def test_encoded_headers_are_reused_but_framing_is_per_response():
    headers = [(b"content-type", b"text/plain")]
    first = response_head(200, headers, b"", True, True, False, 5)
    second = response_head(200, list(headers), b"", True, True, False, 7)
    assert b"content-length: 5\r\n" in first[0] and b"content-length: 7\r\n" in second[0]
    assert response_head(200, headers, b"", True, True, False, None)[1] == CHUNKED
    # A bad list is refused every time (never cached), also when given as a tuple or a generator.
    bad = [(b"x", b"a\nb")]
    for _ in range(2):
        with pytest.raises(RuntimeError):
            response_head(200, bad, b"", True, True, False, 1)
    with pytest.raises(RuntimeError):
        response_head(200, (pair for pair in bad), b"", True, True, False, 1)
    head, _, _ = response_head(200, [[b"x-list", b"pairs"]], b"", True, True, False, 0)
    assert b"x-list: pairs\r\n" in head  # lists as pairs work (unhashable: not cached)
