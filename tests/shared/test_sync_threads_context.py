"""sync_to_async / async_to_sync: thread identity and context variables."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.shared.sync import AsyncSingleThreadContext, ThreadSensitiveContext, async_to_sync, sync_to_async
from sync_helpers import WAIT, var

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
