"""WebSockets on a real in-process worker: messages, ping/pong, closing, limits and bad frames.

Every wait is bounded; no test asserts on timings (timeouts are set short and waited for with margins).
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import struct
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from corral.shared.settings import Settings
from corral.worker.serve.testing import call_in_loop, run_server
from corral.worker.websocket.protocol import QUEUE_PAUSE
from websocket_helpers import WAIT, RawClient, assert_still_serving, echo_app, masked, url

# ---------------------------------------------------------------------------- echo


@pytest.mark.parametrize("compression", ["deflate", None])
def test_echo_text_and_bytes_small_and_16_mib(compression):
    with run_server(echo_app()) as (host, port, _):
        with connect(url(host, port), max_size=None, compression=compression) as ws:
            assert ws.response.headers["x-app"] == "yes"
            if compression:
                assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
            else:
                assert "sec-websocket-extensions" not in ws.response.headers
            ws.send("héllo")
            assert ws.recv(WAIT) == "héllo"
            ws.send(b"\x00\xff")
            assert ws.recv(WAIT) == b"\x00\xff"
            big = os.urandom(16 * 1024 * 1024)
            ws.send(big)
            assert ws.recv(30) == big
            text = "ü" * (8 * 1024 * 1024)  # 16 MiB of UTF-8
            ws.send(text)
            assert ws.recv(30) == text


def test_fragmented_messages_are_assembled():
    with run_server(echo_app()) as (host, port, _):
        client = RawClient(host, port)
        assert client.status == 101
        client.send(
            masked(0x1, "hé".encode()[:2], fin=False)
            + masked(0x9, b"ping!")  # a ping in between
            + masked(0x0, "hé".encode()[2:] + b"llo", fin=True)
        )
        opcode, _, payload = client.frame()
        assert (opcode, payload) == (0xA, b"ping!")  # the pong
        opcode, fin, payload = client.frame()
        assert (opcode, fin, payload) == (0x1, True, "héllo".encode())
        client.send(masked(0x2, b"a" * 70000, fin=False) + masked(0x0, b"b" * 10, fin=False))
        client.send(masked(0x0, b"c", fin=True))
        opcode, _, payload = client.frame()
        assert opcode == 0x2 and payload == b"a" * 70000 + b"b" * 10 + b"c"
        client.send(masked(0x8, struct.pack("!H", 1000)))
        assert client.close_code() == (1000, "")
        assert client.at_eof()
        client.close()


def test_frames_split_across_reads():
    with run_server(echo_app()) as (host, port, _):
        client = RawClient(host, port)
        frame = masked(0x2, b"z" * 300)
        for i in range(len(frame)):
            client.send(frame[i : i + 1])
            time.sleep(0.0005 if i < 12 else 0)
        assert client.frame() == (0x2, True, b"z" * 300)
        client.close()


# ---------------------------------------------------------------------------- ping / pong


def test_client_ping_gets_pong():
    with run_server(echo_app()) as (host, port, _):
        client = RawClient(host, port)
        client.send(masked(0x9, b"are you there"))
        assert client.frame() == (0xA, True, b"are you there")
        client.close()


def test_server_pings_and_keeps_an_answering_client():
    settings = Settings(ws_ping_interval=0.1, ws_ping_timeout=0.3)
    with run_server(echo_app(), settings) as (host, port, server):
        with connect(url(host, port)) as ws:  # the websockets client answers pings
            time.sleep(1.0)
            ws.send("alive")
            assert ws.recv(WAIT) == "alive"
        assert server.websockets.pings >= 3


def test_server_closes_a_client_that_stops_answering_pings(events):
    settings = Settings(ws_ping_interval=0.1, ws_ping_timeout=0.2)
    with run_server(echo_app(events), settings) as (host, port, _server):
        client = RawClient(host, port)
        opcode, _, _payload = client.frame()
        assert opcode == 0x9  # a ping, never answered
        assert client.close_code() == (1011, "keepalive ping timeout")
        assert client.at_eof()
        assert events.get(timeout=WAIT) == {
            "type": "websocket.disconnect",
            "code": 1011,
            "reason": "keepalive ping timeout",
        }
        client.close()
        assert_still_serving(host, port)


# ---------------------------------------------------------------------------- closing


def test_client_close_code_and_reason_reach_the_app(events):
    with run_server(echo_app(events)) as (host, port, _):
        with connect(url(host, port)) as ws:
            ws.close(4000, "bye now")
        assert events.get(timeout=WAIT) == {"type": "websocket.disconnect", "code": 4000, "reason": "bye now"}


def test_app_close_code_and_reason_reach_the_client(events):
    with run_server(echo_app(events)) as (host, port, _):
        with connect(url(host, port)) as ws:
            ws.send("close-me")
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(WAIT)
            assert info.value.rcvd.code == 4001 and info.value.rcvd.reason == "as asked"
        assert events.get(timeout=WAIT)["code"] == 4001


def test_app_returning_closes_with_1000_and_raising_with_1011():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        if message.get("text") == "raise":
            raise RuntimeError("boom (expected by the test)")

    with run_server(app) as (host, port, _):
        for text, code in (("return", 1000), ("raise", 1011)):
            with connect(url(host, port)) as ws:
                ws.send(text)
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(WAIT)
                assert info.value.rcvd.code == code


def test_client_vanishing_gives_1006(events):
    with run_server(echo_app(events)) as (host, port, _):
        client = RawClient(host, port)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST, no close frame
        assert events.get(timeout=WAIT)["code"] == 1006


def test_send_after_close_raises_an_oserror():
    seen: queue.Queue[Any] = queue.Queue()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            seen.put(exc)

    with run_server(app) as (host, port, _):
        with connect(url(host, port)) as ws:
            ws.close()
        assert isinstance(seen.get(timeout=WAIT), OSError)


# ---------------------------------------------------------------------------- limits and bad frames


def test_oversized_message_closes_with_1009_and_the_worker_keeps_serving(events):
    with run_server(echo_app(events), Settings(ws_max_size=1024)) as (host, port, _):
        with connect(url(host, port), compression=None) as ws:
            ws.send(b"x" * 1024)
            assert ws.recv(WAIT) == b"x" * 1024
            ws.send(b"x" * 1025)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(WAIT)
            assert info.value.rcvd.code == 1009
        assert events.get(timeout=WAIT)["code"] == 1009
        # Fragmented: the sum counts.
        client = RawClient(host, port)
        client.send(masked(0x2, b"a" * 600, fin=False) + masked(0x0, b"b" * 600))
        assert client.close_code()[0] == 1009
        client.close()
        # Compressed: the limit is on the decompressed size (a zip bomb is refused).
        with connect(url(host, port), compression="deflate") as ws:
            ws.send(b"\x00" * 100_000)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(WAIT)
            assert info.value.rcvd.code == 1009
        assert_still_serving(host, port)


@pytest.mark.parametrize(
    "frame, code",
    [
        (masked(0x3, b"bad opcode"), 1002),
        (masked(0x1, b"unmasked", mask=False), 1002),
        (masked(0x1, b"\xff\xfe not utf-8"), 1007),
        (masked(0x1, "é".encode()[:1], fin=False) + masked(0x0, b"x"), 1007),
        (masked(0x1, b"rsv", rsv=0x40), 1002),
        (masked(0x0, b"continuation without a start"), 1002),
        (masked(0x9, b"p" * 126), 1002),  # control frame too long
        (masked(0x8, b"\x03\xe8\xff"), 1007),  # close reason not UTF-8
        (masked(0x8, struct.pack("!H", 999)), 1002),  # invalid close code
    ],
    ids=[
        "bad-opcode",
        "unmasked",
        "bad-utf8",
        "bad-utf8-fragmented",
        "rsv-bit",
        "stray-continuation",
        "long-ping",
        "bad-close-reason",
        "bad-close-code",
    ],
)
def test_invalid_frames_close_with_the_right_code(frame, code, events):
    with run_server(echo_app(events)) as (host, port, _):
        client = RawClient(host, port)
        client.send(masked(0x1, b"before"))
        assert client.frame() == (0x1, True, b"before")
        client.send(frame)
        assert client.close_code()[0] == code
        assert client.at_eof()
        client.close()
        assert events.get(timeout=WAIT)["code"] == code
        assert_still_serving(host, port)


def test_backpressure_stops_reading_while_the_app_lags():
    release = threading.Event()
    got: queue.Queue[Any] = queue.Queue()
    holder: dict = {}

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        holder["ws"] = send.__self__
        while not release.is_set():
            await asyncio.sleep(0.01)
        while True:
            message = await receive()
            got.put(message)
            if message["type"] == "websocket.disconnect":
                return

    settings = Settings(ws_max_queue=4, ws_ping_interval=0)
    with run_server(app, settings) as (host, port, server):
        client = RawClient(host, port)
        for i in range(20):
            client.send(masked(0x1, b"m%d" % i))
        deadline = time.monotonic() + WAIT
        while True:
            ws = holder.get("ws")
            if ws is not None and call_in_loop(server, lambda: (ws.flow.read_paused & QUEUE_PAUSE, len(ws.queue)))[0]:
                break
            assert time.monotonic() < deadline, "reading was never paused"
            time.sleep(0.01)
        release.set()
        texts = [got.get(timeout=WAIT)["text"] for _ in range(20)]
        assert texts == ["m%d" % i for i in range(20)]
        client.close()


def test_send_waits_above_the_write_high_water_mark():
    progress: list[int] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        for i in range(1000):
            await send({"type": "websocket.send", "bytes": b"x" * 65536})
            progress.append(i)

    settings = Settings(ws_write_limit=65536, ws_ping_interval=0)
    with run_server(app, settings) as (host, port, _):
        client = RawClient(host, port)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        time.sleep(0.5)  # the client reads nothing
        stalled = len(progress)
        assert stalled < 200, "send did not wait (64 MiB would be buffered)"
        time.sleep(0.2)
        assert len(progress) == stalled
        total = 0
        while total < 1000 * 65536:
            total += len(client.frame()[2])
        assert len(progress) == 1000
        client.close()
