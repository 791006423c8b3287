"""Minimum data rates (--min-request-body-rate, --min-response-rate, --min-rate-grace) over real sockets, ASGI
and native WSGI: what a client that stalls gets, what a client that keeps up keeps, which time counts, the
full pool's short grace, and the one log line per interval. No assertion is on a timing: each waits
(bounded) for what the server does."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading

import pytest

from corral.worker.edge import datarate
from corral.worker.wsgi.filesend import FileWrapper
from worker_http_helpers import (
    WAIT,
    Client,
    assert_error_and_close,
    assert_still_serving,
    run_server,
    settings,
    wait_until,
)

CHUNK = b"x" * 65536
STALL = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc"


class Echo:
    """Reads the whole body, answers `ok:<length>`; counts the disconnects it saw while reading."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.reading = threading.Event()  # set when an instance first asks for its body

    async def __call__(self, scope, receive, send):
        if scope["path"] == "/late":
            await asyncio.sleep(float(scope["query_string"] or b"1"))  # not reading: the clock must not run
        self.reading.set()
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                self.disconnects += 1
                return
            body += message["body"]
            if not message["more_body"]:
                break
        if scope["path"] == "/one":  # 10 MiB in one message: the response completes at once, into the buffer
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": CHUNK * 160})
            return
        if scope["path"] == "/download":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(1600):  # 100 MiB: more than a slow reader takes during a test
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok:%d" % len(body)})


def wsgi_app(environ, start_response):
    if environ["PATH_INFO"] == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return FileWrapper(open(environ["QUERY_STRING"], "rb"))  # (a test's own file)
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok:%d" % len(body)]


def slow_reader(host: str, port: int, rcvbuf: int = 4096) -> socket.socket:
    """A client socket with a small receive buffer (the kernel holds little on its side)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    sock.connect((host, port))
    return sock


def reset_or_closed(sock: socket.socket) -> bool:
    """Read what the server sent until it ends the connection (bounded); True when it did."""
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def quiet(**values):
    """Settings where only the minimum rates can end a stalled transfer (the other timers are far off)."""
    return settings(body_timeout=60, keepalive=60, **values)


# ---------------------------------------------------------------------------- request bodies


def test_a_stalled_upload_gets_408_after_the_grace_and_frees_its_slot():
    app = Echo()
    with run_server(app, quiet(min_rate_grace=0.5)) as (host, port, server), Client(host, port) as client:
        client.send(STALL)
        assert_error_and_close(client, 408)
        wait_until(lambda: app.disconnects == 1, what="the application told of the disconnect")
        wait_until(lambda: not server.application_instances, what="the slot freed")
        assert_still_serving(host, port)


def test_an_upload_at_the_rate_is_not_cut_off():
    with (
        run_server(Echo(), quiet(min_rate_grace=0.3, min_request_body_rate=100)) as (host, port, _),
        Client(host, port) as client,
    ):
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n")
        for _ in range(15):  # 200 bytes every 0.1 s: 2,000 bytes/s, twenty times the minimum, for 1.5 s
            threading.Event().wait(0.1)
            client.send(b"z" * 200)
        assert client.response().body == b"ok:3000"


def test_time_the_application_does_not_read_does_not_count():
    app = Echo()
    with run_server(app, quiet(min_rate_grace=0.3)) as (host, port, _), Client(host, port) as client:
        # The application sleeps 1.5 s (five graces) before it reads: the stalled body is only timed after.
        client.send(b"POST /late?1.5 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc")
        response = client.response()
        assert response.status == 408
        assert app.reading.is_set()  # the 408 came after the application asked for the body


def test_off_when_the_rate_is_zero():
    app = Echo()
    with (
        run_server(app, settings(min_request_body_rate=0, min_rate_grace=0.2, body_timeout=1.5)) as (
            host,
            port,
            server,
        ),
        Client(host, port) as client,
    ):
        client.send(STALL)
        wait_until(app.reading.is_set, what="the application to read")
        assert server.rates is not None  # the response rate is still on
        # Only the body timeout ends it (1.5 s without a byte): the rate, 0.2 s of grace, would have first.
        assert_error_and_close(client, 408)
    with run_server(app, settings(min_request_body_rate=0, min_response_rate=0)) as (_, _, server):
        assert server.rates is None  # both off: the tick does nothing for them


def test_a_full_pool_cuts_the_grace_short():
    """Two stalled uploads fill a pool of two; with a grace of a minute, the full pool ends them after about a
    second, and the ordinary request that waited for a slot is served."""
    app = Echo()
    with run_server(app, quiet(min_rate_grace=60, max_applications=2)) as (host, port, server):
        stalled = [Client(host, port) for _ in range(2)]
        for client in stalled:
            client.send(STALL)
        wait_until(lambda: len(server.application_instances) == 2, what="both uploads to hold a slot")
        with Client(host, port) as ordinary:
            ordinary.sock.settimeout(30)  # (the answer comes after a tick or two; a busy machine delays ticks)
            assert ordinary.get().body == b"ok:0"
        for client in stalled:
            assert_error_and_close(client, 408)
            client.close()


def test_without_pressure_the_grace_holds():
    """The same uploads with room in the pool keep their grace (here 60 s): a stall of a few ticks ends
    nothing."""
    app = Echo()
    with run_server(app, quiet(min_rate_grace=60, max_applications=8)) as (host, port, server):
        stalled = [Client(host, port) for _ in range(2)]
        for client in stalled:
            client.send(STALL)
        wait_until(lambda: len(server.application_instances) == 2, what="both uploads to hold a slot")
        ticks = server.tick
        wait_until(lambda: server.tick >= ticks + 3, what="three ticks")
        assert len(server.application_instances) == 2 and app.disconnects == 0
        for client in stalled:
            client.send(b"y" * 997)
            assert client.response().body == b"ok:1000"
            client.close()


def test_one_log_line_per_worker_per_interval(caplog, monkeypatch):
    # The interval shortened from 10 s: the five are usually ended by one sweep, but on a busy machine one of
    # them can start its grace a tick later, and its count then waits for the next line (the interval's end).
    monkeypatch.setattr(datarate, "REPORT_INTERVAL", 1.0)
    app = Echo()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "minimum data rate" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="corral.error"):
        with run_server(app, quiet(min_rate_grace=0.3)) as (host, port, _server):
            stalled = [Client(host, port) for _ in range(5)]
            for client in stalled:
                client.send(STALL)
            for client in stalled:
                assert_error_and_close(client, 408)
                client.close()
            wait_until(lambda: sum(int(line.split()[1]) for line in lines()) >= 5, what="the five reported")
    # Five connections ended by one or two sweeps: one line per interval, so at most two.
    assert 1 <= len(lines()) <= 2, lines()
    assert sum(int(line.split()[1]) for line in lines()) == 5, lines()
    assert "request body" in lines()[0] and "response 0" in lines()[0]


# ---------------------------------------------------------------------------- responses


def test_a_client_that_does_not_read_is_reset_and_its_slot_freed():
    app = Echo()
    with run_server(app, quiet(min_rate_grace=0.5)) as (host, port, server):
        sock = slow_reader(host, port)
        sock.sendall(b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_until(lambda: server.application_instances, what="the download to start")
        wait_until(lambda: not server.application_instances, what="the slot freed")
        assert reset_or_closed(sock)
        sock.close()
        assert_still_serving(host, port)


def test_a_finished_response_the_client_does_not_take_is_reset():
    """One 10 MiB message: the response is complete and its slot free at once, but megabytes wait in the
    connection's buffer for a client that does not read; the rate ends the connection (and frees them)."""
    app = Echo()
    with run_server(app, quiet(min_rate_grace=0.5)) as (host, port, server):
        sock = slow_reader(host, port)
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_until(lambda: server.requests_served == 1, what="the response to complete")
        assert server.connections  # idle, its buffer full
        wait_until(lambda: not server.connections, what="the connection to be ended")
        assert reset_or_closed(sock)
        sock.close()


def test_a_slow_but_steady_reader_keeps_its_download():
    """A reader taking 8 KiB every 0.1 s (80 KiB/s) against a minimum of 2 KiB/s, for three graces (a second
    of grace: a test thread held up for a moment on a busy machine is still well above the rate)."""
    app = Echo()
    with run_server(app, quiet(min_rate_grace=1.0, min_response_rate=2048)) as (host, port, server):
        sock = slow_reader(host, port, rcvbuf=8192)
        sock.sendall(b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n")
        received = 0
        for _ in range(30):
            threading.Event().wait(0.1)
            data = sock.recv(8192)
            assert data, "the server ended a download that kept up"
            received += len(data)
        assert server.application_instances  # still served
        sock.close()
        wait_until(lambda: not server.application_instances, what="the slot freed after the client left")


# ---------------------------------------------------------------------------- native WSGI


def test_wsgi_stalled_upload_gets_408():
    with (
        run_server(wsgi_app, quiet(min_rate_grace=0.5), wsgi=True) as (host, port, server),
        Client(host, port) as client,
    ):
        client.send(STALL)  # pre-read on the loop: no thread is taken while it stalls
        assert_error_and_close(client, 408)
        wait_until(lambda: not server.application_instances, what="the slot freed")
        assert_still_serving(host, port)


def test_wsgi_stalled_streamed_upload_releases_its_thread():
    """A body above --wsgi-body-buffer is streamed to the application's thread: stalled, its read raises and
    the thread is free again."""
    values = quiet(min_rate_grace=0.5, min_request_body_rate=2000, wsgi_body_buffer=1024, threads=1)
    with run_server(wsgi_app, values, wsgi=True) as (host, port, server), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1100)
        assert_error_and_close(client, 408)
        wait_until(lambda: not server.application_instances, what="the slot freed")
        assert_still_serving(host, port)  # on the one thread


def test_wsgi_file_response_to_a_client_that_does_not_read_is_reset(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(os.urandom(1 << 16) * 160)  # 10 MiB: more than the kernel buffers
    with run_server(wsgi_app, quiet(min_rate_grace=0.5), wsgi=True) as (host, port, server):
        sock = slow_reader(host, port)
        sock.sendall(b"GET /file?%s HTTP/1.1\r\nHost: a\r\n\r\n" % str(path).encode())
        wait_until(lambda: server.application_instances, what="the download to start")
        wait_until(lambda: not server.application_instances, what="the slot freed")
        assert reset_or_closed(sock)
        sock.close()
        assert_still_serving(host, port)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no unix sockets")
def test_unix_socket_responses_are_not_timed(tmp_path):
    """No TCP_INFO on a unix socket (a proxy on the same host, buffering for its clients): not reset."""
    app = Echo()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s"))
    listener.listen(8)
    with run_server(app, quiet(min_rate_grace=0.2), sock=listener) as (path, _, server):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(WAIT)
        sock.connect(path)
        sock.sendall(b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_until(lambda: server.application_instances, what="the download to start")
        ticks = server.tick
        wait_until(lambda: server.tick >= ticks + 8, what="eight ticks (four graces)")
        assert server.application_instances
        sock.close()
        wait_until(lambda: not server.application_instances, what="the slot freed after the client left")
