"""The worker's native WSGI path (corral.worker.wsgi.cycle), over real sockets, its responses: lengths and
chunking, HEAD, write(), streaming with backpressure (a slow reader stalls the app; blocks are not held back),
close(), exc_info, errors, wsgi.file_wrapper over a non-file."""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading

import pytest

from corral.worker.wsgi.call import OUTPUT_WINDOW
from worker_http_helpers import WAIT, Client, run_server, settings, wait_until
from wsgi_modes import with_mode

# Every test here runs twice: on the pool's threads and with --threads 1 (tests/worker/wsgi_modes.py).
pytestmark = pytest.mark.usefixtures("thread_mode")


def serve(app, **values):
    return run_server(app, settings(**with_mode(values)), wsgi=True)


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_list_body_gets_content_length_and_keep_alive():
    with serve(hello) as (host, port, server):
        with Client(host, port) as client:
            for _ in range(3):
                response = client.get("/")
                assert response.status == 200
                assert response.header("content-length") == "5"
                assert response.body == b"hello"
            # The last one may have been written by its thread and be counted at the loop's next wake-up.
            wait_until(lambda: server.stats()["requests"] == 3, what="three requests counted")
            wait_until(lambda: not server.application_instances, what="every slot to be freed")


def test_head_has_the_length_and_no_body():
    with serve(hello) as (host, port, _server):
        with Client(host, port) as client:
            client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
            response = client.response(head_request=True)
            assert response.header("content-length") == "5"
            assert client.get("/").body == b"hello"  # nothing was left in between


def test_write_callable_then_iterable():
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"first ")
        write(b"second ")
        return [b"third"]

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            response = client.get("/")
            assert response.header("transfer-encoding") == "chunked"
            assert response.body == b"first second third"
            assert client.get("/").body == b"first second third"


def test_generator_with_content_length_is_cut_there():
    closed = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "6")])

        def body():
            try:
                yield b"abc"
                yield b"defgh"
                yield b"never"
            finally:
                closed.set()

        return body()

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            assert client.get("/").body == b"abcdef"
            assert client.get("/").body == b"abcdef"
    assert closed.is_set()


class Closing:
    def __init__(self, chunks, fail_at=None):
        self.chunks = chunks
        self.fail_at = fail_at
        self.closed = threading.Event()

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("iteration failed")
            yield chunk

    def close(self):
        self.closed.set()


def test_close_called_on_success_and_on_error(caplog):
    bodies = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        body = Closing([b"a", b"b", b"c"], fail_at=1 if environ["PATH_INFO"] == "/fail" else None)
        bodies.append(body)
        return body

    with caplog.at_level(logging.ERROR, logger="corral.error"), serve(app) as (host, port, _server):
        with Client(host, port) as client:
            assert client.get("/").body == b"abc"
        with Client(host, port) as client:
            client.send(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
            # The head and the first chunk were out: the only way to say "cut short" is to close.
            assert b"200 OK" in client.read_to_eof()
    assert all(body.closed.wait(WAIT) for body in bodies)
    assert "iteration failed" in caplog.text


def test_close_called_when_the_client_disconnects():
    started = threading.Event()
    body = None

    def app(environ, start_response):
        nonlocal body
        start_response("200 OK", [("Content-Type", "text/plain")])

        def forever():
            started.set()
            while True:
                yield b"x" * 65536

        body = Closing(forever())
        return body

    with serve(app) as (host, port, server):
        client = Client(host, port)
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert started.wait(WAIT)
        client.sock.recv(1000)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # a reset: the server's next write fails
        assert body.closed.wait(WAIT)
        wait_until(lambda: not server.application_instances, what="the slot to be freed")


def test_raising_app_gets_500_and_a_logged_traceback(caplog):
    def app(environ, start_response):
        raise ValueError("app broke")

    with caplog.at_level(logging.ERROR, logger="corral.error"), serve(app) as (host, port, _server):
        with Client(host, port) as client:
            response = client.get("/")
            assert response.status == 500
            assert client.closed()
        with Client(host, port) as client:
            assert client.get("/").status == 500  # the worker goes on serving
    records = [r for r in caplog.records if "Exception in WSGI application" in r.getMessage()]
    assert records and records[0].exc_info[0] is ValueError


def test_start_response_exc_info_before_and_after_the_head():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise KeyError("oops")
        except KeyError:
            # Before anything was sent the status may be replaced (PEP 3333).
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    def late(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise KeyError("late")
        except KeyError:
            start_response("500 Internal Server Error", [], sys.exc_info())  # re-raises: the head is out
        return [b"unreachable"]

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            response = client.get("/")
            assert (response.status, response.body) == (503, b"sorry")
    with serve(late) as (host, port, _server):
        with Client(host, port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            data = client.read_to_eof()
            assert b"partial" in data and b"unreachable" not in data
            assert not data.endswith(b"0\r\n\r\n")  # no clean end: the client sees the body was cut


def test_second_start_response_without_exc_info_is_an_error(caplog):
    def app(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b""]

    with caplog.at_level(logging.ERROR, logger="corral.error"), serve(app) as (host, port, _server):
        with Client(host, port) as client:
            assert client.get("/").status == 500


def test_slow_reader_stalls_a_streaming_app():
    """A generator far bigger than every buffer: the app is held back by the client's pace (its thread
    waits with a full window), and every byte arrives in order."""
    chunk = 256 * 1024
    total_chunks = 160  # 40 MiB
    produced = [0]

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def body():
            for i in range(total_chunks):
                produced[0] += chunk
                yield bytes([i % 251]) * chunk

        return body()

    def app_waits():  # the app's thread is blocked: more than the window is waiting for the transport
        return any(cycle.pending > OUTPUT_WINDOW for cycle in list(server.application_instances))

    bound = 16 * 1024 * 1024  # kernel buffers on both sides of loopback, the transport's high-water mark
    with serve(app) as (host, port, server):
        client = Client(host, port)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.send(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        wait_until(app_waits, what="the application to wait for the slow client")
        assert produced[0] <= bound + OUTPUT_WINDOW
        received = bytearray()
        while True:
            data = client.sock.recv(1 << 20)
            if not data:
                break
            received += data
            assert produced[0] - len(received) <= bound + OUTPUT_WINDOW
        client.close()
        body = received.partition(b"\r\n\r\n")[2]
        assert len(body) == chunk * total_chunks
        assert all(body[i * chunk] == i % 251 and body[i * chunk + chunk - 1] == i % 251 for i in range(total_chunks))


def test_iterable_file_wrapper_over_a_non_file():
    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"z" * 200_000), 8192)

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            assert client.get("/").body == b"z" * 200_000
            assert client.get("/").body == b"z" * 200_000


def test_generator_blocks_are_not_held_back():
    """PEP 3333: a block goes out before the application produces the next one (server-sent events)."""
    first_seen = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            yield b"data: one\n\n"
            assert first_seen.wait(WAIT)  # only once the client has the first block
            yield b"data: two\n\n"

        return events()

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            client._read_until(b"\r\n\r\n")
            assert client._read_until(b"\r\n") == b"b"  # the first chunk's size line
            assert client._read_exact(13) == b"data: one\n\n\r\n"
            first_seen.set()
            assert client._read_until(b"\r\n") == b"b"
            assert client._read_exact(13) == b"data: two\n\n\r\n"


class InMemory:
    """Like Django's HttpResponse: iterable, with `streaming = False` and a close()."""

    streaming = False

    def __init__(self, parts):
        self.parts = parts
        self.closed = False

    def __iter__(self):
        return iter(self.parts)

    def close(self):
        self.closed = True


def test_in_memory_response_gets_a_content_length():
    bodies = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(InMemory([b"ab", b"cd"]))
        return bodies[-1]

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            response = client.get("/")
            assert response.header("content-length") == "4" and response.body == b"abcd"
    assert bodies[0].closed
