import asyncio
import contextlib
import logging

import pytest

from corral.worker.app.lifespan import Lifespan, LifespanFailure


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class Recorder:
    """A lifespan app that records what happened and answers as told."""

    def __init__(self, startup="complete", shutdown="complete"):
        self.startup = startup
        self.shutdown = shutdown
        self.events = []

    async def __call__(self, scope, receive, send):
        assert scope["type"] == "lifespan"
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.0"}
        message = await receive()
        assert message["type"] == "lifespan.startup"
        self.events.append("startup")
        scope["state"]["db"] = "connected"
        if self.startup == "failed":
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        self.events.append("shutdown")
        if self.shutdown == "failed":
            await send({"type": "lifespan.shutdown.failed", "message": "could not flush"})
        else:
            await send({"type": "lifespan.shutdown.complete"})


def test_startup_and_shutdown_complete():
    app = Recorder()
    lifespan = Lifespan(app, "auto")

    async def main():
        await lifespan.startup()
        assert lifespan.running
        assert app.events == ["startup"]
        await lifespan.shutdown()
        assert not lifespan.running

    run(main())
    assert app.events == ["startup", "shutdown"]


def test_state_shared_with_app():
    app = Recorder()
    lifespan = Lifespan(app, "on")

    async def main():
        await lifespan.startup()
        assert lifespan.state == {"db": "connected"}
        assert lifespan.scope["state"] is lifespan.state
        await lifespan.shutdown()

    run(main())


def test_startup_failed_raises_with_message(caplog):
    lifespan = Lifespan(Recorder(startup="failed"), "auto", logging.getLogger("test.lifespan"))
    with pytest.raises(LifespanFailure) as info:
        run(lifespan.startup())
    assert info.value.message == "no database"
    assert not lifespan.running
    assert "no database" in caplog.text


async def raises_before_receive(scope, receive, send):
    raise ValueError("can only handle http, not lifespan")


async def returns_at_once(scope, receive, send):
    if scope["type"] != "http":
        return


@pytest.mark.parametrize("app", [raises_before_receive, returns_at_once])
def test_unsupported_app_in_auto_mode_continues(app, caplog):
    lifespan = Lifespan(app, "auto", logging.getLogger("test.lifespan"))

    async def main():
        with caplog.at_level(logging.INFO, logger="test.lifespan"):
            await lifespan.startup()
        assert not lifespan.running
        await lifespan.shutdown()  # nothing to do, must not hang

    run(main())
    assert "unsupported" in caplog.text


@pytest.mark.parametrize("app", [raises_before_receive, returns_at_once])
def test_unsupported_app_in_on_mode_fails(app):
    with pytest.raises(LifespanFailure):
        run(Lifespan(app, "on", logging.getLogger("test.lifespan")).startup())


def test_exception_after_receiving_startup_is_a_failure_even_in_auto():
    async def app(scope, receive, send):
        await receive()
        raise ConnectionError("database down")

    with pytest.raises(LifespanFailure) as info:
        run(Lifespan(app, "auto", logging.getLogger("test.lifespan")).startup())
    assert "database down" in info.value.message
    assert isinstance(info.value.__cause__, ConnectionError)


def test_mode_off_runs_nothing():
    app = Recorder()

    async def main():
        lifespan = Lifespan(app, "off")
        await lifespan.startup()
        await lifespan.shutdown()

    run(main())
    assert app.events == []


def test_bad_mode():
    with pytest.raises(ValueError):
        Lifespan(Recorder(), "sometimes")


def test_shutdown_failed_is_logged(caplog):
    lifespan = Lifespan(Recorder(shutdown="failed"), "on", logging.getLogger("test.lifespan"))

    async def main():
        await lifespan.startup()
        await lifespan.shutdown()

    run(main())
    assert "could not flush" in caplog.text


def test_shutdown_exception_is_logged(caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("boom in shutdown")

    lifespan = Lifespan(app, "on", logging.getLogger("test.lifespan"))

    async def main():
        await lifespan.startup()
        await lifespan.shutdown()

    run(main())
    assert "boom in shutdown" in caplog.text


def test_shutdown_timeout_is_bounded(caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.Event().wait()  # never answers shutdown

    lifespan = Lifespan(app, "on", logging.getLogger("test.lifespan"), shutdown_timeout=0.05)

    async def main():
        await lifespan.startup()
        await lifespan.shutdown()
        assert lifespan._task.done()

    run(main())
    assert "did not complete" in caplog.text


def test_startup_timeout():
    async def app(scope, receive, send):
        await receive()
        await asyncio.Event().wait()

    lifespan = Lifespan(app, "on", logging.getLogger("test.lifespan"), startup_timeout=0.05)
    with pytest.raises(LifespanFailure, match="within"):
        run(lifespan.startup())


def test_unexpected_message_type_is_a_failure():
    async def bogus(scope, receive, send):
        await receive()
        await send({"type": "http.response.start"})

    with pytest.raises(LifespanFailure, match="unexpected ASGI message"):
        run(Lifespan(bogus, "auto", logging.getLogger("test.lifespan")).startup())


def test_answer_sent_twice_is_an_app_error(caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.startup.complete"})

    lifespan = Lifespan(app, "on", logging.getLogger("test.lifespan"))

    async def main():
        await lifespan.startup()
        await lifespan.shutdown()  # the app task already died: logged, not hung

    run(main())
    assert "out of order" in caplog.text


def test_cancelled_startup_takes_the_app_down():
    async def app(scope, receive, send):
        await receive()
        await asyncio.Event().wait()

    lifespan = Lifespan(app, "on", logging.getLogger("test.lifespan"))

    async def main():
        starting = asyncio.ensure_future(lifespan.startup())
        await asyncio.sleep(0.01)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        assert lifespan._task.done()

    run(main())


def test_starlette_lifespan():
    pytest.importorskip("starlette")
    from starlette.applications import Starlette

    events = []

    @contextlib.asynccontextmanager
    async def lifespan_context(app):
        events.append("startup")
        yield {"pool": "ready"}
        events.append("shutdown")

    app = Starlette(lifespan=lifespan_context)
    lifespan = Lifespan(app, "on")

    async def main():
        await lifespan.startup()
        assert lifespan.state == {"pool": "ready"}
        await lifespan.shutdown()

    run(main())
    assert events == ["startup", "shutdown"]


def test_starlette_startup_error_is_failure():
    pytest.importorskip("starlette")
    from starlette.applications import Starlette

    @contextlib.asynccontextmanager
    async def lifespan_context(app):
        raise RuntimeError("cannot connect")
        yield  # pragma: no cover

    lifespan = Lifespan(Starlette(lifespan=lifespan_context), "auto", logging.getLogger("test.lifespan"))
    with pytest.raises(LifespanFailure, match="cannot connect"):
        run(lifespan.startup())
