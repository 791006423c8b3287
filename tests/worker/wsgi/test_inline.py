"""--threads 1: the WSGI application called on the worker's event-loop thread (corral.worker.wsgi.inline), as
gunicorn's sync worker calls it on its only thread, over real sockets. (test_native.py runs its whole suite in
this mode too.)"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time

import pytest

from corral.worker.app.hooks import WorkerView
from corral.worker.wsgi.layers import WsgiDeadline, WsgiHooks, WsgiLayers
from worker_http_helpers import WAIT, Client, run_server, settings, wait_until

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def serve(app, **values):
    return run_server(app, settings(**dict({"threads": 1}, **values)), wsgi=True)


def where(seen):
    """An app reporting where it ran: its thread, whether it saw an event loop, a contextvar from before."""

    def app(environ, start_response):
        try:
            asyncio.get_running_loop()
            loop_seen = True
        except RuntimeError:
            loop_seen = False
        seen.put((threading.current_thread().name, loop_seen, VAR.get()))
        VAR.set(environ["PATH_INFO"])  # must not show in the next request
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(body)]

    return app


def test_the_application_runs_on_the_loop_thread_without_a_loop():
    seen: queue.Queue = queue.Queue()
    with serve(where(seen)) as (host, port, server), Client(host, port) as client:
        for path in ("/a", "/b"):
            assert client.get(path).body == b"0"
            name, loop_seen, var = seen.get(timeout=WAIT)
            assert name == "corral-test-server"  # worker/serve/testing.py runs the loop on this thread
            assert loop_seen is False  # hidden: Django's ORM and async_to_sync work as on a thread
            assert var == "unset"  # a fresh context per request
        client.send(b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        assert client.response().body == b"5"
        assert seen.get(timeout=WAIT)[0] == "corral-test-server"
        assert not server.application_instances  # nothing was left in the pool


def test_a_blocking_application_blocks_the_worker():
    """As on gunicorn's sync worker: while one request's application runs, the worker answers no other."""
    answered: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            release.wait(WAIT)
        answered.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    with serve(app) as (host, port, _), Client(host, port) as slow, Client(host, port) as fast:
        slow.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert entered.wait(WAIT)
        fast.send(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)  # a window for /fast to be answered, were the worker free: it is not
        assert answered == []  # the loop is in /slow's application: /fast has not even been read
        release.set()
        assert slow.response().status == 200
        assert fast.response().status == 200
        assert answered == ["/slow", "/fast"]


def test_a_body_above_the_buffer_and_a_streamed_response_go_to_the_pool_thread():
    seen: queue.Queue = queue.Queue()

    def app(environ, start_response):
        seen.put(("call", threading.current_thread().name))
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])

        def stream():
            seen.put(("body", threading.current_thread().name, VAR.get()))
            yield b"%d" % len(body)
            yield b"!"

        VAR.set("set in the call")  # the body is iterated in the call's context
        return stream() if environ["PATH_INFO"] == "/stream" else [b"%d" % len(body)]

    with serve(app, wsgi_body_buffer=1024) as (host, port, server), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\n\r\n" + b"x" * 2048)
        time.sleep(0.1)  # the rest in a later read: past the buffer, the body is read as it comes
        client.send(b"x" * 2048)
        assert client.response().body == b"4096"
        assert seen.get(timeout=WAIT) == ("call", "corral-wsgi-0")  # read as it comes: on the pool's thread
        response = client.get("/stream")
        assert response.body == b"0!"  # chunked: the client reassembles it
        assert seen.get(timeout=WAIT) == ("call", "corral-test-server")
        assert seen.get(timeout=WAIT) == ("body", "corral-wsgi-0", "set in the call")
        wait_until(lambda: not server.application_instances, what="the streamed response's slot to go")
        assert client.get("/").body == b"0"  # the loop's thread again
        assert seen.get(timeout=WAIT) == ("call", "corral-test-server")


def test_pipelined_requests_are_answered_in_order():
    seen: queue.Queue = queue.Queue()
    with serve(where(seen)) as (host, port, _), Client(host, port) as client:
        client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
        for _ in range(5):
            assert client.response().body == b"0"
        assert [seen.get(timeout=WAIT)[0] for _ in range(5)] == ["corral-test-server"] * 5


def test_write_beyond_the_window_does_not_wait_for_the_loop():
    """write() of more than the output window, on the loop's thread: nothing waits for the loop (it is the
    loop), the bytes are written once the call returns."""
    size = 2 * 1024 * 1024

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Length", str(size))])
        for _ in range(size // 65536):
            write(b"y" * 65536)
        return []

    with serve(app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.status == 200 and len(response.body) == size


def test_an_application_error_is_a_500_and_the_worker_goes_on():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise ValueError("boom on the loop's thread")
        start_response("200 OK", [])
        return [b"fine"]

    with serve(app) as (host, port, _):
        with Client(host, port) as client:
            assert client.get("/boom").status == 500
        with Client(host, port) as client:
            assert client.get("/").body == b"fine"


def test_request_timeout_keeps_the_pool_thread():
    seen: queue.Queue = queue.Queue()
    layers = WsgiLayers(WsgiDeadline(30.0, 1, lambda: None), None)
    with run_server(where(seen), settings(threads=1), wsgi=True, wsgi_layers=layers) as (host, port, _):
        with Client(host, port) as client:
            assert client.get().status == 200
            assert seen.get(timeout=WAIT)[0] == "corral-wsgi-0"


@pytest.mark.parametrize("path", ["/list", "/stream"])
def test_post_request_hook_sees_the_whole_response(path):
    """With the hooks, on the loop's thread: post_request gets what was sent, a streamed body included (it
    runs once the pool's thread has iterated it)."""
    got: queue.Queue = queue.Queue()

    def post(worker, req, environ, resp):
        got.put((threading.current_thread().name, resp.status_code, resp.sent))

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/stream":
            return iter([b"abc", b"defg"])
        return [b"abcdefg"]

    layers = WsgiLayers(None, WsgiHooks(WorkerView(0, settings()), None, post))
    with run_server(app, settings(threads=1), wsgi=True, wsgi_layers=layers) as (host, port, _):
        with Client(host, port) as client:
            assert client.get(path).body == b"abcdefg"
            thread, status, sent = got.get(timeout=WAIT)
            assert status == 200
            if path == "/list":
                assert thread == "corral-test-server" and sent == 7
            else:
                assert thread == "corral-wsgi-0" and sent > 7  # the chunked framing counts
