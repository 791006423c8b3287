"""corral.worker.app.eager: an application's first step run at once, a task only when it does not finish there, and
what the application sees (its Task, its context, its callbacks, its cancellation) the same as in a task."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys

import pytest

from corral.worker.app import eager
from corral.worker.app.pool import new_event_loop
from worker_http_helpers import Client, run_server

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")

# On Python 3.10 `eager.start` makes a plain task (no eager start there, and no Task.cancelling()): the tests of
# what runs inside start() itself need 3.11 or later.
needs_eager = pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10: start() makes a plain task")


def run_in_callback(make, *, then=None):
    """Call `eager.start(loop, make())` from a loop callback (where a protocol's data_received runs: no task is
    current), then await `then(task)` if given; returns (task, what `then` returned)."""
    loop = new_event_loop()
    try:
        started = loop.create_future()
        loop.call_soon(lambda: started.set_result(eager.start(loop, make())))

        async def main():
            task = await started
            return task, (await then(task) if then is not None else None)

        return loop.run_until_complete(main())
    finally:
        loop.close()


@needs_eager
def test_an_app_that_finishes_in_its_first_step_ran_before_start_returned_and_is_done():
    seen = []

    async def app():
        seen.append(asyncio.current_task())
        return "done"

    loop = new_event_loop()
    try:
        outcome = loop.create_future()

        def callback():
            task = eager.start(loop, app())
            outcome.set_result((task, list(seen), task.done()))

        loop.call_soon(callback)
        task, before, done = loop.run_until_complete(outcome)
    finally:
        loop.close()
    assert before == [task]  # it ran inside start(), with its own Task current
    assert done and task.result() == "done" and not task.cancelled()
    assert isinstance(task, asyncio.Task)


def test_a_suspended_app_goes_on_in_the_same_task():
    seen = []

    async def app(gate):
        seen.append(asyncio.current_task())
        await gate
        seen.append(asyncio.current_task())
        return 42

    async def then(task):
        assert not task.done()
        task_loop = task.get_loop()
        assert task_loop is asyncio.get_running_loop()
        return await task

    gate_holder = {}

    def make():
        gate = gate_holder["gate"] = asyncio.get_event_loop().create_future()
        asyncio.get_event_loop().call_later(0.01, gate.set_result, None)
        return app(gate)

    task, result = run_in_callback(make, then=then)
    assert result == 42
    assert seen == [task, task]


@needs_eager
def test_all_tasks_lists_a_suspended_app_and_no_task_that_finished_in_its_first_step():
    """asyncio.all_tasks() is as with plain tasks: a task that went on is listed while it waits; one that finished
    in its first step never is (on 3.11 it is not even registered: eager._skip_first_step_registration)."""
    finished = []

    async def quick():
        finished.append(asyncio.current_task())

    async def app(gate):
        await gate
        return asyncio.current_task() in asyncio.all_tasks()

    async def then(task):
        listed_while_waiting = task in asyncio.all_tasks()
        first = eager.start(asyncio.get_running_loop(), quick())  # (from a task: a plain task, which runs soon)
        await first
        gate_holder["gate"].set_result(None)
        return listed_while_waiting, await task, first in asyncio.all_tasks()

    gate_holder = {}

    def make():
        gate_holder["gate"] = asyncio.get_event_loop().create_future()
        return app(gate_holder["gate"])

    _, (listed_while_waiting, listed_after_resuming, done_listed) = run_in_callback(make, then=then)
    assert listed_while_waiting and listed_after_resuming and not done_listed
    # One that finished in its first step, started from a loop callback as a request is: done, and on 3.11 (the
    # start by hand) never put in asyncio's set of all tasks at all.
    quick_task, _ = run_in_callback(quick)
    assert quick_task.done()
    if sys.version_info[:2] == (3, 11):
        assert quick_task not in asyncio.tasks._all_tasks  # type: ignore[attr-defined]  # private, 3.11's


def test_bare_yield_and_a_python_future_both_resume():
    async def app():
        await asyncio.sleep(0)  # a bare yield
        future = asyncio.futures._PyFuture()  # a pure-Python future: its __await__ re-checks done() on resume
        asyncio.get_running_loop().call_soon(future.set_result, "python future")
        return await future

    async def first_python_future():
        future = asyncio.futures._PyFuture()
        asyncio.get_running_loop().call_later(0.01, future.set_result, "first")
        return await future

    _, result = run_in_callback(app, then=lambda task: task)
    assert result == "python future"
    _, result = run_in_callback(first_python_future, then=lambda task: task)
    assert result == "first"


def test_the_context_is_the_tasks_own_copy():
    async def app(gate):
        VAR.set("request")
        await gate
        return VAR.get()

    def make():
        gate = asyncio.get_event_loop().create_future()
        asyncio.get_event_loop().call_later(0.01, gate.set_result, None)
        return app(gate)

    async def then(task):
        result = await task
        return result, VAR.get()

    _, (inside, outside) = run_in_callback(make, then=then)
    assert inside == "request"
    assert outside == "unset"


def test_an_exception_in_the_first_step_ends_the_task_with_it():
    error = ValueError("first step")

    async def app():
        raise error

    async def then(task):
        await asyncio.wait([task])
        return task.exception()

    _task, raised = run_in_callback(app, then=then)
    assert raised is error


def test_done_callbacks_added_in_the_first_step_run():
    called = []

    async def at_once():
        asyncio.current_task().add_done_callback(lambda task: called.append(("at once", task.result())))
        return 1

    async def suspended():
        asyncio.current_task().add_done_callback(lambda task: called.append(("suspended", task.result())))
        await asyncio.sleep(0.01)
        return 2

    for app in (at_once, suspended):

        async def then(task):
            await asyncio.wait([task])
            await asyncio.sleep(0)  # done callbacks run one iteration after the task ends

        run_in_callback(app, then=then)
    assert called == [("at once", 1), ("suspended", 2)]


@needs_eager
def test_a_cancellation_requested_in_the_first_step_is_delivered():
    reached = []

    async def app():
        asyncio.current_task().cancel("stop")
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            reached.append(asyncio.current_task().cancelling())
            raise

    async def then(task):
        await asyncio.wait([task])
        return task.cancelled()

    _, cancelled = run_in_callback(app, then=then)
    assert cancelled
    assert reached == [1]


def test_inside_a_running_task_start_makes_a_plain_task():
    async def app():
        return asyncio.current_task()

    async def main():
        task = eager.start(asyncio.get_running_loop(), app())
        assert not task.done()  # the caller's task is running: no first step now
        assert await task is task

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_anyio_cancel_scope_across_the_first_await():
    anyio = pytest.importorskip("anyio")

    async def app():
        # anyio finds its backend from the running task (as sniffio does) at each call below.
        with anyio.CancelScope() as scope:  # entered in the first step, left after a suspension
            await anyio.sleep(0.01)
            async with anyio.create_task_group() as group:
                group.start_soon(anyio.sleep, 0.01)
        return scope.cancel_called

    _, cancel_called = run_in_callback(app, then=lambda task: task)
    assert cancel_called is False


def test_served_requests_see_a_task_before_and_after_awaiting_the_body(events):
    async def app(scope, receive, send):
        first = asyncio.current_task()
        message = await receive()
        events.put((first is not None, asyncio.current_task() is first, message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with run_server(app) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        client.send(b"hello")  # a second read: the app's first step waits for it in receive()
        assert client.response().status == 200
        assert events.get(timeout=5) == (True, True, b"hello")
        # A body in the same read as the head: the first step has it, and the connection is kept.
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert client.response().status == 200
        assert events.get(timeout=5) == (True, True, b"abc")
        assert client.get().status == 200
        assert events.get(timeout=5) == (True, True, b"")


def test_served_app_raising_in_its_first_step_is_logged_once_and_answered_500(caplog):
    async def app(scope, receive, send):
        raise RuntimeError("raised at once")

    caplog.set_level(logging.ERROR)
    with run_server(app) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 500
    logged = [r for r in caplog.records if r.exc_info and "raised at once" in str(r.exc_info[1])]
    assert len(logged) == 1
