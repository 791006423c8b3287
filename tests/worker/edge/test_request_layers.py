"""The request layers a gunicorn user can turn on (worker/app/hooks.py, worker/edge/deadline.py): absent when off,
and what they do when on, through a real in-process worker and a raw-socket client."""

from __future__ import annotations

import asyncio
import logging
import threading

from corral.shared.settings import Settings
from corral.shared.wsgi import WsgiToAsgi
from corral.worker.app.hooks import RequestHooks, WorkerView, wrap_request_hooks
from corral.worker.edge.deadline import RequestDeadline, wrap_deadline
from worker_http_helpers import WAIT, Client, run_server, wait_until


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-app", b"yes")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_unset_hooks_and_deadline_add_no_layer():
    worker = WorkerView(1, Settings())
    assert wrap_request_hooks(ok_app, worker, None, None) is ok_app
    assert wrap_deadline(ok_app, ok_app, 0.0, 10, lambda: None) is ok_app
    assert isinstance(wrap_request_hooks(ok_app, worker, lambda w, r: None, None), RequestHooks)
    assert isinstance(wrap_deadline(ok_app, ok_app, 1.0, 10, lambda: None), RequestDeadline)


def test_pre_and_post_request_see_gunicorn_style_objects():
    seen = []

    def pre_request(worker, req):
        seen.append(("pre", worker.age, req.method, req.path, req.uri, req.version, dict(req.headers)["X-PROBE"]))

    def post_request(worker, req, environ, resp):
        seen.append(
            (
                "post",
                environ["PATH_INFO"],
                environ["HTTP_X_PROBE"],
                resp.status,
                resp.status_code,
                resp.headers,
                resp.sent,
            )
        )

    app = wrap_request_hooks(ok_app, WorkerView(7, Settings()), pre_request, post_request)
    with run_server(app) as (host, port, _), Client(host, port) as client:
        response = client.get("/a%20b?q=1", headers="X-Probe: 42\r\n")
        assert response.status == 201
        wait_until(lambda: len(seen) == 2, what="both hooks")
    assert seen[0] == ("pre", 7, "GET", "/a b", "/a%20b?q=1", (1, 1), "42")
    assert seen[1] == ("post", "/a b", "42", "201 Created", 201, [("x-app", "yes")], 5)


def test_a_raising_hook_is_logged_and_the_request_goes_on(caplog):
    def pre_request(worker, req):
        raise RuntimeError("hook bug")

    caplog.set_level(logging.ERROR, logger="corral.error")
    app = wrap_request_hooks(ok_app, WorkerView(1, Settings()), pre_request, None)
    with run_server(app) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 201
    assert any("pre_request hook raised" in r.getMessage() and r.exc_info for r in caplog.records)


def test_deadline_answers_504_and_cancels_with_a_disconnect():
    events = []

    async def slow(scope, receive, send):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append((await receive())["type"])
            raise

    app = wrap_deadline(slow, slow, 0.2, 10, lambda: events.append("recycle"))
    with run_server(app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.status == 504 and b"did not answer in time" in response.body
        wait_until(lambda: events, what="the cancelled app")
    assert events == ["http.disconnect"]


def test_deadline_recycles_once_stuck_wsgi_threads_fill_the_pool():
    release = threading.Event()
    recycled = []

    def stuck(environ, start_response):
        release.wait(WAIT)
        start_response("200 OK", [])
        return [b"late"]

    bridge = WsgiToAsgi(stuck)
    app = wrap_deadline(bridge, stuck, 0.2, 2, lambda: recycled.append(True))
    try:
        with run_server(app) as (host, port, _server), Client(host, port) as one, Client(host, port) as two:
            assert one.get().status == 504
            assert not recycled
            assert two.get().status == 504
            wait_until(lambda: recycled, what="the recycle request")
            assert app.stuck == 2
            release.set()
            wait_until(lambda: app.stuck == 0, what="the threads to return")
            assert recycled == [True]  # asked once
    finally:
        release.set()


def test_deadline_answers_even_an_app_that_ignores_its_cancellation():
    """The 504 goes out at the deadline, before the app is cancelled: one that swallows the cancellation
    and goes on does not hold it back (its later sends go nowhere)."""
    finished = threading.Event()

    async def stubborn(scope, receive, send):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # ignores it for a while, then tries to answer
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"too late"})
            finished.set()

    app = wrap_deadline(stubborn, stubborn, 0.2, 10, lambda: None)
    with run_server(app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.status == 504
        assert not finished.is_set()  # answered while the app still ran
        assert finished.wait(WAIT)


def test_deadline_leaves_requests_in_time_alone():
    async def waits_a_little(scope, receive, send):
        await asyncio.sleep(0.01)
        await ok_app(scope, receive, send)

    for inner in (ok_app, waits_a_little):  # finished in its first step, and as a task
        app = wrap_deadline(inner, inner, 5.0, 10, lambda: None)
        with run_server(app) as (host, port, _), Client(host, port) as client:
            for _ in range(3):
                response = client.get()
                assert response.status == 201 and response.body == b"hello"
