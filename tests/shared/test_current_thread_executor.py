"""CurrentThreadExecutor: work submitted from other threads runs on the owner thread while it waits."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from corral.shared.current_thread_executor import CurrentThreadExecutor

WAIT = 10  # seconds; generous bound for a busy machine, never reached when things work


def _in_thread(fn, *args):
    """Run fn in a helper thread; returns (thread, box) where box gets 'result' or 'error'."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_submitted_work_runs_on_owner_thread_and_returns_result():
    executor = CurrentThreadExecutor()
    done: Future = Future()
    owner = threading.current_thread()

    def submitter():
        inner = executor.submit(lambda a, b=0: (threading.current_thread(), a + b), 1, b=2)
        result = inner.result(WAIT)
        done.set_result(None)
        return result

    thread, box = _in_thread(submitter)
    executor.run_until_future(done)
    thread.join(WAIT)
    ran_on, value = box["result"]
    assert ran_on is owner
    assert value == 3


def test_exception_goes_to_the_submitters_future():
    executor = CurrentThreadExecutor()
    done: Future = Future()

    def boom():
        raise KeyError("nope")

    def submitter():
        inner = executor.submit(boom)
        try:
            return inner.exception(WAIT)
        finally:
            done.set_result(None)

    thread, box = _in_thread(submitter)
    executor.run_until_future(done)
    thread.join(WAIT)
    assert isinstance(box["result"], KeyError)


def test_queued_work_is_drained_before_returning():
    executor = CurrentThreadExecutor()
    done: Future = Future()
    ran = []

    def submitter():
        futures = [executor.submit(ran.append, i) for i in range(5)]
        done.set_result(None)  # finished while the five items may still be queued
        return futures

    thread, box = _in_thread(submitter)
    executor.run_until_future(done)
    thread.join(WAIT)
    assert ran == [0, 1, 2, 3, 4]
    assert all(f.done() for f in box["result"])


def test_already_done_future_returns_immediately():
    executor = CurrentThreadExecutor()
    done: Future = Future()
    done.set_result(1)
    executor.run_until_future(done)  # must not block


def test_submit_from_own_thread_is_refused():
    executor = CurrentThreadExecutor()
    with pytest.raises(RuntimeError, match="own thread"):
        executor.submit(print)


def test_run_from_other_thread_is_refused():
    executor = CurrentThreadExecutor()
    thread, box = _in_thread(executor.run_until_future, Future())
    thread.join(WAIT)
    assert isinstance(box["error"], RuntimeError)


def test_submit_after_finish_is_refused():
    executor = CurrentThreadExecutor()
    done: Future = Future()
    done.set_result(None)
    executor.run_until_future(done)
    thread, box = _in_thread(executor.submit, print)
    thread.join(WAIT)
    assert isinstance(box["error"], RuntimeError)
    assert "already quit" in str(box["error"])


def test_submit_after_finish_goes_to_outer_executor_of_same_thread():
    outer = CurrentThreadExecutor()
    inner = CurrentThreadExecutor(outer)
    inner_done: Future = Future()
    inner_done.set_result(None)
    inner.run_until_future(inner_done)  # the inner one has quit

    outer_done: Future = Future()
    owner = threading.current_thread()

    def submitter():
        try:
            return inner.submit(threading.current_thread).result(WAIT)
        finally:
            outer_done.set_result(None)

    thread, box = _in_thread(submitter)
    outer.run_until_future(outer_done)
    thread.join(WAIT)
    assert box["result"] is owner


def test_cancelled_work_is_skipped():
    executor = CurrentThreadExecutor()
    done: Future = Future()
    ran = []

    release = threading.Event()

    def submitter():
        # The owner thread is kept busy by the blocker, so `first` is certainly still queued when cancelled.
        blocker = executor.submit(release.wait, WAIT)
        first = executor.submit(ran.append, "cancelled")
        first.cancel()
        release.set()
        blocker.result(WAIT)
        second = executor.submit(ran.append, "ran")
        second.result(WAIT)
        done.set_result(None)
        return first.cancelled()

    thread, box = _in_thread(submitter)
    executor.run_until_future(done)
    thread.join(WAIT)
    assert box["result"] is True
    assert ran == ["ran"]
