"""WebSockets on the worker: the ASGI websocket cycle, and the asyncio Protocol after the 101.

How a WebSocket flows through the HTTP/1.1 server:

1. `HttpProtocol.on_request` sees an upgrade request (httptools' `should_upgrade()`) and calls
   `websocket_request()` (corral.worker.websocket.handshake): a request that asks for `Upgrade: websocket` is checked
   (`corral.worker.websocket.connection`: version 13, a valid key; 400 or 426 otherwise; 404 for a WSGI application,
   which cannot speak WebSocket), its scope becomes a `websocket` scope, the connection stops reading, and a
   `WebSocketCycle` is returned in place of a `RequestCycle`. The HTTP machinery then treats it like any
   request: it is queued behind a pipelined request, parked when the pool is full (or answered 503 with
   pool_full=503), and started with `server.start_instance` - each WebSocket is an application instance in the
   pool, counted against its limit until the application returns.
2. The application's `websocket.accept` writes the 101 and the cycle takes the transport over
   (`transport.set_protocol`); the `HttpProtocol` is done. A `websocket.close` before accepting is a 403,
   and the denial response extension (`websocket.http.response.start` / `.body`) any HTTP response.
3. Frames in, events out, bytes back: `corral.worker.websocket.connection.WebSocketConnection` (sans-I/O).

Safety, from the `websocket` settings: messages above `ws_max_size` close with 1009; the server stops
reading while `ws_max_queue` messages (or `ws_max_size` bytes) wait for the application; a `send` waits
while more than `ws_write_limit` bytes are unsent; every socket is pinged every `ws_ping_interval` and
closed (1011) if the pong does not come within `ws_ping_timeout`; a close frame that is not answered
within the close timeout ends the TCP connection anyway.

Timers: none per socket. One `WebSocketHub` per server keeps the open sockets and one loop timer that
sweeps their deadlines (next ping, pong due, close reply due) a few times per ping interval; it runs only
while sockets are open.

Stopping: the server's graceful `_shutdown` calls `close()` on every connection that is not busy with an
HTTP request: an open WebSocket gives its application `websocket.disconnect` with 1001, sends a 1001
close frame and waits for the peer's reply (within the graceful timeout, after which the server aborts
whatever is left) - so a worker with 1,000 open sockets stops in about one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any

from corral.worker.conn.flow import FlowControl
from corral.worker.conn.phases import CLOSED, HANDSHAKE_PAUSE, QUEUE_PAUSE, WEBSOCKET, WRITE_PAUSE
from corral.worker.conn.response import encode_headers, response_head, status_line
from corral.worker.edge.sessionlog import WebSocketSession
from corral.worker.websocket.connection import (
    CLOSE_EVENT,
    MESSAGE,
    PONG_EVENT,
    WebSocketConnection,
    accept_response,
)
from corral.worker.websocket.hub import WebSocketHub

__all__ = ["WebSocketCycle", "ClientDisconnected"]

logger = logging.getLogger("corral.error")

#: Control frames (ping, pong) a peer may send at once, and then per second: each costs a trip through the
#: frame parser (and a pong); a faster peer is closed with 1008.
CONTROL_BURST = 100

# The cycle's states (the application's side).
HANDSHAKE = 0  # waiting for accept / close / a denial response
DENIAL = 1  # websocket.http.response.start received, the body is being collected
CONNECTED = 2  # accepted: messages flow
DONE = 3  # nothing more may be sent (a response went out, the app closed, or the socket is gone)

# After the 101 the cycle's phase is WEBSOCKET (corral.worker.conn.phases): not BUSY, so a stopping server calls
# close() on an open WebSocket at once (going away), neither IDLE nor HEAD.

_CONNECT = "websocket.connect"
_INF = math.inf


class ClientDisconnected(OSError):
    """`send` on a WebSocket that is closed (ASGI 2.4: a server-specific OSError subclass)."""


class WebSocketCycle(asyncio.Protocol):
    """One WebSocket: the request object the HTTP side queues and starts, the ASGI `receive` / `send` of
    its application instance, and - once accepted - the transport's protocol."""

    __slots__ = (
        # what the HTTP side reads and writes on a request object
        "protocol",
        "scope",
        "keep_alive",
        "state",
        "disconnected",
        "t0",
        "status",
        "headers",
        "nbytes",
        # the handshake
        "server",
        "accept",
        "extension_header",
        "extensions",
        "tail",
        "response",
        # the open socket
        "transport",
        "flow",
        "conn",
        "phase",
        "queue",
        "queued",
        "max_queue",
        "max_bytes",
        "waiter",
        "ended",
        "deadline",
        "ping",
        "hub",
        "app_done",
        "controls_since",
        # the session's figures (metrics, and the access log's line at close)
        "messages_in",
        "messages_out",
        "bytes_in",
    )

    def __init__(self, protocol: Any, scope: dict, accept: bytes, extension_header: bytes, extensions: list) -> None:
        server = protocol.server
        self.protocol = protocol  # the HttpProtocol, until the transport is taken over
        self.server = server
        self.scope = scope
        self.keep_alive = False
        self.state = HANDSHAKE
        self.disconnected = False
        self.t0 = time.perf_counter() if server.access_log is not None else None
        self.status = 0
        self.headers: Any = ()
        self.nbytes = 0
        self.accept = accept
        self.extension_header = extension_header
        self.extensions: list[Any] | None = extensions
        self.tail = b""
        self.response: list | None = None  # a denial response: [status, headers, body parts]
        self.transport: Any = None
        self.flow: Any = None
        self.conn: WebSocketConnection | None = None
        self.phase = WEBSOCKET
        self.queue: deque = deque((None,))  # None: websocket.connect
        self.queued = 0  # bytes (characters for text) of the queued messages
        settings = server.settings
        self.max_queue: int = settings.ws_max_queue
        self.max_bytes: int = settings.ws_max_size or (1 << 62)
        self.waiter: asyncio.Future[None] | None = None
        self.ended: dict | None = None  # the websocket.disconnect message, once there is one
        self.deadline = _INF
        self.ping: bytes | None = None
        self.hub: Any = None  # the server's WebSocketHub (corral.worker.websocket.hub), once accepted
        self.app_done = False
        self.controls_since = time.monotonic()  # when the control-frame count last restarted
        self.messages_in = self.messages_out = self.bytes_in = 0

    def __repr__(self) -> str:
        return f"<WebSocketCycle {self.scope.get('path')!r} state={self.state}>"

    # ------------------------------------------------------------------ the HTTP side's request object

    def on_body(self, chunk: bytes) -> None:
        pass  # a handshake has no body; whatever it declared is ignored

    def on_body_complete(self) -> None:
        pass

    def awaits_body(self) -> bool:
        return False  # no body: the minimum body rate has nothing to time

    def upgrade_tail(self, data: bytes) -> None:
        """Bytes read after the handshake request (a client that did not wait for the 101)."""
        self.tail += data

    def disconnect(self) -> None:
        """The client went away (or the HTTP side closed) before the WebSocket was taken over."""
        self.disconnected = True
        self._ended(1006, "")

    # ------------------------------------------------------------------ ASGI receive

    async def receive(self) -> dict:
        queue = self.queue
        while not queue:
            ended = self.ended
            if ended is not None:
                return ended
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        payload = queue.popleft()
        if payload is None:
            return {"type": _CONNECT}
        self.queued -= len(payload)
        flow = self.flow
        if flow.read_paused & QUEUE_PAUSE and len(queue) <= self.max_queue // 4 and self.queued <= self.max_bytes // 4:
            flow.resume_reading(QUEUE_PAUSE)
        if type(payload) is str:
            return {"type": "websocket.receive", "text": payload}
        return {"type": "websocket.receive", "bytes": payload}

    def _ended(self, code: int, reason: str) -> None:
        """Record the websocket.disconnect the application gets (the first reason to end wins)."""
        if self.ended is None:
            self.ended = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.disconnected = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ ASGI send

    async def send(self, message: dict) -> None:
        mtype = message["type"]
        state = self.state
        if state == CONNECTED:
            if mtype == "websocket.send":
                conn = self.conn
                if self.ended is not None or not conn.open:  # type: ignore[union-attr]  # set at the handshake, before any send
                    raise ClientDisconnected("the WebSocket is closed")
                text = message.get("text")
                if text is not None:
                    frame = conn.send_message(text.encode(), True)  # type: ignore[union-attr]  # set at the handshake, before any send
                    size = len(text)
                else:
                    data = message.get("bytes")
                    if data is None:
                        raise RuntimeError("websocket.send needs 'bytes' or 'text'")
                    frame = conn.send_message(bytes(data) if type(data) is not bytes else data, False)  # type: ignore[union-attr]  # set at the handshake, before any send
                    size = len(data)
                transport = self.transport
                self.messages_out += 1
                self.nbytes += size
                counters = self.server.counters
                counters.ws_messages_out += 1
                counters.ws_bytes_out += size
                if type(frame) is bytes:
                    transport.write(frame)
                else:
                    transport.write(frame[0])
                    transport.write(frame[1])
                flow = self.flow
                if flow.write_paused:
                    await flow.drain()  # above the high-water mark: wait for the peer to read
                    if self.phase == CLOSED:
                        raise ClientDisconnected("the WebSocket closed while sending")
                return
            if mtype == "websocket.close":
                self._close_from_app(message.get("code") or 1000, message.get("reason") or "")
                return
            raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {mtype!r}")
        if state == HANDSHAKE:
            if self.disconnected:
                raise ClientDisconnected("the client went away during the WebSocket handshake")
            if mtype == "websocket.accept":
                self._accept(message)
            elif mtype == "websocket.close":
                self._respond(403, [], b"")
            elif mtype == "websocket.http.response.start" or mtype == "http.response.start":
                # (http.response.*: the server's own 503 application, when the pool is full)
                status = message["status"]
                status_line(status)  # raises RuntimeError for a status that is not an int in 100-999
                self.response = [status, message.get("headers") or [], []]
                self.state = DENIAL
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', but got {mtype!r}"
                )
            return
        if state == DENIAL:
            if mtype != "websocket.http.response.body" and mtype != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'websocket.http.response.body', but got {mtype!r}")
            response = self.response
            body = message.get("body", b"")
            if body:
                response[2].append(body)  # type: ignore[index]  # a denial response is being built: a list
            if not message.get("more_body", False):
                self._respond(response[0], response[1], b"".join(response[2]))  # type: ignore[index]  # a denial response is being built: a list
            return
        # DONE
        if self.conn is not None and mtype in ("websocket.send", "websocket.close"):
            if mtype == "websocket.close":
                return  # closing twice is harmless
            raise ClientDisconnected("the WebSocket is closed")
        if self.disconnected or self.phase == CLOSED:
            raise ClientDisconnected("the client went away")
        raise RuntimeError(f"Unexpected ASGI message {mtype!r}: the WebSocket response is complete")

    # ------------------------------------------------------------------ the handshake's outcomes

    def _respond(self, status: int, headers: Any, body: bytes) -> None:
        """Refuse the handshake with an HTTP response (403 for a close before accept), then close."""
        protocol = self.protocol
        self.state = DONE
        server = self.server
        head, _, _ = response_head(status, headers, server.default_header_bytes, False, True, False, len(body))
        self.status = status
        self.headers = headers
        self.nbytes = len(body)
        protocol.transport.write(head + body)
        if self.t0 is not None:
            protocol.log_access(self)
        self._ended(1006, "")
        protocol.close()

    def _accept(self, message: dict) -> None:
        server = self.server
        subprotocol = message.get("subprotocol")
        headers = message.get("headers") or ()
        extra = b""
        if headers:
            for name, _ in headers:
                if name.lower() == b"sec-websocket-protocol":
                    raise RuntimeError("use websocket.accept's 'subprotocol', not a sec-websocket-protocol header")
            extra = encode_headers(headers)[0]
        chosen = None
        if subprotocol:
            chosen = subprotocol.encode("latin-1")
            if b"\r" in chosen or b"\n" in chosen or b"," in chosen:
                raise RuntimeError(f"invalid subprotocol {subprotocol!r}")
        protocol = self.protocol
        transport = protocol.transport
        transport.write(accept_response(self.accept, server.default_header_bytes, chosen, self.extension_header, extra))
        self.status = 101
        self.headers = headers
        server.counters.ws_opened += 1
        if self.t0 is not None:
            protocol.log_access(self)  # counted as a request (101); the access log writes the session at close
        settings = server.settings
        self.nbytes = 0  # from here on: the session's bytes out
        self.conn = WebSocketConnection(settings.ws_max_size, self.extensions)
        self.extensions = None
        # Take the transport over: from here on the HTTP side has nothing to do with this connection.
        http_flow = protocol.flow
        protocol.phase = CLOSED
        self.protocol = None
        self.transport = transport
        flow = self.flow = FlowControl(transport)
        flow.read_paused = http_flow.read_paused | HANDSHAKE_PAUSE
        flow.write_paused = http_flow.write_paused
        transport.set_protocol(self)
        try:
            transport.set_write_buffer_limits(high=settings.ws_write_limit)
        except (AttributeError, NotImplementedError):  # pragma: no cover - every loop's stream has it
            pass
        connections = server.connections
        connections.add(self)
        connections.discard(protocol)
        hub = server.websockets
        if hub is None:
            hub = server.websockets = WebSocketHub(server)
        self.hub = hub
        self.state = CONNECTED
        hub.add(self)
        if hub.ping_interval > 0:
            self.deadline = asyncio.get_running_loop().time() + hub.ping_interval
        if transport.is_closing():  # the client left while the application was deciding
            self._ended(1006, "")
            self.state = DONE
            return
        if server.stopping:
            self.close()  # accepted while the worker stops: going away at once
        tail, self.tail = self.tail, b""
        if tail:
            self.data_received(tail)
        flow.resume_reading(HANDSHAKE_PAUSE)

    def app_finished(self, task: asyncio.Future) -> None:
        """The application instance ended (the pool's done-callback, or the 503 task's)."""
        self.app_done = True
        failed = task.cancelled() or task.exception() is not None  # exceptions are logged by the pool
        state = self.state
        if self.conn is not None and self.phase == CLOSED:
            # The socket closed first (a graceful stop: the app had its disconnect and has now finished
            # with it): only now is the connection done, as far as the server's drain is concerned.
            self.state = DONE
            self.server.connection_closed(self)
            return
        if state == CONNECTED:
            # Returned (1000) or raised (1011) without closing: close for it.
            self._close_from_app(1011 if failed else 1000, "")
            return
        if state == DONE:
            return
        # The handshake was never answered (or a denial response never completed).
        protocol = self.protocol
        self.state = DONE
        if self.disconnected or protocol is None:
            if protocol is not None:
                protocol.close()
            return
        if not failed:
            logger.error(
                "ASGI callable returned without %s the WebSocket handshake",
                "completing the denial response to" if state == DENIAL else "accepting or refusing",
            )
        self._respond(500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error")

    # ------------------------------------------------------------------ the open socket (asyncio callbacks)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        events = conn.receive_data(data)  # type: ignore[union-attr]  # set at the handshake
        if conn.controls > CONTROL_BURST:  # type: ignore[union-attr]  # set at the handshake
            self._count_controls(conn, events)  # type: ignore[arg-type]  # set at the handshake
        if conn.proto.writes:  # type: ignore[union-attr]  # set at the handshake
            self.transport.write(conn.data_to_send())  # type: ignore[union-attr]  # set at the handshake
        if events:
            queue = self.queue
            accepting = self.state == CONNECTED and self.ended is None
            for event in events:
                kind = event[0]
                if kind == MESSAGE:
                    if accepting:
                        payload = event[1]
                        queue.append(payload)
                        size = len(payload)
                        self.queued += size
                        self.messages_in += 1
                        self.bytes_in += size
                        counters = self.server.counters
                        counters.ws_messages_in += 1
                        counters.ws_bytes_in += size
                elif kind == CLOSE_EVENT:
                    self._ended(event[1], event[2])
                elif kind == PONG_EVENT:
                    if self.ping is not None and event[1] == self.ping:
                        self.ping = None
                        hub = self.hub
                        if hub is not None and hub.ping_interval > 0 and conn.open:  # type: ignore[union-attr]  # set at the handshake
                            self.deadline = asyncio.get_running_loop().time() + hub.ping_interval
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if (len(queue) >= self.max_queue or self.queued >= self.max_bytes) and self.ended is None:
                self.flow.pause_reading(QUEUE_PAUSE)
        if conn.eof:  # type: ignore[union-attr]  # set at the handshake
            # The closing handshake is over (or the peer broke the protocol): the server closes TCP first;
            # a peer that does not read what is left to write is cut off at the close timeout.
            self.transport.close()
            self.deadline = asyncio.get_running_loop().time() + self.hub.close_timeout

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            self.conn.receive_eof()
        return None  # close the transport; connection_lost follows

    def _count_controls(self, conn: WebSocketConnection, events: list) -> None:
        """More than CONTROL_BURST control frames since the count restarted: a flood when that is more than
        the burst plus CONTROL_BURST a second."""
        now = time.monotonic()
        elapsed = now - self.controls_since
        if conn.controls <= CONTROL_BURST * (1.0 + elapsed):
            if elapsed >= 1.0:
                conn.controls = 0
                self.controls_since = now
        elif not conn.eof:
            reason = "too many control frames"
            self.transport.write(conn.fail(1008, reason))
            events.append((CLOSE_EVENT, 1008, reason))

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.flow.pause_reading(WRITE_PAUSE)

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self.flow.resume_reading(WRITE_PAUSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        self._ended(1006, "")
        if self.conn is not None:
            self._session_ended()
        self.queue.clear()
        self.deadline = _INF
        if self.flow is not None:
            self.flow.connection_lost()
        if self.hub is not None:
            self.hub.remove(self)
        if self.app_done:
            self.server.connection_closed(self)
        # else: the server keeps counting this connection until its application returns, so that a
        # graceful stop waits (within the graceful timeout) for apps handling their websocket.disconnect.

    def _session_ended(self) -> None:
        """An accepted WebSocket's TCP connection is gone: count its close code, log the session."""
        server = self.server
        code = self.ended["code"] if self.ended is not None else 1006
        server.counters.count_close(code)
        closed = getattr(server.access_log, "websocket_closed", None)  # the access log's line at close
        if closed is not None and self.t0 is not None:
            try:
                closed(
                    self.scope,
                    time.perf_counter() - self.t0,
                    WebSocketSession(code, self.bytes_in, self.nbytes, self.messages_in, self.messages_out),
                )
            except Exception:
                logger.exception("Access log failed")

    # ------------------------------------------------------------------ closing

    def _close_from_app(self, code: int, reason: str) -> None:
        conn = self.conn
        if self.phase == CLOSED or conn is None:
            self.state = DONE
            return
        try:
            data = conn.send_close(code, reason)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        self.state = DONE
        self._closing(data, code, reason)

    def _closing(self, data: bytes, code: int, reason: str) -> None:
        """A close frame went out: the application is told, reading resumes (the reply must be read),
        and the reply is awaited until the close timeout."""
        self.queue.clear()
        self.queued = 0
        self._ended(code, reason)
        transport = self.transport
        if data:
            transport.write(data)
        self.flow.resume_reading(QUEUE_PAUSE)
        if self.conn.eof:  # type: ignore[union-attr]  # set at the handshake
            transport.close()
        self.deadline = asyncio.get_running_loop().time() + self.hub.close_timeout

    def close(self) -> None:
        """Going away (the server stops): disconnect 1001 to the application, a 1001 close frame to the
        peer, then wait for its reply. Before the takeover, the HTTP side's close."""
        if self.conn is None:
            protocol = self.protocol
            if protocol is not None:
                protocol.close()
            return
        if self.phase == CLOSED:
            return
        conn = self.conn
        if conn.open:
            self.state = DONE
            self._closing(conn.send_close(1001, "server shutting down"), 1001, "server shutting down")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def deadline_passed(self, now: float) -> None:
        """The hub's sweep: a ping is due, a pong is late, or the close reply is late."""
        conn = self.conn
        if conn is None or self.phase == CLOSED:
            self.deadline = _INF
            return
        hub = self.hub
        if conn.open:
            if self.ping is None:
                hub.pings += 1
                self.ping = payload = hub.pings.to_bytes(4, "big")
                self.transport.write(conn.send_ping(payload))
                timeout = hub.ping_timeout
                if timeout > 0:
                    self.deadline = now + timeout
                else:  # no timeout: ping again next interval, whatever the peer does
                    self.ping = None
                    self.deadline = now + hub.ping_interval
                return
            # The peer did not answer the ping in time.
            self.state = DONE
            data = conn.fail(1011, "keepalive ping timeout")
            self._ended(1011, "keepalive ping timeout")
            self.deadline = now + hub.close_timeout
            if data:
                self.transport.write(data)
            self.transport.close()
            return
        # The close reply is late (or the TCP close is): give up on the peer.
        self.deadline = _INF
        self.transport.abort()
