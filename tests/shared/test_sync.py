"""sync_to_async / async_to_sync: threads, contexts, errors, cancellation, loops and fork safety."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.shared import runtime
from corral.shared.sync import (
    AsyncSingleThreadContext,
    AsyncToSync,
    SyncToAsync,
    ThreadSensitiveContext,
    async_to_sync,
    iscoroutinefunction,
    sync_to_async,
)

WAIT = 10  # seconds: a bound for waits on a busy machine, never reached when things work
var: contextvars.ContextVar[str] = contextvars.ContextVar("test_sync_var")


def current_thread_name() -> str:
    return threading.current_thread().name


# --- thread identity ------------------------------------------------------------------------------------


def test_thread_sensitive_outermost_async_uses_one_dedicated_thread():
    async def main():
        loop_thread = threading.current_thread()
        thread = sync_to_async(threading.current_thread)
        first = await thread()
        concurrent = await asyncio.gather(*(thread() for _ in range(5)))
        return loop_thread, first, concurrent

    loop_thread, first, concurrent = asyncio.run(main())
    assert first is not loop_thread
    assert all(t is first for t in concurrent)


def test_thread_sensitive_outermost_sync_runs_on_calling_thread():
    seen = {}

    @sync_to_async
    def inner(key):
        seen[key] = threading.current_thread()

    @async_to_sync
    async def middle():
        await inner("direct")
        await asyncio.create_task(inner("task"))

    middle()
    assert seen["direct"] is threading.current_thread()
    assert seen["task"] is threading.current_thread()


def test_nested_sync_async_sync_async_keeps_outermost_sync_thread():
    seen = {}

    @async_to_sync
    async def level1():
        await level2()

    @sync_to_async
    def level2():
        seen["level2"] = threading.current_thread()
        level3()

    @async_to_sync
    async def level3():
        await level4()

    @sync_to_async
    def level4():
        seen["level4"] = threading.current_thread()

    level1()
    assert seen["level2"] is threading.current_thread()
    assert seen["level4"] is threading.current_thread()


def test_nested_chain_from_async_stays_on_outer_loop_and_sync_thread():
    seen = {}

    @sync_to_async
    def level1():
        seen["sync1"] = threading.current_thread()
        level2()

    @async_to_sync
    async def level2():
        seen["async2"] = threading.current_thread()
        await level3()

    @sync_to_async
    def level3():
        seen["sync3"] = threading.current_thread()
        level4()

    @async_to_sync
    async def level4():
        seen["async4"] = threading.current_thread()

    async def main():
        await level1()
        return threading.current_thread()

    loop_thread = asyncio.run(main())
    # async_to_sync inside sync_to_async goes back to the outer loop; no new loop is made
    assert seen["async2"] is loop_thread and seen["async4"] is loop_thread
    assert seen["sync1"] is seen["sync3"] and seen["sync1"] is not loop_thread


def test_outer_and_inner_thread_sensitive_calls_share_the_thread():
    seen = {}

    @sync_to_async
    def outer(key):
        middle(key)

    @async_to_sync
    async def middle(key):
        await inner(key)

    @sync_to_async
    def inner(key):
        seen[key] = threading.current_thread()

    async def main():
        await asyncio.gather(outer("nested"), inner("direct"))
        return threading.current_thread()

    loop_thread = asyncio.run(main())
    assert seen["nested"] is seen["direct"]
    assert seen["nested"] is not loop_thread


def test_thread_sensitive_false_runs_off_the_sensitive_thread():
    async def main():
        sensitive = await sync_to_async(threading.current_thread)()
        other = await sync_to_async(threading.current_thread, thread_sensitive=False)()
        return sensitive, other, threading.current_thread()

    sensitive, other, loop_thread = asyncio.run(main())
    assert other is not sensitive and other is not loop_thread


def test_thread_sensitive_false_inside_async_to_sync_runs_off_calling_thread():
    @async_to_sync
    async def middle():
        return await sync_to_async(threading.current_thread, thread_sensitive=False)()

    assert middle() is not threading.current_thread()


def test_thread_sensitive_context_gives_distinct_threads_per_context():
    thread = sync_to_async(threading.current_thread)

    async def in_context():
        async with ThreadSensitiveContext():
            first = await thread()
            again = await asyncio.create_task(thread())
            async with ThreadSensitiveContext():  # nested: the outer context still applies
                nested = await thread()
            assert first is again is nested
            return first

    async def main():
        default = await thread()
        a, b = await asyncio.gather(in_context(), in_context())
        return default, a, b

    default, a, b = asyncio.run(main())
    assert a is not b
    assert default not in (a, b)
    # The context's thread is stopped when the context exits.
    a.join(WAIT)
    b.join(WAIT)
    assert not a.is_alive() and not b.is_alive()


def test_thread_sensitive_context_with_executor():
    thread = sync_to_async(threading.current_thread)

    async def main():
        with ThreadPoolExecutor(1) as executor:
            mine = executor.submit(threading.current_thread).result(WAIT)
            context = ThreadSensitiveContext(executor=executor)
            async with context:
                inside = await thread()
                with pytest.raises(RuntimeError, match="already entered"):
                    async with context:
                        pass
            after = await thread()
            with pytest.raises(RuntimeError, match="cannot be entered again"):
                async with context:
                    pass
        return mine, inside, after

    mine, inside, after = asyncio.run(main())
    assert inside is mine
    assert after is not mine


def test_async_single_thread_context_runs_calls_on_one_thread_and_shares_context():
    seen = []

    async def handler():
        seen.append(threading.current_thread())
        var.set(var.get("") + "x")

    def in_new_thread():
        # A new thread, so this test does not touch the main thread's persistent loop.
        with AsyncSingleThreadContext():
            async_to_sync(handler)()
            async_to_sync(handler)()
            with AsyncSingleThreadContext():
                async_to_sync(handler)()
        return var.get()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(in_new_thread).result(WAIT) == "xxx"
    assert seen[0] is seen[1] is seen[2]
    seen[0].join(WAIT)  # stopped when the outermost block exited
    assert not seen[0].is_alive()


# --- context variables ----------------------------------------------------------------------------------


def test_sync_to_async_contextvars_round_trip():
    def sync_function():
        assert var.get() == "caller"
        var.set("callee")

    async def main():
        var.set("caller")
        await sync_to_async(sync_function)()
        after_sensitive = var.get()
        var.set("caller")
        await sync_to_async(sync_function, thread_sensitive=False)()
        return after_sensitive, var.get()

    assert asyncio.run(main()) == ("callee", "callee")


def test_async_to_sync_contextvars_round_trip():
    async def async_function():
        await asyncio.sleep(0)
        assert var.get() == "caller"
        var.set("callee")
        return 42

    def in_new_thread():
        var.set("caller")
        assert async_to_sync(async_function)() == 42
        return var.get()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(in_new_thread).result(WAIT) == "callee"


def test_sync_to_async_with_given_context_leaves_caller_untouched():
    def sync_function():
        assert var.get() == "bar"
        var.set("baz")

    async def main():
        var.set("bar")
        context = contextvars.copy_context()
        await sync_to_async(sync_function, context=context)()
        return var.get(), context.get(var)

    assert asyncio.run(main()) == ("bar", "baz")


def test_contextvars_through_nested_bridges():
    def sync_1():
        async def async_2():
            def sync_3():
                assert var.get() == "outer"
                var.set("innermost")

            await sync_to_async(sync_3)()
            assert var.get() == "innermost"

        async_to_sync(async_2)()
        assert var.get() == "innermost"

    async def main():
        var.set("outer")
        await sync_to_async(sync_1)()
        return var.get()

    assert asyncio.run(main()) == "innermost"


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
def test_cancel_waits_for_sync_function_then_raises(sensitive):
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
        for _ in range(5):
            await asyncio.sleep(0)
        still_waiting = not task.done()  # the function has not ended, so the task must not have either
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()  # the function had ended before the task raised
        return still_waiting, await sync_to_async(lambda: "usable", thread_sensitive=sensitive)()

    assert asyncio.run(main()) == (True, "usable")


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

    async def view():
        events["started"].set()
        await asyncio.sleep(WAIT)

    def sync_middleware():
        try:
            async_to_sync(view)()
        except asyncio.CancelledError:
            events["sync_saw_cancel"] = True
            raise

    async def main():
        events["started"] = asyncio.Event()
        task = asyncio.create_task(sync_to_async(sync_middleware)())
        await asyncio.wait_for(events["started"].wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert events["sync_saw_cancel"]


def test_cancel_landing_before_nested_async_to_sync_starts_cancels_it():
    entered, proceed = threading.Event(), threading.Event()
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

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sync_to_async(sync_code)())
        assert await loop.run_in_executor(None, entered.wait, WAIT)
        task.cancel()
        await asyncio.sleep(0)  # one turn: the task handles its cancellation and waits for the function
        proceed.set()  # only now does the function call async_to_sync
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == {"sync_saw_cancel": True}


def test_wait_for_timeout_on_sync_to_async():
    release = threading.Event()

    async def release_once_cancelled(task):
        while not task.cancelling():  # wait_for has timed out and cancelled the call
            await asyncio.sleep(0.001)
        release.set()

    async def main():
        call = asyncio.ensure_future(sync_to_async(release.wait, thread_sensitive=False)(WAIT))
        releaser = asyncio.create_task(release_once_cancelled(call))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call, 0.01)
        await asyncio.wait_for(releaser, WAIT)
        assert call.cancelled()

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


def test_async_to_sync_refuses_non_callables_and_warns_on_sync_callables():
    with pytest.raises(TypeError):
        async_to_sync(1)
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


# --- loops ----------------------------------------------------------------------------------------------


async def _loop_and_thread():
    return asyncio.get_running_loop(), threading.current_thread()


def test_async_to_sync_reuses_a_loop_per_calling_thread():
    def in_new_thread():
        return async_to_sync(_loop_and_thread)(), async_to_sync(_loop_and_thread)()

    with ThreadPoolExecutor(2) as pool:
        (loop1, thread1), (loop2, thread2) = pool.submit(in_new_thread).result(WAIT)
        (loop3, _), _ = pool.submit(in_new_thread).result(WAIT)
    assert loop1 is loop2 and thread1 is thread2
    assert thread1 is not threading.current_thread()


def test_force_new_loop_gives_a_fresh_loop_each_call():
    fresh = async_to_sync(_loop_and_thread, force_new_loop=True)
    (loop1, thread1), (loop2, thread2) = fresh(), fresh()
    assert loop1 is not loop2 and thread1 is not thread2
    assert loop1.is_closed() and loop2.is_closed() and not thread1.is_alive()
    persistent, _ = async_to_sync(_loop_and_thread)()
    assert persistent not in (loop1, loop2)


def test_loop_thread_stops_when_calling_thread_ends():
    seen = {}

    async def leave_a_task_running():
        seen["task"] = asyncio.create_task(asyncio.sleep(3600))
        seen["loop_thread"] = threading.current_thread()

    async def check_task_still_running():
        return seen["task"].done()

    def in_new_thread():
        async_to_sync(leave_a_task_running)()
        return async_to_sync(check_task_still_running)()

    thread = threading.Thread(target=lambda: seen.setdefault("done", in_new_thread()))
    thread.start()
    thread.join(WAIT)
    assert seen["done"] is False  # the task outlived its call, on the persistent loop
    seen["loop_thread"].join(WAIT)
    assert not seen["loop_thread"].is_alive()
    assert seen["task"].cancelled()  # cancelled when the loop stopped


def test_runtime_shutdown_stops_loop_threads():
    def in_new_thread():
        first = async_to_sync(_loop_and_thread)()
        runtime.shutdown()
        second = async_to_sync(_loop_and_thread)()
        return first, second

    with ThreadPoolExecutor(1) as pool:
        (loop1, thread1), (loop2, _) = pool.submit(in_new_thread).result(WAIT)
    assert not thread1.is_alive() and loop1.is_closed()
    assert loop2 is not loop1
    assert asyncio.run(sync_to_async(lambda: "works after shutdown")()) == "works after shutdown"


def test_tasks_created_by_the_coroutine_can_use_thread_sensitive_calls():
    async def inner():
        return asyncio.create_task(sync_to_async(threading.current_thread)())

    async def main():
        task = await sync_to_async(async_to_sync(inner))()
        return await task

    assert async_to_sync(main)() is threading.current_thread()


# --- wrapping -------------------------------------------------------------------------------------------


def test_decorator_forms_and_metadata():
    @sync_to_async
    def plain_sync(x):
        """Doc of plain_sync."""
        return x + 1

    @sync_to_async(thread_sensitive=False)
    def configured_sync(x):
        return x + 2

    @async_to_sync
    async def plain_async(x):
        """Doc of plain_async."""
        return x + 3

    @async_to_sync(force_new_loop=True)
    async def configured_async(x):
        return x + 4

    assert plain_sync.__name__ == "plain_sync" and plain_sync.__doc__ == "Doc of plain_sync."
    assert plain_async.__name__ == "plain_async" and plain_async.__doc__ == "Doc of plain_async."
    assert isinstance(plain_sync, SyncToAsync) and isinstance(plain_async, AsyncToSync)
    assert iscoroutinefunction(plain_sync) and iscoroutinefunction(configured_sync)
    assert not iscoroutinefunction(plain_async)
    assert asyncio.run(plain_sync(1)) == 2
    assert asyncio.run(configured_sync(1)) == 3
    assert plain_async(1) == 4
    assert configured_async(1) == 5


def test_methods_and_bound_methods():
    class Thing:
        def __init__(self, n):
            self.n = n

        @sync_to_async
        def sync_method(self, x):
            return self.n + x

        @async_to_sync
        async def async_method(self, x):
            await asyncio.sleep(0)
            return self.n * x

        def plain(self):
            return self.n

        async def coroutine(self):
            return -self.n

    thing = Thing(10)
    assert asyncio.run(thing.sync_method(5)) == 15
    assert thing.async_method(3) == 30
    wrapped_sync = sync_to_async(thing.plain)
    wrapped_async = async_to_sync(thing.coroutine)
    assert wrapped_sync.__self__ is thing and wrapped_async.__self__ is thing
    assert asyncio.run(wrapped_sync()) == 10
    assert wrapped_async() == -10
    assert isinstance(Thing.sync_method, SyncToAsync)  # accessed on the class: unbound


def test_keyword_arguments_named_like_internals_pass_through():
    @sync_to_async
    def sync_kwargs(**kwargs):
        return kwargs

    @async_to_sync
    async def async_kwargs(**kwargs):
        return kwargs

    names = {"context": 1, "loop": 2, "executor": 3, "call": 4, "self": 5, "func": 6}
    assert asyncio.run(sync_kwargs(**names)) == names
    assert async_kwargs(**names) == names


# --- fork safety ----------------------------------------------------------------------------------------


def _wait_child(pid: int) -> int:
    """Exit status of a child, waited on for at most WAIT seconds (then killed)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("forked child did not finish: bridging hung after fork")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_fresh_threads_and_loops():
    # Start everything in the parent first, so that the child inherits stale state.
    parent_sensitive = asyncio.run(sync_to_async(threading.current_thread)())
    parent_pool = asyncio.run(sync_to_async(threading.current_thread, thread_sensitive=False)())
    parent_loop, parent_loop_thread = async_to_sync(_loop_and_thread)()

    pid = os.fork()
    if pid == 0:  # child: report through the exit code only, never return into pytest
        code = 1
        try:
            sensitive = asyncio.run(sync_to_async(threading.current_thread)())
            pool = asyncio.run(sync_to_async(threading.current_thread, thread_sensitive=False)())
            loop, loop_thread = async_to_sync(_loop_and_thread)()
            alive = threading.enumerate()
            ok = (
                sensitive is not parent_sensitive and sensitive in alive
                and pool is not parent_pool and pool in alive
                and loop is not parent_loop and loop_thread is not parent_loop_thread and loop_thread in alive
            )  # fmt: skip
            code = 0 if ok else 2
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0


def _fork_and_check_bridges() -> int:
    """Fork here; the child must be able to use both bridges (exit code 0). Returns the child's status."""

    async def answer():
        return 42

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # This thread's context still describes the parent's calls (its loop, its blocked threads):
            # the child must ignore all of it rather than wait on threads that do not exist here.
            from_async = async_to_sync(answer)()
            from_sync = asyncio.run(sync_to_async(lambda: 42)())
            code = 0 if from_async == from_sync == 42 else 2
        finally:
            os._exit(code)
    return _wait_child(pid)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_inside_sync_to_async_child_can_use_both_bridges():
    async def main():
        sensitive = await sync_to_async(_fork_and_check_bridges)()
        other = await sync_to_async(_fork_and_check_bridges, thread_sensitive=False)()
        return sensitive, other

    assert asyncio.run(main()) == (0, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_inside_async_to_sync_child_can_use_both_bridges():
    async def main():
        # Thread-sensitive: runs on this (calling) thread, parked in async_to_sync in the parent.
        return await sync_to_async(_fork_and_check_bridges)()

    def in_context():
        async def in_thread_sensitive_context():
            async with ThreadSensitiveContext():
                return await sync_to_async(_fork_and_check_bridges)()

        return async_to_sync(main)(), async_to_sync(in_thread_sensitive_context)()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(in_context).result(WAIT * 3) == (0, 0)
