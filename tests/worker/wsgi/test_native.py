"""The worker's native WSGI path (corral.worker.wsgi.cycle), over real sockets, its requests: the environ,
request bodies and 100-continue, the pool, pipelining, the access log, lifespan, threads. Its responses are
test_native_responses.py's, its I/O defences and sendfile test_native_io.py's."""

from __future__ import annotations

import logging
import queue
import threading

import httpx
import pytest

from corral.shared.wsgi import WsgiToAsgi
from corral.worker.edge.proxy_headers import make_proxy_headers
from worker_http_helpers import WAIT, Client, call_in_loop, run_server, settings, wait_until
from wsgi_modes import with_mode

# Every test here runs twice: on the pool's threads and with --threads 1 (tests/worker/wsgi_modes.py).
pytestmark = pytest.mark.usefixtures("thread_mode")


def serve(app, **values):
    return run_server(app, settings(**with_mode(values)), wsgi=True)


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


# ---------------------------------------------------------------------------- environ


_VOLATILE = {"wsgi.input", "wsgi.errors", "wsgi.file_wrapper", "REMOTE_PORT", "SERVER_PORT"}  # two servers


def _environ_of(run, request: bytes, **values) -> dict:
    seen: queue.Queue = queue.Queue()

    def app(environ, start_response):
        seen.put({k: v for k, v in environ.items() if k not in _VOLATILE})
        seen.put(environ["wsgi.input"].read())
        start_response("204 No Content", [])
        return []

    with run(app, **values) as (host, port, _server):
        with Client(host, port) as client:
            client.send(request)
            assert client.response().status == 204
    return seen.get(timeout=WAIT), seen.get(timeout=WAIT)


def _native(app, **values):
    values = with_mode(values)
    return run_server(app, settings(**values), wsgi=True, proxy=make_proxy_headers(settings(**values)))


def _adapter(app, **values):
    return run_server(WsgiToAsgi(app), settings(**values), proxy=make_proxy_headers(settings(**values)))


@pytest.mark.parametrize(
    "request_bytes, values",
    [
        (
            (
                b"GET /app/caf%C3%A9/x?q=1&r=%20 HTTP/1.1\r\nHost: example.com:8080\r\nCookie: a=1\r\nCookie: b=2\r\n"
                b"X_Smuggled: 1\r\nAccept: a\r\nAccept: b\r\n\r\n"
            ),
            {"root_path": "/app"},
        ),
        (
            (
                b"POST /form HTTP/1.0\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\nhello"
            ),
            {},
        ),
        (b"GET /appx HTTP/1.1\r\nHost: h\r\n\r\n", {"root_path": "/app"}),
    ],
)
def test_environ_matches_the_adapter(request_bytes, values):
    """The native path's environ is the one WsgiToAsgi builds for the same request on the same server:
    SCRIPT_NAME/PATH_INFO, proxy results (REMOTE_ADDR, wsgi.url_scheme), joined headers, dropped `_`."""
    native, native_body = _environ_of(_native, request_bytes, **values)
    adapter, adapter_body = _environ_of(_adapter, request_bytes, **values)
    assert native == adapter
    assert native_body == adapter_body


def test_environ_pep3333_values():
    environ, body = _environ_of(
        _native,
        b"POST /app/caf%C3%A9?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\n\r\nabc",
        root_path="/app",
    )
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == "/app"
    assert environ["PATH_INFO"] == "/café".encode().decode("latin-1")  # a native string (PEP 3333)
    assert environ["QUERY_STRING"] == "x=1"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["CONTENT_LENGTH"] == "3"
    assert environ["REMOTE_ADDR"] == "203.0.113.7"  # 127.0.0.1 is a trusted proxy by default
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["wsgi.version"] == (1, 0) and environ["wsgi.multithread"] and not environ["wsgi.run_once"]
    assert body == b"abc"


# ---------------------------------------------------------------------------- request bodies


def test_chunked_and_large_bodies_reach_the_app_whole():
    def app(environ, start_response):
        data = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"%d:%s" % (len(data), type(environ["wsgi.input"]).__name__.encode())]

    with serve(app, wsgi_body_buffer=1024) as (host, port, _server):
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=WAIT) as http:
            assert http.post("/", content=b"x" * 1000).text == "1000:BytesIO"
            assert http.post("/", content=b"x" * 300_000).text == "300000:StreamInput"
            assert http.post("/", content=iter([b"a" * 100, b"b" * 200])).text == "300:BytesIO"
            assert http.post("/", content=iter([b"a" * 1000] * 50)).text == "50000:StreamInput"


def test_readline_and_iteration_of_a_streamed_body():
    def app(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.readline()
        rest = list(stream)
        start_response("200 OK", [])
        return [b"%s|%d|%s" % (first.strip(), len(rest), rest[-1].strip())]

    lines = b"".join(b"line %d\n" % i for i in range(20000))
    with serve(app, wsgi_body_buffer=1024) as (host, port, _server):
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=WAIT) as http:
            assert http.post("/", content=lines).text == "line 0|19999|line 19999"


def _expect(client: Client, length: int, path: str = "/") -> None:
    client.send(
        b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (path.encode(), length)
    )


def test_100_continue_small_body_answered_when_the_pre_read_begins():
    def app(environ, start_response):
        start_response("200 OK", [])
        return [environ["wsgi.input"].read()]

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            _expect(client, 5)
            assert client.response().status == 100  # before any body byte was sent
            client.send(b"hello")
            assert client.response().body == b"hello"


def test_100_continue_large_body_answered_on_first_read_only():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/refuse":
            start_response("413 Content Too Large", [])
            return [b"no"]
        start_response("200 OK", [])
        return [b"%d" % len(environ["wsgi.input"].read())]

    with serve(app, wsgi_body_buffer=1024) as (host, port, _server):
        with Client(host, port) as client:
            _expect(client, 100_000, "/refuse")
            response = client.response()
            assert response.status == 413  # no 100 first: the app never asked for the body
            assert client.closed()  # the unread body is not read to find the next request
        with Client(host, port) as client:
            _expect(client, 100_000)
            assert client.response().status == 100
            client.send(b"x" * 100_000)
            assert client.response().body == b"100000"


def test_disconnect_mid_body_raises_in_the_app():
    errors: queue.Queue = queue.Queue()

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            errors.put(exc)
            raise
        start_response("200 OK", [])
        return [b""]

    with serve(app, wsgi_body_buffer=1024) as (host, port, server):
        client = Client(host, port)
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        wait_until(lambda: server.application_instances, what="the request to start")
        client.close()
        assert isinstance(errors.get(timeout=WAIT), OSError)
        wait_until(lambda: not server.application_instances, what="the slot to be freed")


# ---------------------------------------------------------------------------- the pool, the connection, the worker


def test_pool_full_parks_wsgi_requests():
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def app(environ, start_response):
        entered.release()
        gate.wait(WAIT)
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    # Threads of the pool: with --threads 1 the blocked application holds up the event loop, which then reads
    # (and parks) nothing more until it returns (test_inline.py).
    with serve(app, max_applications=1, threads=2) as (host, port, server):
        first, second = Client(host, port), Client(host, port)
        first.send(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert entered.acquire(timeout=WAIT)
        second.send(b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: call_in_loop(server, lambda: len(server.parked)) == 1, what="the second to park")
        gate.set()
        assert first.response().body == b"/1"
        assert second.response().body == b"/2"
        first.close(), second.close()


def test_pool_full_503():
    gate = threading.Event()

    def app(environ, start_response):
        gate.wait(WAIT)
        start_response("200 OK", [])
        return [b"ok"]

    with serve(app, max_applications=1, pool_full="503", threads=2) as (host, port, server):  # (as above)
        first = Client(host, port)
        first.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: server.application_instances, what="the first request to run")
        with Client(host, port) as second:
            response = second.get("/")
            assert response.status == 503 and response.header("retry-after") == "1"
        gate.set()
        assert first.response().body == b"ok"
        first.close()


def test_websocket_handshake_refused():
    with serve(hello) as (host, port, _server):
        with Client(host, port) as client:
            client.send(
                b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert client.response().status == 404


def test_pipelined_requests_answered_in_order():
    """Responses written by the pool's threads themselves, with the next requests already queued behind
    them: every one is answered, in order, on the same connection."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    with serve(app) as (host, port, _server):
        with Client(host, port) as client:
            for _ in range(20):
                client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(10)))
                assert [client.response().body for _ in range(10)] == [b"/%d" % i for i in range(10)]


def test_pipelined_garbage_after_a_request_waits_for_its_response():
    with serve(hello) as (host, port, _server):
        with Client(host, port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
            assert client.response().body == b"hello"
            assert client.response().status == 400
            assert client.closed()


def test_access_log_gets_status_bytes_and_headers():
    lines = []

    def access_log(scope, status, nbytes, duration, headers):
        lines.append((scope["path"], status, nbytes, dict(headers).get(b"X-App")))

    def app(environ, start_response):
        start_response("201 Created", [("X-App", "yes")])
        return [b"made"]

    with run_server(app, settings(), wsgi=True, access_log=access_log) as (host, port, _server):
        with Client(host, port) as client:
            assert client.get("/thing").status == 201
            wait_until(lambda: lines, what="the access log line")
    assert lines == [("/thing", 201, 4, b"yes")]


def test_lifespan_on_refused_for_a_wsgi_app(caplog):
    import asyncio

    from corral.shared.exitcodes import WORKER_BOOT_ERROR
    from corral.worker.serve.boot import serve_application

    with caplog.at_level(logging.ERROR, logger="corral.error"):
        code = asyncio.run(serve_application(hello, settings(lifespan="on"), []))
    assert code == WORKER_BOOT_ERROR
    assert "WSGI application has no lifespan" in caplog.text


def test_a_request_queued_behind_a_slow_one_gets_a_thread_of_its_own():
    """A thread in a slow request counts as awake, so the next request is queued for it; the server's tick
    (`WorkerThreads.nudge`) wakes another thread for it instead of leaving it behind the slow one."""
    release = threading.Event()
    entered = threading.Event()
    done = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            release.wait(WAIT)
            done.set()
        return hello(environ, start_response)

    try:
        with serve(app, threads=4) as (host, port, _server), Client(host, port) as slow, Client(host, port) as fast:
            slow.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
            assert entered.wait(WAIT)
            assert fast.get("/fast").body == b"hello"  # while /slow still holds its thread
            assert not done.is_set()  # served beside it, not after it
            release.set()
            assert slow.response().body == b"hello"
    finally:
        release.set()
