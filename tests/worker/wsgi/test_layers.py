"""--request-timeout and the pre_request/post_request hooks on the native WSGI path (worker/wsgi/layers.py),
through a real in-process worker and raw-socket clients: absent when off, gunicorn's semantics when on."""

from __future__ import annotations

import logging
import queue
import threading

from corral.shared.settings import Settings
from corral.worker.app.hooks import WorkerView
from corral.worker.wsgi.cycle import WsgiCycle, copies_requests, new_wsgi_cycle
from corral.worker.wsgi.input import ClientDisconnected
from corral.worker.wsgi.layers import HookedWsgiCycle, wsgi_layers
from corral.worker.wsgi.protocol import WsgiHttpProtocol
from worker_http_helpers import WAIT, Client, run_server, settings, wait_until


def serve(app, layers, **values):
    return run_server(app, settings(**values), wsgi=True, wsgi_layers=layers)


def hello(environ, start_response):
    start_response("201 Created", [("X-App", "yes"), ("Content-Type", "text/plain")])
    return [b"hello"]


# Plain requests: WsgiCycles, copies of the server's prototype where the compiled module is there.
PLAIN = new_wsgi_cycle if copies_requests() else WsgiCycle


def _never():
    raise AssertionError("on_stuck called")


def test_nothing_is_installed_when_the_layers_are_off():
    assert wsgi_layers(WorkerView(1, Settings()), None, None, 0.0, 10, _never) is None
    with serve(hello, None) as (host, port, server), Client(host, port) as client:
        assert client.get().status == 201
        assert server.wsgi.deadline is None and server.wsgi.hooks is None
        assert issubclass(server.protocol_class, WsgiHttpProtocol)
        assert server.protocol_class.cycle_class is PLAIN
        assert type(server.wsgi.prototype) is WsgiCycle
    only_deadline = wsgi_layers(WorkerView(1, Settings()), None, None, 1.0, 10, _never)
    assert only_deadline.hooks is None and only_deadline.deadline.timeout == 1.0
    with serve(hello, only_deadline) as (host, port, server), Client(host, port) as client:
        assert client.get().status == 201
        assert server.protocol_class.cycle_class is PLAIN  # no hooks: the plain request class


# ---------------------------------------------------------------------------- hooks


def test_hooks_run_on_the_request_thread_with_the_apps_environ():
    seen: queue.Queue = queue.Queue()
    app_environs = []

    def app(environ, start_response):
        app_environs.append(environ)
        environ["myapp.user"] = "alice"  # what a middleware leaves for post_request (gunicorn's environ)
        return hello(environ, start_response)

    def pre_request(worker, req):
        seen.put(
            (
                "pre",
                threading.current_thread().name,
                worker.age,
                req.method,
                req.path,
                req.uri,
                req.query,
                req.version,
                req.scheme,
                dict(req.headers)["X-PROBE"],
                req.remote_addr,
            )
        )

    def post_request(worker, req, environ, resp):
        seen.put(
            (
                "post",
                threading.current_thread().name,
                environ is app_environs[0],
                environ["myapp.user"],
                environ["PATH_INFO"],
                environ["HTTP_X_PROBE"],
                resp.status,
                resp.status_code,
                resp.headers,
                resp.sent,
            )
        )

    layers = wsgi_layers(WorkerView(7, Settings()), pre_request, post_request, 0.0, 10, _never)
    with serve(app, layers) as (host, port, server), Client(host, port) as client:
        assert server.protocol_class.cycle_class is HookedWsgiCycle
        response = client.get("/a%20b?q=1", headers="X-Probe: 42\r\n")
        assert response.status == 201 and response.body == b"hello"
        pre = seen.get(timeout=WAIT)
        post = seen.get(timeout=WAIT)
    assert pre[0] == "pre" and pre[1].startswith("corral-wsgi")  # the pool's thread, as gunicorn's worker thread
    assert pre[2:] == (7, "GET", "/a b", "/a%20b?q=1", "q=1", (1, 1), "http", "42", "127.0.0.1")
    assert post[0] == "post" and post[1] == pre[1]
    assert post[2:] == (
        True,
        "alice",
        "/a b",
        "42",
        "201 Created",
        201,
        [("X-App", "yes"), ("Content-Type", "text/plain")],
        5,
    )


def test_post_request_with_two_or_three_arguments_and_a_failing_app(caplog):
    calls: queue.Queue = queue.Queue()

    def boom(environ, start_response):
        raise RuntimeError("app bug")

    def post3(worker, req, environ):
        calls.put((req.path, environ["REQUEST_METHOD"]))

    caplog.set_level(logging.ERROR, logger="corral.error")
    layers = wsgi_layers(WorkerView(1, Settings()), None, post3, 0.0, 10, _never)
    with serve(boom, layers) as (host, port, _), Client(host, port) as client:
        assert client.get("/x").status == 500
        assert calls.get(timeout=WAIT) == ("/x", "GET")

    statuses: queue.Queue = queue.Queue()
    layers = wsgi_layers(WorkerView(1, Settings()), None, lambda w, r: statuses.put(r.path), 0.0, 10, _never)
    with serve(hello, layers) as (host, port, _), Client(host, port) as client:
        assert client.get("/two").status == 201
        assert statuses.get(timeout=WAIT) == "/two"

    failed: queue.Queue = queue.Queue()
    layers = wsgi_layers(
        WorkerView(1, Settings()), None, lambda w, r, e, resp: failed.put(resp.status), 0.0, 10, _never
    )
    with serve(boom, layers) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 500
        assert failed.get(timeout=WAIT) == "500 Internal Server Error"  # what the client got
    assert any("app bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_a_raising_hook_is_logged_and_the_request_goes_on(caplog):
    def pre_request(worker, req):
        raise RuntimeError("pre bug")

    def post_request(worker, req, environ, resp):
        raise RuntimeError("post bug")

    caplog.set_level(logging.ERROR, logger="corral.error")
    layers = wsgi_layers(WorkerView(1, Settings()), pre_request, post_request, 0.0, 10, _never)
    with serve(hello, layers) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 201
        assert client.get().status == 201  # the connection and the thread serve on
        wait_until(
            lambda: sum("post_request hook raised" in r.getMessage() for r in caplog.records) == 2,
            what="both post_request failures logged",
        )
    pre = [r for r in caplog.records if "pre_request hook raised (the request goes on)" in r.getMessage()]
    assert len(pre) == 2 and all(r.exc_info and "pre bug" in str(r.exc_info[1]) for r in pre)


# ---------------------------------------------------------------------------- --request-timeout


def test_past_the_deadline_the_client_gets_504_and_the_thread_its_disconnect(caplog):
    release = threading.Event()
    events: queue.Queue = queue.Queue()

    def slow(environ, start_response):
        if environ["PATH_INFO"] == "/fast":
            return hello(environ, start_response)
        release.wait(WAIT)
        write = start_response("200 OK", [])
        try:
            write(b"late")
        except ClientDisconnected as exc:
            events.put(("write", type(exc).__name__))
        try:
            environ["wsgi.input"].read()
        except ClientDisconnected as exc:
            events.put(("read", type(exc).__name__))
        return [b"dropped"]

    caplog.set_level(logging.WARNING, logger="corral.error")
    # 1 s: /fast below must be answered well within it, on a busy machine too
    layers = wsgi_layers(WorkerView(1, Settings()), None, None, 1.0, 4, _never)
    try:
        with serve(slow, layers) as (host, port, server), Client(host, port) as client:
            client.send(b"POST /late HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
            response = client.response()
            assert response.status == 504 and b"did not answer in time" in response.body
            assert response.header("connection") == "close"
            assert client.closed()
            deadline = layers.deadline
            wait_until(lambda: deadline.stuck == 1, what="the thread counted as stuck")
            assert not server.application_instances  # the slot is free; the thread is counted as stuck
            with Client(host, port) as other:
                assert other.get("/fast").status == 201  # the worker serves on
            release.set()
            assert events.get(timeout=WAIT) == ("write", "ClientDisconnected")
            assert events.get(timeout=WAIT) == ("read", "ClientDisconnected")
            wait_until(lambda: deadline.stuck == 0, what="the thread to return")
    finally:
        release.set()
    assert any("timed out after 1s (--request-timeout): answered 504" in r.getMessage() for r in caplog.records)


def test_a_response_already_begun_is_cut_by_a_close():
    release = threading.Event()

    def streaming(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        release.wait(WAIT)
        yield b"never sent"

    # 1 s: the first chunk must be out before the deadline, on a busy machine too
    layers = wsgi_layers(WorkerView(1, Settings()), None, None, 1.0, 4, _never)
    try:
        with serve(streaming, layers) as (host, port, _), Client(host, port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            raw = client.read_to_eof()  # the server closes: the client can tell the body is cut
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"first" in raw
            assert b"504" not in raw and b"never sent" not in raw and not raw.endswith(b"0\r\n\r\n")
            release.set()
            wait_until(lambda: layers.deadline.stuck == 0, what="the thread to return")
    finally:
        release.set()


def test_a_request_whose_body_never_came_gets_504_without_a_thread():
    def app(environ, start_response):
        raise AssertionError("the application never runs: its body did not come in time")

    layers = wsgi_layers(WorkerView(1, Settings()), None, None, 0.2, 4, _never)
    with serve(app, layers, body_timeout=30) as (host, port, server), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\npartial")
        assert client.response().status == 504
        assert client.closed()
        assert layers.deadline.stuck == 0 and not server.application_instances


def test_a_response_that_beats_the_deadline_is_untouched():
    layers = wsgi_layers(WorkerView(1, Settings()), None, None, 30.0, 4, _never)
    with serve(hello, layers) as (host, port, _), Client(host, port) as client:
        for _ in range(3):  # keep-alive, each with its body read from a deadline-aware wsgi.input
            client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
            assert client.response().body == b"hello"
        assert layers.deadline.stuck == 0


def test_stuck_threads_filling_the_pool_ask_once_for_a_replacement():
    release = threading.Event()
    recycled = []

    def stuck(environ, start_response):
        release.wait(WAIT)
        start_response("200 OK", [])
        return [b"late"]

    layers = wsgi_layers(WorkerView(1, Settings()), None, None, 0.2, 2, lambda: recycled.append(True))
    try:
        with serve(stuck, layers, threads=2) as (host, port, _), Client(host, port) as one, Client(host, port) as two:
            assert one.get().status == 504
            assert not recycled
            assert two.get().status == 504
            wait_until(lambda: recycled, what="the recycle request")
            assert layers.deadline.stuck == 2
            release.set()
            wait_until(lambda: layers.deadline.stuck == 0, what="the threads to return")
            assert recycled == [True]  # asked once
    finally:
        release.set()


def test_hooks_see_the_504_of_an_expired_request():
    release = threading.Event()
    seen: queue.Queue = queue.Queue()

    def slow(environ, start_response):
        release.wait(WAIT)
        start_response("200 OK", [])
        return [b"late"]

    def post_request(worker, req, environ, resp):
        seen.put((req.path, resp.status_code, resp.sent))

    layers = wsgi_layers(
        WorkerView(1, Settings()), lambda w, r: seen.put(("pre", r.path)), post_request, 0.2, 4, _never
    )
    try:
        with serve(slow, layers) as (host, port, _), Client(host, port) as client:
            assert client.get("/slow").status == 504
            assert seen.get(timeout=WAIT) == ("pre", "/slow")
            release.set()  # post_request runs when the application returns, on its thread
            path, status, sent = seen.get(timeout=WAIT)
            assert (path, status) == ("/slow", 504) and sent > 0
    finally:
        release.set()
