import asyncio
import sys
import warnings

import pytest

from corral.shared.timeout import timeout as _deprecated_timeout


def timeout(*args, **kwargs):
    """The deprecated `timeout` (as asgiref 3.13's): checks the warning, then returns the timeout."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = _deprecated_timeout(*args, **kwargs)
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert any("Use asyncio.timeout() instead" in m for m in messages), messages
    if "loop" in kwargs:
        assert any("loop argument" in m for m in messages), messages
    return made


def test_expiry_raises_timeout_error():
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            async with timeout(0.01) as t:
                await asyncio.sleep(30)
        assert t.expired
        assert t.remaining == 0.0

    asyncio.run(main())


def test_zero_or_negative_delay_expires_at_the_next_await():
    async def main():
        for delay in (0, -1):
            with pytest.raises(asyncio.TimeoutError):
                async with timeout(delay):
                    await asyncio.sleep(30)

    asyncio.run(main())


def test_block_finishing_in_time_passes():
    async def main():
        async with timeout(30) as t:
            assert 0 < t.remaining <= 30
            await asyncio.sleep(0)
            result = "done"
        assert result == "done"
        assert not t.expired
        # The deadline was withdrawn: nothing cancels the task later.
        await asyncio.sleep(0)

    asyncio.run(main())


def test_none_disables_the_timeout():
    async def main():
        async with timeout(None) as t:
            await asyncio.sleep(0)
        assert t.remaining is None
        assert not t.expired

    asyncio.run(main())


def test_plain_with_inside_a_task_and_explicit_loop():
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(asyncio.TimeoutError):
            with timeout(0.01, loop=loop):
                await asyncio.sleep(30)
        with timeout(30, loop=loop) as t:
            await asyncio.sleep(0)
        assert not t.expired

    asyncio.run(main())


def test_outer_cancellation_propagates_as_cancelled_error():
    async def main():
        entered = asyncio.Event()
        seen = []

        async def body():
            try:
                async with timeout(30):
                    entered.set()
                    await asyncio.sleep(30)
            except BaseException as exc:
                seen.append(type(exc))
                raise

        task = asyncio.create_task(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [asyncio.CancelledError]

    asyncio.run(main())


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="needs Task.cancelling()/uncancel() (3.11+): on 3.10 two cancel requests in one loop iteration reach "
    "the task as one CancelledError, so which was the timeout's cannot be told (documented in corral.shared.timeout)",
)
def test_outer_cancellation_racing_the_expiry_is_not_swallowed():
    async def main():
        seen = []

        async def body():
            try:
                async with timeout(0) as t:
                    # A cancellation from elsewhere arrives in the same loop iteration as our expiry.
                    asyncio.current_task().cancel()
                    await asyncio.sleep(30)
            except BaseException as exc:
                seen.append((type(exc), t.expired))
                raise

        task = asyncio.create_task(body())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [(asyncio.CancelledError, True)]

    asyncio.run(main())


def test_timeout_inside_cancelled_scope_leaves_task_usable():
    async def main():
        # After a handled timeout the task carries no leftover cancellation request.
        with pytest.raises(asyncio.TimeoutError):
            async with timeout(0.01):
                await asyncio.sleep(30)
        task = asyncio.current_task()
        if hasattr(task, "cancelling"):
            assert task.cancelling() == 0
        await asyncio.sleep(0.001)
        return "still running"

    assert asyncio.run(main()) == "still running"


def test_requires_a_task():
    loop = asyncio.new_event_loop()
    try:
        t = timeout(1, loop=loop)
        with pytest.raises(RuntimeError):
            t.__enter__()
    finally:
        loop.close()
