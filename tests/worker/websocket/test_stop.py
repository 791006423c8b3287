"""WebSockets on a real in-process worker: the instance pool, graceful stop and open-socket stats.

Every wait is bounded; no test asserts on timings (timeouts are set short and waited for with margins).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import struct
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from corral.shared.settings import Settings
from corral.worker.serve.testing import call_in_loop, run_server
from websocket_helpers import WAIT, RawClient, echo_app, masked, url

# ---------------------------------------------------------------------------- the pool


def test_each_websocket_is_an_instance_in_the_pool_and_waits_for_a_slot():
    with run_server(echo_app(), Settings(max_applications=1)) as (host, port, server):
        with connect(url(host, port)) as first:
            first.send("one")
            assert first.recv(WAIT) == "one"
            assert server.stats()["instances"] == 1
            result: queue.Queue[Any] = queue.Queue()

            def second() -> None:
                with connect(url(host, port), open_timeout=WAIT) as ws:
                    ws.send("two")
                    result.put(ws.recv(WAIT))

            thread = threading.Thread(target=second)
            thread.start()
            deadline = time.monotonic() + WAIT
            while call_in_loop(server, lambda: len(server.parked)) == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert result.get(timeout=WAIT) == "two"
        thread.join(WAIT)


def test_pool_full_503_mode_refuses_the_upgrade():
    with run_server(echo_app(), Settings(max_applications=1, pool_full="503")) as (host, port, _):
        with connect(url(host, port)) as first:
            first.send("one")
            assert first.recv(WAIT) == "one"
            with pytest.raises(InvalidStatus) as info:
                connect(url(host, port))
            assert info.value.response.status_code == 503


def test_500_concurrent_sockets_on_one_worker():
    from websockets.asyncio.client import connect as aconnect

    async def main(host: str, port: int) -> None:
        sockets = await asyncio.gather(*(aconnect(url(host, port), compression=None) for _ in range(500)))
        try:
            await asyncio.gather(*(ws.send(f"n{i}") for i, ws in enumerate(sockets)))
            answers = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 30) for ws in sockets))
            assert answers == [f"n{i}" for i in range(500)]
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))

    with run_server(echo_app(), Settings(backlog=1024)) as (host, port, server):
        asyncio.run(main(host, port))
        deadline = time.monotonic() + WAIT
        while call_in_loop(server, lambda: server.stats()["instances"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)


# ---------------------------------------------------------------------------- stopping


def test_graceful_stop_closes_open_sockets_with_1001_after_the_disconnect(events):
    with contextlib.ExitStack() as clients:
        sockets = []
        with run_server(echo_app(events), Settings(graceful_timeout=10), graceful_exit=True, stop_timeout=WAIT) as (
            host,
            port,
            _server,
        ):
            for _ in range(50):
                ws = clients.enter_context(connect(url(host, port)))
                ws.send("hi")
                assert ws.recv(WAIT) == "hi"
                sockets.append(ws)
            started = time.monotonic()
        assert time.monotonic() - started < 5  # nowhere near the 10 s graceful timeout
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(WAIT)
            assert info.value.rcvd.code == 1001
    codes = {events.get(timeout=WAIT)["code"] for _ in range(50)}
    assert codes == {1001}


def test_stop_with_a_client_that_never_answers_the_close_is_bounded():
    with run_server(echo_app(), Settings(graceful_timeout=0.5), graceful_exit=True, stop_timeout=WAIT) as (
        host,
        port,
        _,
    ):
        client = RawClient(host, port)  # reads nothing, answers nothing
        started = time.monotonic()
    assert time.monotonic() - started < WAIT
    client.close()


def test_app_that_ignores_the_disconnect_is_cancelled_at_the_graceful_timeout():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(3600)

    with run_server(app, Settings(graceful_timeout=0.5), graceful_exit=True, stop_timeout=WAIT) as (host, port, _):
        with connect(url(host, port)) as ws:
            ws.ping().wait(WAIT)  # open and answering; the stop must still end (run_server bounds it)


def test_graceful_stop_lets_the_app_finish_handling_its_disconnect():
    done: queue.Queue[str] = queue.Queue()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message["type"] == "websocket.disconnect" and message["code"] == 1001
        await asyncio.sleep(0.3)  # cleanup after the disconnect (a database write, a group leave...)
        done.put("cleaned up")

    with run_server(app, Settings(graceful_timeout=10), graceful_exit=True, stop_timeout=WAIT) as (host, port, _):
        ws = RawClient(host, port)
        stopping = threading.Thread(target=lambda: (ws.close_code(), ws.send(masked(0x8, struct.pack("!H", 1001)))))
        stopping.start()
    stopping.join(WAIT)
    assert done.get_nowait() == "cleaned up"  # before the server had stopped
    ws.close()


def test_app_slower_than_the_graceful_timeout_after_its_disconnect_is_cancelled():
    cancelled: queue.Queue[str] = queue.Queue()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await receive()  # the disconnect
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.put("cancelled")
            raise

    with run_server(app, Settings(graceful_timeout=0.3), graceful_exit=True, stop_timeout=WAIT) as (host, port, _):
        with connect(url(host, port)):
            pass
    assert cancelled.get(timeout=WAIT) == "cancelled"


def test_per_message_deflate_can_be_turned_off_and_stats_count_open_sockets():
    with run_server(echo_app(), Settings(ws_per_message_deflate=False)) as (host, port, server):
        with connect(url(host, port), compression="deflate") as ws:
            assert "sec-websocket-extensions" not in ws.response.headers
            ws.send(b"plain")
            assert ws.recv(WAIT) == b"plain"
            stats = call_in_loop(server, server.stats)
            assert stats["websockets"] == 1 and stats["instances"] == 1
