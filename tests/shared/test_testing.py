import asyncio
import contextvars

import pytest

from corral.shared.testing import ApplicationCommunicator

request_id = contextvars.ContextVar("request_id", default=None)


async def echo_app(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "stop":
            return
        await send({"type": "echo", "value": message["value"] * 2, "path": scope["path"]})


async def failing_app(scope, receive, send):
    await receive()
    raise ValueError("boom")


async def silent_app(scope, receive, send):
    await asyncio.sleep(30)


def test_round_trip():
    async def main():
        comm = ApplicationCommunicator(echo_app, {"type": "test", "path": "/x"})
        await comm.send_input({"type": "in", "value": 2})
        assert await comm.receive_output() == {"type": "echo", "value": 4, "path": "/x"}
        await comm.send_input({"type": "in", "value": 5})
        assert (await comm.receive_output())["value"] == 10
        assert await comm.receive_nothing(timeout=0.01, interval=0.005)
        await comm.send_input({"type": "stop"})
        await comm.wait()
        comm.stop()  # finished cleanly: nothing to raise

    asyncio.run(main())


def test_receive_nothing_sees_pending_output():
    async def main():
        comm = ApplicationCommunicator(echo_app, {"type": "test", "path": "/"})
        await comm.send_input({"type": "in", "value": 1})
        # Output may take a loop iteration to appear; once it is there receive_nothing reports it.
        await asyncio.wait_for(_until(lambda: not comm.output_queue.empty()), 5)
        assert await comm.receive_nothing() is False
        comm.stop()

    asyncio.run(main())


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0)


def test_application_exception_is_reraised_from_receive_output():
    async def main():
        comm = ApplicationCommunicator(failing_app, {"type": "test"})
        await comm.send_input({"type": "go"})
        with pytest.raises(ValueError, match="boom"):
            await comm.receive_output(timeout=5)

    asyncio.run(main())


def test_application_exception_is_reraised_from_wait_and_stop():
    async def main():
        comm = ApplicationCommunicator(failing_app, {"type": "test"})
        await comm.send_input({"type": "go"})
        with pytest.raises(ValueError):
            await comm.wait(timeout=5)
        with pytest.raises(ValueError):
            comm.stop()
        comm.stop(exceptions=False)

    asyncio.run(main())


def test_receive_output_timeout_cancels_application():
    async def main():
        comm = ApplicationCommunicator(silent_app, {"type": "test"})
        with pytest.raises(asyncio.TimeoutError):
            await comm.receive_output(timeout=0.01)
        assert comm.future.cancelled()

    asyncio.run(main())


def test_wait_timeout_cancels_application_like_asgiref():
    async def main():
        comm = ApplicationCommunicator(silent_app, {"type": "test"})
        await comm.wait(timeout=0.01)
        assert comm.future.cancelled()

    asyncio.run(main())


def test_asgi2_application_and_fresh_context():
    class Asgi2:
        def __init__(self, scope):
            self.scope = scope

        async def __call__(self, receive, send):
            await send({"type": "ctx", "request_id": request_id.get()})

    async def main():
        request_id.set("from-test")
        comm = ApplicationCommunicator(Asgi2, {"type": "test"})
        assert await comm.receive_output() == {"type": "ctx", "request_id": None}
        await comm.wait()

    asyncio.run(main())
