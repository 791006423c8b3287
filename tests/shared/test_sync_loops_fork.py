"""sync_to_async / async_to_sync: event loops, wrapping and fork safety."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.shared import runtime
from corral.shared.sync import (
    AsyncToSync,
    SyncToAsync,
    ThreadSensitiveContext,
    async_to_sync,
    iscoroutinefunction,
    sync_to_async,
)
from sync_helpers import WAIT

#: The fork tests fork a process with threads on purpose (the runtime's threads must not leak into the
#: child); Python 3.12+ warns about exactly that.
forks_with_threads = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)

# --- loops ----------------------------------------------------------------------------------------------


async def _loop_and_thread():
    return asyncio.get_running_loop(), threading.current_thread()


def test_async_to_sync_reuses_a_loop_per_calling_thread():
    def in_new_thread():
        return async_to_sync(_loop_and_thread)(), async_to_sync(_loop_and_thread)()

    with ThreadPoolExecutor(2) as pool:
        (loop1, thread1), (loop2, thread2) = pool.submit(in_new_thread).result(WAIT)
        (_loop3, _), _ = pool.submit(in_new_thread).result(WAIT)
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
@forks_with_threads
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
@forks_with_threads
def test_fork_inside_sync_to_async_child_can_use_both_bridges():
    async def main():
        sensitive = await sync_to_async(_fork_and_check_bridges)()
        other = await sync_to_async(_fork_and_check_bridges, thread_sensitive=False)()
        return sensitive, other

    assert asyncio.run(main()) == (0, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@forks_with_threads
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
