"""WebSockets under a real `serve` master: stopping (TERM) and reloading (HUP) with sockets open.

Each open socket must be closed with 1001 (going away) after its application got `websocket.disconnect`,
and the stop must not hang: the worker finishes in about one round trip, far within the graceful timeout.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import textwrap
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from serve_harness import LIFESPAN, WAIT, Master, free_port, wait_until

WS_APP = """
import os, sys

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            print(f"disconnect {message['code']} in {os.getpid()}", flush=True)
            return
        await send({"type": "websocket.send", "text": str(os.getpid())})
"""

SOCKETS = 1000


@pytest.fixture
def ws_app(tmp_path):
    (tmp_path / "wsapp.py").write_text(LIFESPAN + textwrap.dedent(WS_APP))
    return tmp_path


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _open(port: int, count: int) -> list:
    sockets = []
    for start in range(0, count, 100):  # in batches: the backlog and a shared 2-core machine
        sockets += await asyncio.gather(
            *(
                connect(f"ws://127.0.0.1:{port}/", compression=None, open_timeout=WAIT, close_timeout=WAIT)
                for _ in range(start, min(count, start + 100))
            )
        )
    pids = set()
    for ws in sockets:
        await ws.send("pid?")
    for ws in sockets:
        pids.add(await asyncio.wait_for(ws.recv(), WAIT))
    return sockets, pids


async def _closed_codes(sockets: list) -> list[int | None]:
    async def code(ws) -> int | None:
        try:
            await asyncio.wait_for(ws.recv(), WAIT)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
        return None

    return await asyncio.gather(*(code(ws) for ws in sockets))


def test_stop_with_1000_open_sockets_closes_them_with_1001_and_does_not_hang(ws_app, tmp_path):
    _raise_fd_limit(SOCKETS * 2 + 256)
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(
        ["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "-w", "1", "--graceful-timeout", "60", "wsapp:app"],
        ws_app,
        port,
        pidfile,
    )
    try:
        master.wait_workers(1)

        async def scenario() -> tuple[list, float]:
            sockets, pids = await _open(port, SOCKETS)
            assert len(pids) == 1
            started = time.monotonic()
            master.signal(signal.SIGTERM)
            codes = await _closed_codes(sockets)
            return codes, started

        codes, started = asyncio.run(scenario())
        assert codes == [1001] * SOCKETS
        assert master.wait(WAIT) == OK
        elapsed = time.monotonic() - started
        assert elapsed < 30, f"stopping took {elapsed:.1f} s"  # the graceful timeout is 60 s
        wait_until(lambda: master.output.count("disconnect 1001 in") == SOCKETS, "every app's disconnect")
    finally:
        master.stop()


def test_hup_reload_moves_websockets_to_the_new_worker(ws_app, tmp_path):
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "-w", "1", "wsapp:app"], ws_app, port, pidfile)
    try:
        (old,) = [w["pid"] for w in master.wait_workers(1)]

        async def scenario() -> tuple[list, set]:
            sockets, pids = await _open(port, 20)
            assert pids == {str(old)}
            master.signal(signal.SIGHUP)
            codes = await _closed_codes(sockets)
            fresh, new_pids = await _open(port, 5)
            for ws in fresh:
                await ws.close()
            return codes, new_pids

        codes, new_pids = asyncio.run(scenario())
        assert codes == [1001] * 20
        assert str(old) not in new_pids and len(new_pids) == 1
        wait_until(lambda: master.output.count(f"disconnect 1001 in {old}") == 20, "the old worker's disconnects")
    finally:
        master.stop()
