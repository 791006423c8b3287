"""sync_to_async / async_to_sync: errors, cancellation, deadlock detection and argument checks."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.shared.sync import async_to_sync, sync_to_async
from sync_helpers import WAIT, current_thread_name

# --- errors ---------------------------------------------------------------------------------------------


class CustomError(Exception):
    pass


def test_sync_to_async_propagates_exception_with_traceback():
    def failing_sync_function():
        raise CustomError("from sync")

    async def main():
        for sensitive in (True, False):
            with pytest.raises(CustomError, match="from sync") as info:
                await sync_to_async(failing_sync_function, thread_sensitive=sensitive)()
            names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
            assert "failing_sync_function" in names
        # The thread-sensitive thread is still usable afterwards.
        return await sync_to_async(lambda: "still works")()

    assert asyncio.run(main()) == "still works"


def test_async_to_sync_propagates_exception_with_traceback():
    async def failing_coroutine():
        await asyncio.sleep(0)
        raise CustomError("from async")

    with pytest.raises(CustomError, match="from async") as info:
        async_to_sync(failing_coroutine)()
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "failing_coroutine" in names
    assert async_to_sync(asyncio.sleep)(0, result=5) == 5


def test_stop_iteration_from_sync_function_becomes_runtime_error():
    def stopper():
        raise StopIteration

    async def main():
        with pytest.raises(RuntimeError, match="StopIteration") as info:
            await sync_to_async(stopper)()
        assert isinstance(info.value.__cause__, StopIteration)

    asyncio.run(main())


def test_exceptions_cross_nested_bridges():
    def sync_inner():
        raise CustomError("deep")

    async def async_middle():
        await sync_to_async(sync_inner)()

    def sync_outer():
        async_to_sync(async_middle)()

    async def main():
        with pytest.raises(CustomError, match="deep"):
            await sync_to_async(sync_outer)()

    asyncio.run(main())


def test_exception_being_handled_is_visible_across_bridges():
    def sync_function():
        return type(sys.exc_info()[1])

    async def async_function():
        return type(sys.exc_info()[1])

    async def main():
        try:
            raise CustomError("handled")
        except CustomError:
            return await sync_to_async(sync_function)()

    assert asyncio.run(main()) is CustomError
    try:
        raise CustomError("handled")
    except CustomError:
        assert async_to_sync(async_function)() is CustomError


# --- cancellation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sensitive", [True, False])
def test_cancel_stops_waiting_while_the_sync_function_runs_on(sensitive):
    """asgiref's contract: the cancelled caller raises at once; the started function (a thread cannot be
    interrupted) finishes in its thread, and the executor then serves the next call."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def blocking():
        started.set()
        release.wait(WAIT)
        finished.set()
        return "done"

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sync_to_async(blocking, thread_sensitive=sensitive)())
        assert await loop.run_in_executor(None, started.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        running_on = not finished.is_set()  # the task ended while the function was still blocked
        release.set()
        # Queued behind the function on the thread-sensitive thread: runs once it has finished.
        after = await sync_to_async(finished.is_set, thread_sensitive=sensitive)()
        assert await loop.run_in_executor(None, finished.wait, WAIT)
        return running_on, after or not sensitive

    assert asyncio.run(main()) == (True, True)


def test_cancel_before_start_never_runs_the_function():
    release = threading.Event()
    started = threading.Event()
    ran = []

    def blocker():
        started.set()
        release.wait(WAIT)

    async def main():
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(sync_to_async(blocker)())
        assert await loop.run_in_executor(None, started.wait, WAIT)
        second = asyncio.create_task(sync_to_async(ran.append)("second"))
        await asyncio.sleep(0)  # second is now queued behind the blocker on the sensitive thread
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        release.set()
        await first
        await sync_to_async(ran.append)("third")  # queued after where second was

    asyncio.run(main())
    assert ran == ["third"]


def test_cancel_reaches_nested_async_to_sync_which_may_absorb_it():
    """A cancelled sync_to_async passes the cancellation to the coroutine its function waits on."""
    events = {}

    async def view():
        try:
            events["started"].set()
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            events["view_cancelled"] = True
        return "absorbed"

    def sync_middleware():
        return async_to_sync(view)()

    async def main():
        events["started"] = asyncio.Event()
        task = asyncio.create_task(sync_to_async(sync_middleware)())
        await asyncio.wait_for(events["started"].wait(), WAIT)
        task.cancel()
        return await task

    assert asyncio.run(main()) == "absorbed"
    assert events["view_cancelled"]


def test_cancel_propagates_through_nested_async_to_sync():
    events = {}
    saw_cancel = threading.Event()

    async def view():
        events["started"].set()
        await asyncio.sleep(WAIT)

    def sync_middleware():
        try:
            async_to_sync(view)()
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    async def main():
        events["started"] = asyncio.Event()
        task = asyncio.create_task(sync_to_async(sync_middleware)())
        await asyncio.wait_for(events["started"].wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # The sync code sees the cancellation in its own thread: possibly just after the task has ended.
    assert saw_cancel.wait(WAIT)


def test_cancel_landing_before_nested_async_to_sync_starts_cancels_it():
    entered, proceed, finished = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    async def view():
        seen["view_ran"] = True

    def sync_code():
        entered.set()
        proceed.wait(WAIT)
        try:
            async_to_sync(view)()
        except asyncio.CancelledError:
            seen["sync_saw_cancel"] = True
            raise
        finally:
            finished.set()

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sync_to_async(sync_code)())
        assert await loop.run_in_executor(None, entered.wait, WAIT)
        task.cancel()
        await asyncio.sleep(0)  # one turn: the task handles its cancellation
        proceed.set()  # only now does the function call async_to_sync
        with pytest.raises(asyncio.CancelledError):
            await task
        # The function goes on in its thread after the task has ended (asgiref's contract); the loop stays
        # up until it is done, so its nested async_to_sync runs against this loop.
        assert await loop.run_in_executor(None, finished.wait, WAIT)

    asyncio.run(main())
    assert seen == {"sync_saw_cancel": True}


def test_async_to_sync_reports_a_task_it_could_not_make():
    # The coroutine's task is made on the loop's thread; if that fails (here a task factory refuses), the
    # caller gets the error rather than waiting forever for a coroutine that never runs.
    armed = threading.Event()
    ran = []
    refused = []

    def factory(loop, coro, **kwargs):
        if armed.is_set():
            armed.clear()
            refused.append(coro)
            raise CustomError("no task for you")
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def inner():
        ran.append(True)

    def sync_code():
        armed.set()
        with pytest.raises(CustomError, match="no task for you"):
            async_to_sync(inner)()
        async_to_sync(inner)()  # the next call gets its task
        return "done"

    async def main():
        asyncio.get_running_loop().set_task_factory(factory)
        return await asyncio.wait_for(sync_to_async(sync_code)(), WAIT)

    assert asyncio.run(main()) == "done"
    assert ran == [True]
    # The refused coroutine was closed (no "never awaited" warning at collection).
    assert [inspect.getcoroutinestate(coro) for coro in refused] == [inspect.CORO_CLOSED]


def test_wait_for_timeout_on_sync_to_async():
    release = threading.Event()

    async def main():
        call = asyncio.ensure_future(sync_to_async(release.wait, thread_sensitive=False)(WAIT))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call, 0.01)
        # The call ended at the timeout, cancelled, while its function still blocks in its thread
        # (asgiref's contract: waiting for the function would let it hold the timeout off).
        assert call.cancelled()
        assert not release.is_set()

    try:
        asyncio.run(main())
    finally:
        release.set()


# --- deadlock, argument checks --------------------------------------------------------------------------


def test_deadlock_is_detected():
    async def inner():
        return await sync_to_async(lambda: 1)()

    def view(loop):
        # Schedules work on the loop without async_to_sync, then blocks the sensitive thread on it.
        return asyncio.run_coroutine_threadsafe(inner(), loop).result(WAIT)

    async def main():
        with pytest.raises(RuntimeError, match="would deadlock"):
            await sync_to_async(view)(asyncio.get_running_loop())
        # The detector is reset: normal calls still work.
        return await sync_to_async(lambda: 2)()

    assert asyncio.run(main()) == 2


def test_async_to_sync_in_running_loop_raises():
    async def inner():
        return 1

    async def main():
        with pytest.raises(RuntimeError, match="event loop"):
            async_to_sync(inner)()

    asyncio.run(main())


def test_sync_to_async_refuses_async_callables():
    async def coroutine_function():
        pass

    class AsyncCallable:
        async def __call__(self):
            pass

    for bad in (coroutine_function, functools.partial(coroutine_function), AsyncCallable(), 1):
        with pytest.raises(TypeError, match="only be applied to sync functions"):
            sync_to_async(bad)


def test_async_to_sync_warns_on_non_async_callables_and_fails_when_called():
    # asgiref's contract: a non-callable is only warned about, and fails when called.
    with pytest.warns(UserWarning, match="non-async-marked"):
        not_callable = async_to_sync(1)
    with pytest.raises(TypeError):
        not_callable()
    with pytest.warns(UserWarning, match="non-async-marked"):
        wrapped = async_to_sync(lambda: None)
    with pytest.raises(TypeError, match="not an awaitable"):
        wrapped()


def test_executor_argument():
    calls = []

    class CountingExecutor(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            calls.append(fn)
            return super().submit(fn, *args, **kwargs)

    with CountingExecutor(1, thread_name_prefix="custom-executor") as executor:
        wrapped = sync_to_async(current_thread_name, thread_sensitive=False, executor=executor)
        assert asyncio.run(wrapped()).startswith("custom-executor")
        assert len(calls) == 1
        for error in (TypeError, ValueError):
            with pytest.raises(error):
                sync_to_async(current_thread_name, thread_sensitive=True, executor=executor)
