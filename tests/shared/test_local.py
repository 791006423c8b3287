"""Local: isolation between threads and tasks, and travel across the sync/async bridges."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from corral.shared.local import Local
from corral.shared.sync import async_to_sync, sync_to_async

WAIT = 10


def _run_thread(fn) -> dict:
    """Run fn in a new thread and return what it put in the shared dict (errors re-raised here)."""
    box: dict = {}

    def target():
        try:
            fn(box)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box


def test_set_get_delete():
    local = Local()
    with pytest.raises(AttributeError):
        local.foo  # noqa: B018 - reading it is the test
    local.foo = 1
    assert local.foo == 1
    del local.foo
    with pytest.raises(AttributeError):
        local.foo  # noqa: B018 - reading it is the test
    with pytest.raises(AttributeError):
        del local.foo


def test_reserved_names_cannot_be_set():
    local = Local()
    with pytest.raises(AttributeError):
        local._corral_var = 1


@pytest.mark.parametrize("critical", [False, True])
def test_threads_do_not_see_each_others_values(critical):
    local = Local(thread_critical=critical)
    local.value = "main"

    def child(box):
        box["had_value"] = hasattr(local, "value")
        local.value = "child"
        box["child_value"] = local.value

    box = _run_thread(child)
    assert box == {"had_value": False, "child_value": "child"}
    assert local.value == "main"


def test_context_copied_into_another_thread_does_not_expose_values():
    # As with Python 3.14's thread_inherit_context: a copied context alone does not make data visible.
    local = Local()
    local.value = "parent"
    ctx = contextvars.copy_context()

    def child(box):
        def inner():
            box["had_value"] = hasattr(local, "value")
            local.value = "child"
            box["child_value"] = local.value

        ctx.run(inner)

    box = _run_thread(child)
    assert box == {"had_value": False, "child_value": "child"}
    assert local.value == "parent"


def test_concurrent_tasks_are_isolated():
    local = Local()

    async def worker(name, mine_set, other_set, seen):
        local.value = name
        mine_set.set()
        await other_set.wait()  # the other task has set its value by now
        seen[name] = local.value

    async def main():
        local.value = "parent"
        a_set, b_set = asyncio.Event(), asyncio.Event()
        seen: dict = {}
        await asyncio.gather(worker("a", a_set, b_set, seen), worker("b", b_set, a_set, seen))
        return seen, local.value

    seen, parent_value = asyncio.run(main())
    assert seen == {"a": "a", "b": "b"}
    assert parent_value == "parent"


def test_child_task_inherits_but_does_not_leak_back():
    local = Local()

    async def child():
        assert local.value == 1
        local.value = 2
        del local.other

    async def main():
        local.value = 1
        local.other = "x"
        await asyncio.create_task(child())
        return local.value, local.other

    assert asyncio.run(main()) == (1, "x")


def test_sync_to_async_sees_and_returns_values():
    local = Local()

    def sync_function():
        assert local.foo == 3
        local.foo = "changed in sync"

    async def main():
        local.foo = 3
        await sync_to_async(sync_function)()
        return local.foo

    assert asyncio.run(main()) == "changed in sync"


def test_sync_to_async_not_thread_sensitive_sees_and_returns_values():
    local = Local()

    def sync_function():
        assert local.foo == 3
        local.foo = 4

    async def main():
        local.foo = 3
        await sync_to_async(sync_function, thread_sensitive=False)()
        return local.foo

    assert asyncio.run(main()) == 4


def test_async_to_sync_sees_and_returns_values():
    local = Local()
    local.foo = 12

    async def async_function():
        assert local.foo == 12
        local.foo = "inside"

    async_to_sync(async_function)()
    assert local.foo == "inside"


def test_values_cross_many_layers():
    local = Local()

    def sync_1():
        async def async_2():
            def sync_3():
                async def async_4():
                    assert local.foo == 8374
                    local.foo = "miracles"

                async_to_sync(async_4)()

            await sync_to_async(sync_3)()

        async_to_sync(async_2)()

    async def main():
        local.foo = 8374
        await sync_to_async(sync_1)()
        return local.foo

    assert asyncio.run(main()) == "miracles"


def test_thread_critical_does_not_cross_sync_to_async():
    local = Local(thread_critical=True)

    def sync_function():
        assert not hasattr(local, "foo")
        local.foo = "secret"
        assert local.foo == "secret"
        del local.foo
        with pytest.raises(AttributeError):
            del local.foo

    async def main():
        local.foo = 86
        await sync_to_async(sync_function)()
        return local.foo

    assert asyncio.run(main()) == 86


def test_thread_critical_does_not_cross_async_to_sync():
    local = Local(thread_critical=True)
    local.foo = 89

    async def async_function():
        assert not hasattr(local, "foo")
        local.foo = "numbers"
        assert local.foo == "numbers"

    async_to_sync(async_function)()
    async_to_sync(async_function)()  # the first call's value did not stay behind on the loop either
    assert local.foo == 89


def test_thread_critical_is_task_local_in_async_code():
    local = Local(thread_critical=True)

    async def child():
        assert local.foo == 1
        local.foo = 2

    async def main():
        local.foo = 1
        await asyncio.create_task(child())
        return local.foo

    assert asyncio.run(main()) == 1


def test_thread_critical_set_in_sync_code_is_seen_by_the_whole_sync_thread():
    critical = Local(thread_critical=True)
    plain = Local()
    this_thread = threading.current_thread()

    @sync_to_async
    def inner():
        assert threading.current_thread() is this_thread  # thread-sensitive, outermost is sync
        critical.value = "_123_"
        plain.value = "_456_"

    @async_to_sync
    async def outer():
        await asyncio.create_task(inner())

    outer()
    assert critical.value == "_123_"
    # The plain value was set in a task's copy of the context, which does not flow back up.
    assert not hasattr(plain, "value")
