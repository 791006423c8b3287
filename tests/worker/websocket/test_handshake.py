"""WebSockets on a real in-process worker: the handshake and the ASGI interface (scope, denial, Starlette).

Every wait is bounded; no test asserts on timings (timeouts are set short and waited for with margins).
"""

from __future__ import annotations

import queue
import socket
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from corral.worker.serve.testing import run_server
from websocket_helpers import WAIT, RawClient, assert_still_serving, echo_app, masked, url

# ---------------------------------------------------------------------------- handshake outcomes


def test_subprotocol_negotiation():
    with run_server(echo_app()) as (host, port, _):
        with connect(url(host, port), subprotocols=["v2.chat", "v1.chat"]) as ws:
            assert ws.subprotocol == "v2.chat"
        with connect(url(host, port)) as ws:
            assert ws.subprotocol is None
            assert "sec-websocket-protocol" not in ws.response.headers


def test_scope():
    scopes: queue.Queue[dict] = queue.Queue()

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
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
            }
        )
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


HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def test_bad_handshakes_get_400_or_426():
    with run_server(echo_app()) as (host, port, _):
        response = http_exchange(host, port, HANDSHAKE + b"Sec-WebSocket-Version: 8\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 426 ") and b"sec-websocket-version: 13\r\n" in response
        response = http_exchange(
            host, port, HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short") + b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert response.startswith(b"HTTP/1.1 400 ")
        response = http_exchange(host, port, HANDSHAKE.replace(b"GET", b"POST") + b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")
        # Another upgrade (h2c) is served as plain HTTP, as before.
        response = http_exchange(
            host, port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )
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
        # WsgiToAsgi sends asgiref's message shape (the body, then a closing message): chunked framing.
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\n4\r\nwsgi\r\n0\r\n\r\n")


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


# ---------------------------------------------------------------------------- Starlette


def test_starlette_websocket_route():
    starlette = pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    disconnects: queue.Queue[int] = queue.Queue()

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
    entries: queue.Queue[tuple] = queue.Queue()

    def access_log(scope, status, nbytes, duration, headers):
        entries.put((scope["type"], scope["path"], status))

    with run_server(echo_app(), access_log=access_log) as (host, port, _):
        with connect(url(host, port)) as ws:
            ws.send("x")
            ws.recv(WAIT)
        assert entries.get(timeout=WAIT) == ("websocket", "/ws", 101)
