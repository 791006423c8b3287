"""Limits, request smuggling guards, malformed input and timeouts: each gets its status and a close."""

from __future__ import annotations

import socket
import time

import pytest

from worker_http_helpers import WAIT, Client, assert_error_and_close, assert_still_serving, run_server, settings


async def app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message["body"]
        if not message["more_body"]:
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok:%d" % len(body)})


def test_request_line_too_long_is_414():
    with run_server(app, settings(limit_request_line=100)) as (host, port, _), Client(host, port) as client:
        client.send(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert_error_and_close(client, 414)
        assert_still_serving(host, port)


def test_request_line_sent_slowly_too_long_is_414():
    with run_server(app, settings(limit_request_line=100)) as (host, port, _), Client(host, port) as client:
        client.send(b"GET /" + b"a" * 60)
        client.send(b"a" * 60)
        assert_error_and_close(client, 414)


def test_too_many_header_fields_is_431():
    with run_server(app, settings(limit_request_fields=5)) as (host, port, _), Client(host, port) as client:
        headers = "".join(f"X-{i}: v\r\n" for i in range(10))
        client.send(f"GET / HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())
        assert_error_and_close(client, 431)
        assert_still_serving(host, port)


def test_header_block_too_large_is_431():
    with run_server(app, settings(limit_request_field_size=200)) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 300 + b"\r\n\r\n")
        assert_error_and_close(client, 431)


def test_zero_limits_are_gunicorns_unlimited_up_to_a_bound():
    """--limit-request-line 0 / --limit-request-field_size 0 (gunicorn's "unlimited", used to allow long
    URLs): a 20 KB URL and a 20 KB header are served; the head stays bounded (1 MiB each)."""
    from corral.worker.http1.limits import UNLIMITED_HEAD_BYTES

    zero = settings(limit_request_line=0, limit_request_field_size=0)
    with run_server(app, zero) as (host, port, _), Client(host, port) as client:
        client.send(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 20_000 + b"\r\n\r\n")
        response = client.response()
        assert (response.status, response.body) == (200, b"ok:0")
        client.send(b"GET /" + b"a" * (UNLIMITED_HEAD_BYTES + 10) + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert_error_and_close(client, 414)
    with run_server(app, settings()) as (host, port, _), Client(host, port) as client:  # the default stays 8190
        client.send(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert_error_and_close(client, 414)


def test_endless_header_line_is_431():
    # One header line that never ends never reaches a parser callback: the head's byte count stops it.
    with run_server(app, settings(limit_request_field_size=200, limit_request_line=100)) as (host, port, _):
        with Client(host, port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
            try:
                for _ in range(20):
                    client.send(b"v" * 100)
            except OSError:
                pass  # the server answered and closed while we were still sending
            assert_error_and_close(client, 431)


def test_body_over_content_length_limit_is_413_before_the_app_runs(events):
    async def counting_app(scope, receive, send):
        events.put(scope["path"])
        await app(scope, receive, send)

    with run_server(counting_app, settings(limit_request_body=10)) as (host, port, _), Client(host, port) as client:
        client.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
        assert_error_and_close(client, 413)
        with Client(host, port) as other:
            other.send(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789")
            assert other.response().body == b"ok:10"
        assert events.get(timeout=WAIT) == "/small"  # /big never reached the application
        assert events.empty()


def test_chunked_body_over_limit_is_413():
    with run_server(app, settings(limit_request_body=10)) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
        client.send(b"6\r\nghijkl\r\n0\r\n\r\n")
        assert_error_and_close(client, 413)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            id="cl-and-te",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            400,
            id="te-and-cl",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
            id="differing-content-lengths",
        ),
        pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400, id="cl-list"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400, id="negative-cl"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            400,
            id="bad-chunk-size",
        ),
        pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400, id="te-not-chunked"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400, id="chunked-not-last"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, id="unknown-coding"
        ),
        pytest.param(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="te-in-http10"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400, id="tls-hello"),
        pytest.param(b"GARBAGE\r\n\r\n", 400, id="no-version"),
        pytest.param(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400, id="header-without-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400, id="nul-in-header"),
    ],
)
def test_malformed_and_smuggling_requests_are_400_and_close(request_bytes, status):
    with run_server(app) as (host, port, _), Client(host, port) as client:
        client.send(request_bytes)
        response = client.response()
        if response.status == 200:  # a bad chunk size is found after the app started: it may answer first
            pytest.fail(f"accepted a malformed request: {request_bytes!r}")
        assert response.status == status
        assert client.closed()
        assert_still_serving(host, port)


def test_error_after_pipelined_request_keeps_order():
    with run_server(app) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nBROKEN\x01\r\n\r\n")
        assert client.response().body == b"ok:0"
        assert_error_and_close(client, 400)


def test_header_timeout_is_408_then_close():
    with run_server(app, settings(header_timeout=0.5)) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # the head never completes
        assert_error_and_close(client, 408)


def test_header_timeout_not_extended_by_trickled_bytes():
    with run_server(app, settings(header_timeout=0.5)) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\n")
        deadline = time.monotonic() + WAIT
        try:
            while time.monotonic() < deadline:
                client.send(b"X-A: b\r\n")  # a slowloris: a header line every 50 ms
                ready = (
                    socket.socket.recv(client.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    if _readable(client.sock)
                    else b""
                )
                if ready:
                    break
                time.sleep(0.05)
        except OSError:
            pass
        assert_error_and_close(client, 408)


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_keep_alive_idle_connection_is_closed():
    with run_server(app, settings(keepalive=0.5)) as (host, port, _), Client(host, port) as client:
        assert client.get().body == b"ok:0"
        assert client.closed()


def test_keepalive_zero_closes_after_each_response():
    with run_server(app, settings(keepalive=0)) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.header("connection") == "close"
        assert client.closed()


def test_max_requests_per_connection():
    with run_server(app, settings(max_requests_per_connection=2)) as (host, port, _), Client(host, port) as client:
        first = client.get()
        assert first.header("connection") is None
        second = client.get()
        assert second.header("connection") == "close"
        assert client.closed()
