"""--threads 1: the WSGI application called on the worker's event-loop thread (corral.worker.wsgi.inline), as
gunicorn's sync worker calls it on its only thread, over real sockets. (test_native.py runs its whole suite in
this mode too.)"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import socket
import threading
import time

import pytest

from corral.worker.app.hooks import WorkerView
from corral.worker.serve.testing import call_in_loop
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


# ---------------------------------------------------------------------------- what runs between the calls
#
# The loop is hidden from the applications once per batch of calls (InlineRunner.run); what follows the calls
# (writing, completing, the next pipelined request, a file's transfer) runs with it shown again.


class LoopHeld:
    """Holds the worker's event loop busy (a callback waiting on an event), so that what the test sends meanwhile
    is read in one turn of the loop once it is let go."""

    def __init__(self, server):
        self.release = threading.Event()
        self.entered = threading.Event()

        def hold():
            self.entered.set()
            self.release.wait(WAIT)

        self.thread = threading.Thread(target=call_in_loop, args=(server, hold, WAIT * 2))
        self.thread.start()
        assert self.entered.wait(WAIT)

    def let_go(self):
        self.release.set()
        self.thread.join(WAIT * 2)


def test_a_file_response_behind_an_unread_one_is_sent_whole(tmp_path):
    """The file's transfer waits for the transport to drain (a drain callback, which needs the running loop)."""
    big, size = 8 << 20, 1 << 20
    path = tmp_path / "file"
    path.write_bytes(b"f" * size)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if environ["PATH_INFO"] == "/big":
            return [b"b" * big]
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    with serve(app) as (host, port, server):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        with sock:
            sock.connect((host, port))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
            # The big response is written and most of it waits in the transport: the client reads nothing yet.
            wait_until(
                lambda: any(c.transport.get_write_buffer_size() for c in list(server.connections)), WAIT, "backlog"
            )
            sock.sendall(b"GET /file HTTP/1.1\r\nHost: h\r\n\r\n")
            data = b""
            while not data.endswith(b"f" * size):
                chunk = sock.recv(1 << 20)
                assert chunk, f"closed after {len(data)} bytes"
                data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2 and len(data) > big + size


def test_a_health_probe_pipelined_behind_a_request_is_answered():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with serve(app, health_path="/healthz") as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        first = client.response()
        assert (first.status, first.body) == (200, b"ok")
        assert client.response().status == 200  # the probe: answered beside the pool, with the loop shown


def test_one_application_call_at_a_time_when_an_upload_takes_the_pools_thread():
    """An upload over --wsgi-body-buffer goes to the pool's thread; an ordinary request read in the same turn then
    waits for that thread instead of running on the loop's thread beside it."""
    active: list[str] = []
    overlaps: list[tuple[str, list[str]]] = []
    uploading, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if active:
            overlaps.append((path, list(active)))
        active.append(path)
        try:
            if path == "/upload":
                environ["wsgi.input"].read(10)
                uploading.set()
                release.wait(WAIT)
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        finally:
            active.remove(path)

    with serve(app, wsgi_body_buffer=65536) as (host, port, server):
        with Client(host, port) as upload, Client(host, port) as get:
            held = LoopHeld(server)
            upload.send(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000)
            get.send(b"GET /get HTTP/1.1\r\nHost: h\r\n\r\n")
            held.let_go()
            assert uploading.wait(WAIT)
            # The ordinary request either ran beside the upload (the defect) or waits for the pool's thread.
            wait_until(lambda: overlaps or server.wsgi.threads.jobs, WAIT, "the request queued to the pool's thread")
            release.set()
            upload.send(b"x" * (1000000 - 70000))
            assert upload.response().status == 200 and get.response().status == 200
    assert overlaps == []


def test_the_access_lines_of_a_turn_are_written_together(monkeypatch, tmp_path):
    from corral.worker.edge import accesslog
    from corral.worker.edge.sessionlog import make_request_log

    writes: list[int] = []
    real = accesslog.DirectLines._write
    monkeypatch.setattr(
        accesslog.DirectLines, "_write", lambda self, text, count: (writes.append(count), real(self, text, count))[1]
    )

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    values = settings(threads=1, accesslog=str(tmp_path / "access.log"))
    # corral's own handler alone on the access logger, as a worker has it (lines go through `logging` again when
    # anything else is there, and tests before this one may have left a handler or a filter of theirs).
    logger = logging.getLogger(accesslog.GUNICORN_ACCESS_LOGGER)
    saved = list(logger.handlers), list(logger.filters), logger.propagate, logger.level
    for handler in saved[0]:
        logger.removeHandler(handler)
    for log_filter in saved[1]:
        logger.removeFilter(log_filter)
    log = make_request_log(values)
    try:
        with run_server(app, values, wsgi=True, access_log=log) as (host, port, server):
            clients = [Client(host, port) for _ in range(30)]
            try:
                assert clients[0].get("/warm").status == 200  # every connection accepted, a first line written
                wait_until(lambda: len(server.connections) == 30, WAIT, "30 connections")
                writes.clear()
                held = LoopHeld(server)
                for client in clients:
                    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                held.let_go()
                assert all(client.response().status == 200 for client in clients)
            finally:
                for client in clients:
                    client.close()
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            logger.addHandler(handler)
        for log_filter in saved[1]:
            logger.addFilter(log_filter)
        logger.propagate, logger.level = saved[2], saved[3]
    assert sum(writes) == 30 and len(writes) <= 2, writes  # one turn's lines in one write (two at most)


def test_a_burst_of_new_connections_is_accepted_while_slow_requests_run():
    """The loop accepts one connection per turn (libuv accepts one per wake-up of the listening socket), so a
    turn must not run every queued request at once: with 8 clients keeping a slow app busy, 20 new connections
    opened at once are each answered after a few dozen calls, not after a turn of all 8 busy ones (and the new
    ones read so far) per connection accepted."""
    calls = [0]

    def slow(environ, start_response):
        time.sleep(0.01)  # a slow view (it blocks the worker, as on gunicorn's sync worker)
        calls[0] += 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % calls[0]]

    stop = threading.Event()

    def keep_busy(client: Client) -> None:
        while not stop.is_set():
            client.get("/busy")

    with serve(slow) as (host, port, _server):
        busy = [Client(host, port) for _ in range(8)]
        threads = [threading.Thread(target=keep_busy, args=(c,), daemon=True) for c in busy]
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: calls[0] >= 16, what="the busy clients served")
            start = calls[0]
            fresh = [Client(host, port) for _ in range(20)]  # (connected by the kernel: accepted later)
            for client in fresh:
                client.send(b"GET /new HTTP/1.1\r\nHost: t\r\n\r\n")
            answered_at = []
            for client in fresh:
                with client:
                    answered_at.append(int(client.response().body) - start)
        finally:
            stop.set()
            for thread in threads:
                thread.join(WAIT)
            for client in busy:
                client.close()
    assert max(answered_at) < 80, answered_at  # (43 measured; 123 when a turn ran every queued request)
