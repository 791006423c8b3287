"""WebSockets on a real in-process worker: the `websockets` client library and raw frames.

Every wait is bounded; no test asserts on timings (timeouts are set short and waited for with margins).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import queue
import socket
import struct
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from corral.shared.settings import Settings
from corral.worker.testing import call_in_loop, run_server
from corral.worker.wsprotocol import QUEUE_PAUSE

WAIT = 10.0


# ---------------------------------------------------------------------------- applications


def echo_app(events: "queue.Queue | None" = None, subprotocol: bool = True):
    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"http"})
            return
        message = await receive()
        assert message == {"type": "websocket.connect"}
        offered = scope["subprotocols"]
        await send({
            "type": "websocket.accept",
            "subprotocol": offered[0] if offered and subprotocol else None,
            "headers": [(b"x-app", b"yes")],
        })
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if events is not None:
                    events.put(message)
                return
            text = message.get("text")
            if text == "close-me":
                await send({"type": "websocket.close", "code": 4001, "reason": "as asked"})
                continue
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})

    return app


def url(host: str, port: int, path: str = "/ws") -> str:
    return f"ws://{host}:{port}{path}"


# ---------------------------------------------------------------------------- raw frames


def masked(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client on a plain socket: handshake, masked frames out, server frames in."""

    def __init__(self, host: str, port: int, path: str = "/ws", extra: bytes = b"") -> None:
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (path.encode(), key, extra)
        )
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def frame(self) -> tuple[int, bool, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        assert not b1 & 0x80, "server frames are not masked"
        return b0 & 0x0F, bool(b0 & 0x80), self._read(n)

    def close_code(self) -> tuple[int, str]:
        """Read frames until a close frame; its (code, reason)."""
        while True:
            opcode, _, payload = self.frame()
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code, payload[2:].decode()

    def at_eof(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def assert_still_serving(host: str, port: int) -> None:
    with connect(url(host, port)) as ws:
        ws.send("still here")
        assert ws.recv(WAIT) == "still here"


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
        client.send(masked(0x1, "hé".encode()[:2], fin=False) + masked(0x9, b"ping!")  # a ping in between
                    + masked(0x0, "hé".encode()[2:] + b"llo", fin=True))
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
            client.send(frame[i:i + 1])
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
    with run_server(echo_app(events), settings) as (host, port, server):
        client = RawClient(host, port)
        opcode, _, payload = client.frame()
        assert opcode == 0x9  # a ping, never answered
        assert client.close_code() == (1011, "keepalive ping timeout")
        assert client.at_eof()
        assert events.get(timeout=WAIT) == {"type": "websocket.disconnect", "code": 1011,
                                            "reason": "keepalive ping timeout"}
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
    seen: "queue.Queue[Any]" = queue.Queue()

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
    ids=["bad-opcode", "unmasked", "bad-utf8", "bad-utf8-fragmented", "rsv-bit", "stray-continuation",
         "long-ping", "bad-close-reason", "bad-close-code"],
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
    got: "queue.Queue[Any]" = queue.Queue()
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
            if ws is not None and call_in_loop(server, lambda: (ws.flow.read_paused & QUEUE_PAUSE, len(ws.queue))) \
                    [0]:
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


# ---------------------------------------------------------------------------- handshake outcomes


def test_subprotocol_negotiation():
    with run_server(echo_app()) as (host, port, _):
        with connect(url(host, port), subprotocols=["v2.chat", "v1.chat"]) as ws:
            assert ws.subprotocol == "v2.chat"
        with connect(url(host, port)) as ws:
            assert ws.subprotocol is None
            assert "sec-websocket-protocol" not in ws.response.headers


def test_scope():
    scopes: "queue.Queue[dict]" = queue.Queue()

    async def app(scope, receive, send):
        scopes.put(scope)
        await send({"type": "websocket.close"})

    with run_server(app) as (host, port, _):
        with pytest.raises(InvalidStatus):
            with connect(url(host, port, "/chat/caf%C3%A9?room=1"), subprotocols=["a", "b"]):
                pass
        scope = scopes.get(timeout=WAIT)
    assert scope["type"] == "websocket" and "method" not in scope
    assert scope["scheme"] == "ws" and scope["http_version"] == "1.1"
    assert scope["path"] == "/chat/café" and scope["raw_path"] == b"/chat/caf%C3%A9"
    assert scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == ["a", "b"]
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert scope["asgi"]["version"] == "3.0"
    assert (b"upgrade", b"websocket") in scope["headers"]


def test_close_before_accept_is_403():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close", "code": 1000})

    with run_server(app) as (host, port, _):
        with pytest.raises(InvalidStatus) as info:
            connect(url(host, port))
        assert info.value.response.status_code == 403
        assert_still_serving_http(host, port, app)


def assert_still_serving_http(host: str, port: int, app: Any) -> None:
    client = RawClient(host, port)
    assert client.status in (101, 403, 500)
    client.close()


def test_denial_response():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    with run_server(app) as (host, port, _):
        with pytest.raises(InvalidStatus) as info:
            connect(url(host, port))
        response = info.value.response
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.body == b"who are you?"


def test_app_failing_before_accept_is_500_and_returning_is_500():
    async def app(scope, receive, send):
        if scope["path"] == "/raise":
            raise RuntimeError("boom (expected by the test)")

    with run_server(app) as (host, port, _):
        for path in ("/raise", "/return"):
            with pytest.raises(InvalidStatus) as info:
                connect(url(host, port, path))
            assert info.value.response.status_code == 500


def http_exchange(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def test_bad_handshakes_get_400_or_426():
    with run_server(echo_app()) as (host, port, _):
        response = http_exchange(host, port, HANDSHAKE + b"Sec-WebSocket-Version: 8\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 426 ") and b"sec-websocket-version: 13\r\n" in response
        response = http_exchange(host, port, HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short")
                                 + b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")
        response = http_exchange(host, port, HANDSHAKE.replace(b"GET", b"POST") + b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")
        # Another upgrade (h2c) is served as plain HTTP, as before.
        response = http_exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"http")
        assert_still_serving(host, port)


def test_wsgi_app_gets_a_clean_404_for_websocket_upgrades():
    from corral.shared.wsgi import WsgiToAsgi

    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi"]

    with run_server(WsgiToAsgi(wsgi)) as (host, port, _):
        with pytest.raises(InvalidStatus) as info:
            connect(url(host, port))
        assert info.value.response.status_code == 404
        response = http_exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"wsgi")


def test_frames_sent_before_the_101_are_kept():
    with run_server(echo_app()) as (host, port, _):
        sock = socket.create_connection((host, port), timeout=WAIT)
        sock.sendall(HANDSHAKE + b"Sec-WebSocket-Version: 13\r\n\r\n" + masked(0x1, b"eager"))
        time.sleep(0.05)
        sock.sendall(masked(0x1, b"eager 2"))
        data = b""
        while data.count(b"eager") < 2:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 101 ") and data.endswith(b"\x81\x05eager\x81\x07eager 2")
        sock.close()


# ---------------------------------------------------------------------------- the pool


def test_each_websocket_is_an_instance_in_the_pool_and_waits_for_a_slot():
    with run_server(echo_app(), Settings(max_applications=1)) as (host, port, server):
        with connect(url(host, port)) as first:
            first.send("one")
            assert first.recv(WAIT) == "one"
            assert server.stats()["instances"] == 1
            result: "queue.Queue[Any]" = queue.Queue()

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
        with run_server(echo_app(events), Settings(graceful_timeout=10), graceful_exit=True,
                        stop_timeout=WAIT) as (host, port, server):
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
    with run_server(echo_app(), Settings(graceful_timeout=0.5), graceful_exit=True,
                    stop_timeout=WAIT) as (host, port, _):
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


# ---------------------------------------------------------------------------- Starlette


def test_starlette_websocket_route():
    starlette = pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    disconnects: "queue.Queue[int]" = queue.Queue()

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="json")
        try:
            while True:
                data = await websocket.receive_json()
                if data.get("bye"):
                    await websocket.close(code=4002, reason="bye")
                    return
                await websocket.send_json({"echo": data, "path": websocket.url.path})
        except WebSocketDisconnect as exc:
            disconnects.put(exc.code)

    async def home(request):
        return PlainTextResponse("home")

    app = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", echo)])
    assert starlette  # imported
    with run_server(app) as (host, port, _):
        with connect(url(host, port), subprotocols=["json"]) as ws:
            assert ws.subprotocol == "json"
            ws.send('{"a": 1}')
            assert ws.recv(WAIT) == '{"echo":{"a":1},"path":"/ws"}'
            ws.send('{"bye": true}')
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(WAIT)
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4002, "bye")
        with connect(url(host, port), subprotocols=["json"]) as ws:
            ws.send('{"a": 2}')
            ws.recv(WAIT)
        assert disconnects.get(timeout=WAIT) == 1000
        # No such route: Starlette closes before accepting, which is a 403.
        with pytest.raises(InvalidStatus) as denied:
            connect(url(host, port, "/nope"))
        assert denied.value.response.status_code == 403
        assert http_exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(b"home")


def test_upgrade_pipelined_behind_a_request_waits_its_turn():
    with run_server(echo_app()) as (host, port, _):
        sock = socket.create_connection((host, port), timeout=WAIT)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + HANDSHAKE + b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while b"HTTP/1.1 101 " not in data or not data.endswith(b"\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and data.index(b"http") < data.index(b"HTTP/1.1 101 ")
        sock.sendall(masked(0x1, b"after"))
        assert sock.recv(100) == b"\x81\x05after"
        sock.close()


def test_access_log_gets_the_handshake():
    entries: "queue.Queue[tuple]" = queue.Queue()

    def access_log(scope, status, nbytes, duration, headers):
        entries.put((scope["type"], scope["path"], status))

    with run_server(echo_app(), access_log=access_log) as (host, port, _):
        with connect(url(host, port)) as ws:
            ws.send("x")
            ws.recv(WAIT)
        assert entries.get(timeout=WAIT) == ("websocket", "/ws", 101)


def test_graceful_stop_lets_the_app_finish_handling_its_disconnect():
    done: "queue.Queue[str]" = queue.Queue()

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
    cancelled: "queue.Queue[str]" = queue.Queue()

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
