"""HTTP/1.1 hardening (round two): the exact bytes on the wire, the answer, whether the connection closed, and
the worker still serving afterwards. Trailer injection, RFC 9112 MUSTs, tiny chunks, stalled bodies and
unread pipelining."""

from __future__ import annotations

import socket
import threading

import pytest

from corral.worker.http1.connection import PARSE_SLICE
from worker_http_helpers import (
    WAIT,
    Client,
    assert_error_and_close,
    assert_still_serving,
    call_in_loop,
    run_server,
    settings,
    wait_until,
)


class Recorder:
    """An echo application that keeps every request's headers and whether it saw a disconnect."""

    def __init__(self) -> None:
        self.headers: list[list[tuple[bytes, bytes]]] = []
        self.disconnects = 0
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                with self.lock:
                    self.disconnects += 1
                return
            body += message["body"]
            if not message["more_body"]:
                break
        with self.lock:
            self.headers.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok:%d" % len(body)})


# ---------------------------------------------------------------------------- trailers


def test_trailer_fields_never_reach_the_next_request():
    app = Recorder()
    with run_server(app, settings()) as (host, port, _), Client(host, port) as client:
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
            b"0\r\nX-Injected: evil\r\nX-Forwarded-For: 192.0.2.9\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert client.response().body == b"ok:3"
        assert client.response().body == b"ok:0"
    post, get = app.headers
    assert post == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    assert get == [(b"host", b"a")]  # not x-injected, not x-forwarded-for


@pytest.mark.parametrize(
    "field",
    [
        b"Host: evil.example",
        b"Content-Length: 99",
        b"Transfer-Encoding: chunked",
        b"Authorization: Basic eDp5",
        b"Trailer: X",
        b"TE: trailers",
    ],
)
def test_a_framing_or_routing_field_in_a_trailer_is_400(field):
    """RFC 9110 §6.5.1: those fields must not come after the body (gunicorn refuses them too)."""
    app = Recorder()
    with run_server(app, settings()) as (host, port, _):
        with Client(host, port) as client:
            client.send(
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                b"0\r\n" + field + b"\r\n\r\n"
            )
            response = client.response()
            assert response.status == 400 and ("connection", "close") in response.headers
        with Client(host, port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert client.response().status == 200  # the worker goes on serving


def test_an_expect_trailer_does_not_make_the_next_request_get_100_continue():
    app = Recorder()
    with run_server(app, settings()) as (host, port, _), Client(host, port) as client:
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
            b"0\r\nExpect: 100-continue\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        )
        first = client.response()
        second = client.response()
        assert (first.status, first.body, second.status, second.body) == (200, b"ok:3", 200, b"ok:2")
        client.sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            client.sock.recv(1)  # nothing else: no stray "100 Continue"
    assert app.headers[1] == [(b"host", b"a"), (b"content-length", b"2")]


def test_an_oversized_trailer_section_is_431():
    with (
        run_server(Recorder(), settings(limit_request_field_size=200)) as (host, port, _),
        Client(host, port) as client,
    ):
        trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 40) for i in range(10))
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n" + trailers)
        assert_error_and_close(client, 431)
        assert_still_serving(host, port)


# ---------------------------------------------------------------------------- RFC 9112 MUSTs


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Host fields
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),  # two, even when equal
        (b"GET / HTTP/1.1\r\nHost: a b/c@d\r\n\r\n", 400),  # not a valid authority
        (b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a/b\r\n\r\n", 400),  # invalid in HTTP/1.0 too
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # asterisk-form is for OPTIONS only
        (b"GET /\r\n\r\n", 400),  # HTTP/0.9
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ],
)
def test_rfc9112_violations_are_refused_and_closed(request_bytes, status):
    app = Recorder()
    with run_server(app, settings()) as (host, port, _), Client(host, port) as client:
        client.send(request_bytes)
        assert_error_and_close(client, status)
        assert_still_serving(host, port)
    assert len(app.headers) == 1  # only the check afterwards reached the application


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 needs no Host
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",  # an empty Host is allowed (no authority in the target URI)
        b"GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n",
    ],
)
def test_valid_requests_are_served(request_bytes):
    with run_server(Recorder(), settings()) as (host, port, _), Client(host, port) as client:
        client.send(request_bytes)
        assert client.response().status == 200


@pytest.mark.parametrize("field", [b"Content-Length: 5 ", b"Content-Length:\t5\t", b"Content-Length:   5  "])
def test_whitespace_around_a_field_value_is_not_part_of_it(field):
    app = Recorder()
    with run_server(app, settings()) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: a \r\n" + field + b"\r\n\r\nhello")
        response = client.response()
        assert (response.status, response.body) == (200, b"ok:5")
    assert app.headers == [[(b"host", b"a"), (b"content-length", b"5")]]


# ---------------------------------------------------------------------------- tiny chunks


def test_a_body_in_tiny_chunks_is_400_and_closed():
    with run_server(Recorder(), settings()) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(20):
                client.send(b"1\r\nx\r\n" * 1000)  # 20,000 one-byte chunks
        except OSError:
            pass  # the server closed while this was being sent: the answer was written first
        assert_error_and_close(client, 400)
        assert_still_serving(host, port)


def test_small_chunks_that_average_enough_are_served():
    body = b"y" * 100
    with run_server(Recorder(), settings()) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"64\r\n" + body + b"\r\n" * 1)
        client.send((b"64\r\n" + body + b"\r\n") * 4999 + b"0\r\n\r\n")  # 5,000 chunks of 100 bytes
        assert client.response().body == b"ok:500000"


def test_min_chunk_size_zero_turns_the_guard_off():
    with run_server(Recorder(), settings(min_chunk_size=0)) as (host, port, _), Client(host, port) as client:
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 3000 + b"0\r\n\r\n"
        )
        assert client.response().body == b"ok:3000"


# ---------------------------------------------------------------------------- stalled bodies


def test_stalled_uploads_get_408_and_free_their_slots():
    app = Recorder()
    with run_server(app, settings(body_timeout=0.5, max_applications=2)) as (host, port, server):
        stalled = [Client(host, port) for _ in range(2)]
        for client in stalled:
            client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        wait_until(lambda: len(server.application_instances) == 2, what="both uploads hold a slot")
        with Client(host, port) as ordinary:
            assert ordinary.get().body == b"ok:0"  # answered once a stalled upload is cut off
        for client in stalled:
            assert_error_and_close(client, 408)
            client.close()
        wait_until(lambda: app.disconnects == 2, what="both applications told of the disconnect")
        assert_still_serving(host, port)


def test_a_trickling_upload_is_not_cut_off():
    with run_server(Recorder(), settings(body_timeout=0.6)) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
        for _ in range(6):
            threading.Event().wait(0.2)  # slower than nothing, faster than the timeout: bytes keep coming
            client.send(b"z")
        assert client.response().body == b"ok:6"


def test_a_client_waiting_for_100_continue_is_not_timed_out():
    gate = threading.Event()

    async def slow_reader(scope, receive, send):
        while not gate.is_set():  # the application takes its time before it asks for the body
            await __import__("asyncio").sleep(0.05)
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"got:" + message["body"]})

    with run_server(slow_reader, settings(body_timeout=0.3)) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        client.sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            client.sock.recv(1)  # a full second (over three body timeouts): no 408, no 100 yet
        client.sock.settimeout(WAIT)
        gate.set()
        assert client.response().status == 100
        client.send(b"hi")
        assert client.response().body == b"got:hi"


# ---------------------------------------------------------------------------- unread pipelining


def test_pipelining_without_reading_holds_a_bounded_number_of_parsed_requests():
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    count = 3000
    limit = settings().max_pipelined_requests + PARSE_SLICE // len(request) + 1
    with run_server(Recorder(), settings(write_buffer_limit=4096, max_requests_per_connection=0)) as (
        host,
        port,
        server,
    ):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and read nothing for now
        sock.connect((host, port))
        sock.settimeout(WAIT)
        sock.sendall(request * count)

        def parsed_waiting() -> tuple[int, int]:
            for protocol in server.connections:  # the one connection, once accepted
                return len(protocol.state.pipeline), len(protocol.state.backlog)
            return 0, 0

        # The server stalls on the unread answers with requests still unparsed in its backlog.
        wait_until(
            lambda: call_in_loop(server, parsed_waiting)[1] > 0 and server.requests_served > 0,
            what="the server stalled on unread answers",
        )
        queued, _backlog = call_in_loop(server, parsed_waiting)
        assert queued <= limit, (queued, limit)
        # Then every answer comes, in order, once the client reads.
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < count:
            chunk = sock.recv(1 << 16)
            assert chunk, "connection closed early"
            received += chunk
        assert received.count(b"ok:0") == count
        sock.close()


def test_an_absolute_form_target_replaces_the_host_field():
    app = Recorder()
    with run_server(app, settings()) as (host, port, _), Client(host, port) as client:
        client.send(b"GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: other.example\r\nX-A: 1\r\n\r\n")
        assert client.response().status == 200
    assert app.headers == [[(b"x-a", b"1"), (b"host", b"example.com:8080")]]  # RFC 9112 §3.2.2


@pytest.mark.parametrize("upgrade", [b"foo/1", b"h2c"])
def test_a_plain_request_with_an_upgrade_header_gets_its_body(upgrade):
    app = Recorder()
    with run_server(app, settings(http="1")) as (host, port, _), Client(host, port) as client:
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: "
            + upgrade
            + b"\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 11\r\n\r\nhello"
        )
        client.send(b" world")
        response = client.response()
        assert (response.status, response.body) == (200, b"ok:11")  # served as HTTP/1.1, not upgraded
        assert client.closed()  # what follows an Upgrade request is not HTTP/1.1: the connection closes


def test_a_chunked_body_on_an_upgrade_request_is_400():
    with run_server(Recorder(), settings()) as (host, port, _), Client(host, port) as client:
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        assert_error_and_close(client, 400)
