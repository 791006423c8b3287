"""StatelessServer: the asgiref API and semantics, with its pool faults fixed and backpressure added."""

from __future__ import annotations

import asyncio
import logging

import pytest

from corral.worker.app.pool import PoolFull, StatelessServer

WAIT = 5.0  # bound on every wait: generous for a busy 2-core machine, never reached when things work


class RecordingServer(StatelessServer):
    """A server whose handle() runs a scenario coroutine and records what the pool reports."""

    def __init__(self, application, scenario=None, **kwargs):
        super().__init__(application, **kwargs)
        self.scenario = scenario
        self.sent: list[tuple[dict, dict]] = []
        self.exceptions: list[tuple[BaseException, object]] = []
        self.reported = asyncio.Event()
        self.freed = 0
        self.max_seen = 0

    async def handle(self):
        await self.scenario(self)

    async def application_send(self, scope, message):
        self.sent.append((scope, message))

    async def application_exception(self, exception, application_details):
        self.exceptions.append((exception, application_details))
        self.reported.set()

    def slot_freed(self):
        self.freed += 1


async def echo_app(scope, receive, send):
    """Echoes each message it receives back through send until told to stop."""
    while True:
        message = await receive()
        if message.get("type") == "stop":
            return
        await send({"type": "echo", "value": message.get("value")})


def run(server: StatelessServer) -> None:
    asyncio.run(asyncio.wait_for(server.arun(), WAIT * 4))


async def until(predicate, timeout: float = WAIT) -> None:
    """Wait for a condition on the event loop, yielding between checks; fails after `timeout`."""

    async def poll():
        while not predicate():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout)


def test_same_scope_id_returns_same_queue_and_messages_reach_the_instance():
    async def scenario(server):
        q1 = server.get_or_create_application_instance("a", {"type": "test"})
        q2 = server.get_or_create_application_instance("a", {"type": "test"})
        q3 = server.get_or_create_application_instance("b", {"type": "test"})
        assert q1 is q2
        assert q1 is not q3
        assert list(server.application_instances) == ["a", "b"]
        q1.put_nowait({"type": "msg", "value": 1})
        q3.put_nowait({"type": "msg", "value": 2})
        await until(lambda: len(server.sent) == 2)
        assert sorted(m["value"] for _, m in server.sent) == [1, 2]
        # asgiref's dict keys still work on the records
        record = server.application_instances["a"]
        assert record["input_queue"] is q1
        assert record["scope"] == {"type": "test"}
        assert not record["future"].done()
        assert isinstance(record["last_used"], float)
        q1.put_nowait({"type": "stop"})
        q3.put_nowait({"type": "stop"})
        await until(lambda: not server.application_instances)

    server = RecordingServer(echo_app, scenario)
    run(server)
    assert server.exceptions == []


def test_lru_eviction_happens_exactly_at_the_limit_and_never_exceeds_it():
    started: list[str] = []

    async def app(scope, receive, send):
        started.append(scope["name"])
        server.max_seen = max(server.max_seen, len(server.application_instances))
        await receive()

    async def scenario(server):
        for name in "abc":
            server.get_or_create_application_instance(name, {"type": "test", "name": name})
        await until(lambda: len(started) == 3)
        assert len(server.application_instances) == 3
        # Touch "a": "b" becomes the least recently used.
        server.get_or_create_application_instance("a", {"type": "test", "name": "a"})
        b_future = server.application_instances["b"].future
        server.get_or_create_application_instance("d", {"type": "test", "name": "d"})
        assert list(server.application_instances) == ["c", "a", "d"]
        assert len(server.application_instances) == 3
        await until(b_future.done)
        assert b_future.cancelled()
        await until(lambda: "d" in started)
        for name in ("c", "a", "d"):
            server.get_or_create_application_instance(name, {}).put_nowait({"type": "stop"})
        await until(lambda: not server.application_instances)

    server = RecordingServer(app, scenario, max_applications=3)
    run(server)
    assert server.max_seen <= 3
    assert server.exceptions == []  # an eviction is not an application error


def test_instance_that_raises_is_reported_with_its_details_and_removed(caplog):
    class Boom(Exception):
        pass

    async def app(scope, receive, send):
        await receive()
        raise Boom("bad things")

    async def scenario(server):
        server.get_or_create_application_instance("x", {"type": "http", "path": "/boom"}).put_nowait({})
        await asyncio.wait_for(server.reported.wait(), WAIT)
        assert "x" not in server.application_instances

    server = RecordingServer(app, scenario)
    run(server)
    [(exception, details)] = server.exceptions
    assert isinstance(exception, Boom)
    assert details["scope"]["path"] == "/boom"


def test_default_application_exception_logs_through_named_logger_with_scope(caplog):
    async def app(scope, receive, send):
        raise ValueError("nope")

    class Server(StatelessServer):
        async def handle(self):
            self.get_or_create_application_instance("req-1", {"type": "http", "method": "GET", "path": "/p"})
            await until(lambda: any(r.name == "corral.worker.stateless" for r in caplog.records))

    caplog.set_level(logging.ERROR, logger="corral.worker.stateless")
    run(Server(app))
    [record] = [r for r in caplog.records if r.name == "corral.worker.stateless"]
    assert "req-1" in record.getMessage()
    assert "GET /p" in record.getMessage()
    assert record.exc_info[0] is ValueError


def test_cancelled_instance_is_cleaned_up_and_checker_survives():
    async def app(scope, receive, send):
        message = await receive()
        if message.get("raise"):
            raise RuntimeError("after a cancellation")

    async def scenario(server):
        server.get_or_create_application_instance("victim", {"type": "test"})
        victim = server.application_instances["victim"].future
        await asyncio.sleep(0)
        victim.cancel()
        await until(lambda: "victim" not in server.application_instances)
        # The checker must still be alive to report the next failure.
        server.get_or_create_application_instance("raiser", {"type": "test"}).put_nowait({"raise": True})
        await asyncio.wait_for(server.reported.wait(), WAIT)

    server = RecordingServer(app, scenario)
    run(server)
    [(exception, _)] = server.exceptions
    assert isinstance(exception, RuntimeError)


def test_run_starts_the_checker_and_stops_cleanly_cancelling_live_instances():
    cancelled = []

    async def app(scope, receive, send):
        try:
            await receive()
        except asyncio.CancelledError:
            cancelled.append(scope["n"])
            raise

    class Server(RecordingServer):
        async def handle(self):
            assert self._checker_task is not None and not self._checker_task.done()
            self.checker = self._checker_task
            for n in range(3):
                self.get_or_create_application_instance(n, {"type": "test", "n": n})
            await asyncio.sleep(0)

    server = Server(app)
    server.run()  # its own loop, closed afterwards
    assert server.checker.done()
    assert sorted(cancelled) == [0, 1, 2]
    assert not server.application_instances
    assert server.exceptions == []


def test_asgi2_application_is_wrapped():
    class Asgi2App:
        def __init__(self, scope):
            self.scope = scope

        async def __call__(self, receive, send):
            await send({"type": "hello", "path": self.scope["path"]})

    async def scenario(server):
        server.get_or_create_application_instance("x", {"type": "http", "path": "/two"})
        await until(lambda: server.sent)

    server = RecordingServer(Asgi2App, scenario)
    run(server)
    [(_scope, message)] = server.sent
    assert message == {"type": "hello", "path": "/two"}


class BackpressureServer(RecordingServer):
    evict_when_full = False


def test_backpressure_mode_refuses_instead_of_evicting_and_wakes_waiters():
    async def app(scope, receive, send):
        await receive()

    async def scenario(server):
        q1 = server.get_or_create_application_instance(1, {"type": "test"})
        server.get_or_create_application_instance(2, {"type": "test"})
        assert server.pool_full
        with pytest.raises(PoolFull):
            server.get_or_create_application_instance(3, {"type": "test"})
        assert list(server.application_instances) == [1, 2]  # nobody was evicted
        waiter = asyncio.ensure_future(server.wait_for_slot())
        await asyncio.sleep(0)
        assert not waiter.done()
        q1.put_nowait({"type": "done"})  # instance 1 finishes: one slot frees
        await asyncio.wait_for(waiter, WAIT)
        assert server.freed == 1
        server.get_or_create_application_instance(3, {"type": "test"})
        assert list(server.application_instances) == [2, 3]
        for scope_id in (2, 3):
            server.get_or_create_application_instance(scope_id, {}).put_nowait({})
        await until(lambda: not server.application_instances)

    server = BackpressureServer(app, scenario, max_applications=2)
    run(server)
    assert server.exceptions == []


def test_start_instance_is_the_queue_free_path_and_counts_against_the_limit():
    async def scenario(server):
        gate = asyncio.Event()
        received = []

        async def receive():
            await gate.wait()
            return {"type": "go"}

        async def send(message):
            received.append(message)

        async def app(scope, receive, send):
            await send(await receive())

        server.application = app
        t1 = server.start_instance(1, {"type": "http"}, receive, send)
        server.start_instance(2, {"type": "http"}, receive, send)
        with pytest.raises(PoolFull):
            server.start_instance(3, {"type": "http"}, receive, send)
        with pytest.raises(KeyError):
            server.start_instance(1, {"type": "http"}, receive, send)
        gate.set()
        await asyncio.wait_for(t1, WAIT)
        await until(lambda: not server.application_instances)
        assert received == [{"type": "go"}, {"type": "go"}]

    server = BackpressureServer(None, scenario, max_applications=2)
    run(server)


def test_limit_changes_live():
    async def app(scope, receive, send):
        await receive()

    async def scenario(server):
        for n in range(4):
            server.get_or_create_application_instance(n, {"type": "test"})
        server.max_applications = 2  # evicting server: the two oldest go at once
        assert list(server.application_instances) == [2, 3]
        with pytest.raises(ValueError):
            server.max_applications = 0
        for n in (2, 3):
            server.get_or_create_application_instance(n, {}).put_nowait({})
        await until(lambda: not server.application_instances)

    run(RecordingServer(app, scenario, max_applications=4))

    async def scenario_bp(server):
        server.get_or_create_application_instance(1, {"type": "test"})
        waiter = asyncio.ensure_future(server.wait_for_slot())
        await asyncio.sleep(0)
        assert not waiter.done()
        server.max_applications = 2  # raising the limit frees room without any instance finishing
        await asyncio.wait_for(waiter, WAIT)
        server.get_or_create_application_instance(1, {}).put_nowait({})
        await until(lambda: not server.application_instances)

    run(BackpressureServer(app, scenario_bp, max_applications=1))


def test_base_class_methods_must_be_implemented():
    server = StatelessServer(echo_app)
    with pytest.raises(NotImplementedError):
        asyncio.run(server.handle())
    with pytest.raises(NotImplementedError):
        asyncio.run(server.application_send({}, {}))
    with pytest.raises(ValueError):
        StatelessServer(echo_app, max_applications=0)
