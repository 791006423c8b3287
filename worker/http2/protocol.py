"""The asyncio Protocol of one HTTP/2 connection: thin glue between a transport and `h2`'s H2Connection.

An `HttpProtocol` becomes this one (`transport.set_protocol`, see corral.worker.http2.detect) when TLS
negotiated `h2` by ALPN or a cleartext client opened with the HTTP/2 preface. Imported only then: `h2` costs
~25 ms of import, which HTTP/1.1-only workers never pay.

Each stream is an application instance in the worker's pool, parked (FIFO, with HTTP/1.1's requests) or
answered 503 when the pool is full, like an HTTP/1.1 request; SETTINGS_MAX_CONCURRENT_STREAMS is the pool's
free room when the connection opens (at least 100, RFC 9113's advice; at most
`--http2-max-concurrent-streams`).

The server treats the connection like an HTTP/1.1 one through `phase`/`since`: IDLE (no stream: the
keep-alive timer closes it), BUSY (streams open: the body timer runs while an application waits for body
bytes that do not come, see `request`), CLOSED. A stopping server sends GOAWAY (`go_away`): the streams in
flight finish, new ones are refused, and the connection closes with its last stream.

Defences (each a setting, all on): Rapid Reset (client resets per second), SETTINGS/PING/PRIORITY/empty
DATA floods (per second each), CONTINUATION floods (frames per header block, h2's backlog), HPACK bombs
(decoded header list size, dynamic table size), window abuse (a stream waits `send_timeout` at most for
the client's window or for it to read; a WINDOW_UPDATE that lets a waiting response send under 1 KiB counts
per second, like a PING: it costs a DATA frame for a few bytes; the connection is dropped when more than
`max_write_buffer` waits to be written).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from corral.worker.app.pool import PoolFull
from corral.worker.conn.flow import FlowControl
from corral.worker.conn.phases import BUSY, CLOSED, IDLE
from corral.worker.edge.health import health_app
from corral.worker.http1.protocol import _ASGI, _METHODS, decode_path, service_unavailable
from corral.worker.http2.send import _HOP, H2Sender
from corral.worker.http2.stream import H2Stream

if TYPE_CHECKING:
    from corral.shared.settings import Settings
    from corral.worker.http1.protocol import HttpProtocol

__all__ = ["H2Protocol", "H2Limits"]

logger = logging.getLogger("corral.error")

# The request of an `Upgrade: h2c` keeps none of its HTTP/1.1 connection headers as stream 1.
_UPGRADE_HEADERS = _HOP | {b"http2-settings", b"te"}
_MIN_STREAMS = 100

# Flood counters, per connection per second.
_RESETS, _SETTINGS, _PINGS, _PRIORITY, _EMPTY, _TRICKLE = range(6)
_FLOODS = (
    "RST_STREAM frames",
    "SETTINGS frames",
    "PING frames",
    "PRIORITY frames",
    "empty DATA frames",
    "WINDOW_UPDATE frames that opened a shut window by under 1 KiB",
)
_TINY = 1024  # a WINDOW_UPDATE that lets a waiting response send less than this counts as a flood frame


@dataclass(frozen=True)
class H2Limits:
    """The HTTP/2 settings of a worker, read once (values passed in, not looked up per connection)."""

    max_concurrent_streams: int = 100
    initial_window_size: int = 65535
    max_frame_size: int = 16384
    max_header_list_size: int = 65536
    header_table_size: int = 4096
    max_continuation_frames: int = 16
    max_resets: int = 100
    max_control_frames: int = 1000
    send_timeout: float = 30.0
    max_write_buffer: int = 1024 * 1024
    health_path: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> H2Limits:
        return cls(
            settings.http2_max_concurrent_streams,
            settings.http2_initial_window_size,
            settings.http2_max_frame_size,
            settings.http2_max_header_list_size,
            settings.http2_header_table_size,
            settings.http2_max_continuation_frames,
            settings.http2_max_resets,
            settings.http2_max_control_frames,
            settings.http2_send_timeout,
            settings.http2_max_write_buffer,
            settings.health_path,
        )


_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None)


class H2Protocol(H2Sender, asyncio.Protocol):
    __slots__ = (
        "server",
        "limits",
        "http1",
        "transport",
        "conn",
        "flow",
        "streams",
        "client",
        "sockname",
        "scheme",
        "trusted",
        "extensions",
        "phase",
        "since",
        "going_away",
        "floods",
        "flood_second",
        "last_stream",
        "state",
        "loop",
        "flushing",
        "__weakref__",
    )

    def __init__(self, http1: HttpProtocol, limits: H2Limits) -> None:
        # What the HTTP/1.1 protocol learnt of the connection (addresses, PROXY header, TLS) carries over.
        self.server = http1.server
        self.limits = limits
        self.http1 = http1  # its class logs and counts (metrics) a finished response: see log_access
        self.transport: Any = None
        self.conn: h2.connection.H2Connection | None = None
        self.flow: Any = None
        self.streams: dict[int, H2Stream] = {}
        self.client = http1.client
        self.sockname = http1.sockname
        self.scheme = http1.scheme
        self.trusted = http1.trusted
        self.extensions = http1.extensions
        self.phase = IDLE
        self.since = self.server.tick
        self.going_away = False
        self.floods = [0, 0, 0, 0, 0, 0]
        self.flood_second = 0
        self.last_stream = 0
        # The server's tick reads `protocol.state.request` of BUSY connections (the body timer): here the
        # connection itself answers (see `request`).
        self.state = self
        self.loop: Any = None
        self.flushing = False  # a flush_soon() is scheduled

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: Any, upgrade: tuple[bytes, dict] | None = None) -> None:
        """`upgrade`: (the HTTP2-Settings header, the scope) of a bodiless HTTP/1.1 request answered `101`
        for `Upgrade: h2c` (RFC 7540 §3.2): that request becomes stream 1."""
        server = self.server
        limits = self.limits
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.flow = FlowControl(transport)
        conn = self.conn = h2.connection.H2Connection(config=_CONFIG)
        # The pool's free room bounds the streams (each is an application instance), but never below RFC 9113
        # §6.5.2's advice of 100 (within the setting): a client's first requests leave before our SETTINGS
        # reach it, and h2 ends the connection for a stream over the bound. Streams past the pool's room
        # are parked, like HTTP/1.1 requests.
        room = server.max_applications - len(server.application_instances)
        streams = min(limits.max_concurrent_streams, max(room, _MIN_STREAMS))
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: limits.header_table_size,
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
            },
        )
        conn.max_inbound_frame_size = limits.max_frame_size
        conn.decoder.max_header_list_size = limits.max_header_list_size
        conn.decoder.max_allowed_table_size = limits.header_table_size
        if upgrade is None:
            conn.initiate_connection()
        else:
            try:
                conn.initiate_upgrade_connection(upgrade[0])
            except Exception:  # noqa: BLE001 - a malformed HTTP2-Settings (base64 of SETTINGS): the 101 is out, end here
                logger.info("Malformed HTTP2-Settings from %s: closing", self.peer)
                self.close(ErrorCodes.PROTOCOL_ERROR)
                return
        # The connection window covers a few streams' windows: one slow stream does not stall the others,
        # and the body buffered per connection stays bounded.
        extra = min(streams, 16) * limits.initial_window_size - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self.flush()
        if upgrade is not None:
            self.upgraded_request(upgrade[1])
        if server.stopping:
            self.go_away()

    def upgraded_request(self, scope: dict) -> None:
        """Stream 1: the HTTP/1.1 request that asked for the upgrade (it has no body)."""
        scope["http_version"] = "2"
        scope["headers"] = [(name, value) for name, value in scope["headers"] if name not in _UPGRADE_HEADERS]
        extensions = scope.get("extensions") or {}
        extensions["http.response.trailers"] = {}
        scope["extensions"] = extensions
        stream = H2Stream(self, 1, scope, scope["method"] == "HEAD", self.server.access_log is not None)
        stream.body_complete = True
        self.streams[1] = stream
        self.last_stream = 1
        self.phase = BUSY
        self.since = self.server.tick
        self.start(stream)

    def data_received(self, data: bytes) -> None:
        if self.phase == CLOSED:
            return
        server = self.server
        server.counters.bytes_in += len(data)
        if self.phase == BUSY:
            self.since = server.tick  # bytes came: the body timer restarts
        try:
            events = self.conn.receive_data(data)  # type: ignore[union-attr]  # set in connection_made
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY (PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR...): send it, close.
            logger.info("HTTP/2 protocol error from %s: %s", self.peer, describe(exc))
            self.flush()
            self.close(goaway=False)
            return
        handlers = _HANDLERS
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(self, event)
            if self.phase == CLOSED:
                return
        self.flush()
        if self.transport.get_write_buffer_size() > self.limits.max_write_buffer:
            logger.warning("HTTP/2 client %s does not read what it asks for: dropping the connection", self.peer)
            self.close(goaway=False)
            self.transport.abort()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase != CLOSED:
            self.phase = CLOSED
            self._disconnect_all()
        flow = self.flow
        if flow is not None and flow.write_paused:
            flow.connection_lost()
        self.server.connection_closed(self)
        self.http1 = None  # type: ignore[assignment]  # released at close: nothing reads it after
        self.state = None  # type: ignore[assignment]  # no cycle through itself: refcounting frees the connection

    # ------------------------------------------------------------------ h2 events

    def on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        conn = self.conn
        assert conn is not None
        if stream_id > self.last_stream:
            self.last_stream = stream_id
        if self.going_away:
            conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        server = self.server
        method = path = authority = b""
        headers = []
        host = False
        for name, value in event.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            else:
                if name == b"host":
                    host = True
                headers.append((name, value))
        if not path or method == b"CONNECT":
            conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)  # RFC 8441 extended CONNECT: not offered
            return
        if authority and not host:
            headers.insert(0, (b"host", authority))
        if path[:1] == b"/":
            if b"#" in path:  # a client's own fragment (RFC 9110 §4.2.4): never the app's path or query
                path = path[: path.index(b"#")]
            raw_path, _, query = path.partition(b"?")
        else:  # OPTIONS *
            raw_path, query = path, b""
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "2",
            "server": self.sockname,
            "client": self.client,
            "scheme": self.scheme,
            "method": _METHODS.get(method) or method.decode("ascii", "replace"),
            "root_path": server.root_path,
            "path": decode_path(raw_path),
            "raw_path": raw_path,
            "query_string": query,
            "headers": headers,
            "state": server.lifespan_state.copy(),
            "extensions": {"http.response.trailers": {}}
            if self.extensions is None
            else {**self.extensions, "http.response.trailers": {}},
        }
        stream = H2Stream(self, stream_id, scope, method == b"HEAD", server.access_log is not None)
        self.streams[stream_id] = stream
        if self.phase != BUSY:
            self.phase = BUSY
            self.since = server.tick
        proxy = server.proxy
        if proxy is not None and self.trusted is not False:
            try:
                if self.trusted is None:
                    proxy.apply(scope)  # a proxy without `trusts` (any object with apply(scope)) decides itself
                else:
                    proxy.apply(scope, True)  # trust decided once for the connection
            except Exception:
                logger.exception("Could not apply proxy headers")
                stream.status = 400
                self.send_error(stream, 400)
                self.streams.pop(stream_id, None)
                self._maybe_idle()
                return
        self.start(stream)

    def on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        data = event.data
        if not data and not event.stream_ended and self._flood(_EMPTY):
            return
        if stream is None:
            # A stream we answered or refused already: give the window back at once.
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)  # type: ignore[union-attr]  # set in connection_made
            return
        stream.on_data(data, event.flow_controlled_length)

    def on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.on_end()

    def on_stream_reset(self, event: h2.events.StreamReset) -> None:
        if event.remote_reset and self._flood(_RESETS):
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.disconnect()
            if not stream.running:  # parked: the pool skips it; nothing else holds it
                self.streams.pop(event.stream_id, None)
                self._maybe_idle()

    def on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        # DATA follows any window, one byte included. An update that lets a waiting response send only a few
        # bytes (under 1 KiB) is counted as a flood frame: reopening a shut window a few bytes at a time costs
        # the server a frame each, CPU for nothing. A large update, shared in small pieces by the streams that
        # wait on it, is not.
        conn = self.conn
        assert conn is not None
        stream_id = event.stream_id
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is None or stream.window is None:
                return
            try:
                tiny = 0 < conn.local_flow_control_window(stream_id) < _TINY
            except h2.exceptions.StreamClosedError:
                tiny = False
            if tiny and self._flood(_TRICKLE):
                return
            stream.window_opened()
        else:
            streams = self.streams.values()
            if (
                0 < conn.outbound_flow_control_window < _TINY
                and any(s.window is not None for s in streams)
                and self._flood(_TRICKLE)
            ):
                return
            for stream in streams:
                stream.window_opened()

    def on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if self._flood(_SETTINGS):
            return
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for stream in self.streams.values():
                stream.window_opened()

    def on_ping(self, event: h2.events.PingReceived) -> None:
        self._flood(_PINGS)

    def on_priority(self, event: h2.events.PriorityUpdated) -> None:
        self._flood(_PRIORITY)

    def on_terminated(self, event: h2.events.ConnectionTerminated) -> None:
        # The client's GOAWAY: h2 sends nothing more after it; the streams in flight are lost to it.
        self.close(goaway=False)

    def _flood(self, kind: int) -> bool:
        """Count one frame of `kind`; past its bound per second, GOAWAY ENHANCE_YOUR_CALM and close."""
        second = int(time.monotonic())
        floods = self.floods
        if second != self.flood_second:
            self.flood_second = second
            floods[:] = (0, 0, 0, 0, 0, 0)
        floods[kind] = count = floods[kind] + 1
        bound = self.limits.max_resets if kind == _RESETS else self.limits.max_control_frames
        if count <= bound:
            return False
        logger.warning(
            "HTTP/2 client %s sent more than %d %s in a second: closing the connection", self.peer, bound, _FLOODS[kind]
        )
        self.close(ErrorCodes.ENHANCE_YOUR_CALM)
        return True

    # ------------------------------------------------------------------ the pool

    def start(self, stream: H2Stream) -> None:
        server = self.server
        health_path = self.limits.health_path
        if health_path is not None and stream.scope["path"] == health_path:
            self._run_beside(stream, health_app(server))
            return
        if server.parked and not server.reject_when_full:
            server.park(self, stream)  # requests parked earlier go first
            return
        self.launch(stream)

    def launch(self, stream: H2Stream) -> None:
        server = self.server
        try:
            task = server.start_instance(stream, stream.scope, stream.receive, stream.send)
        except PoolFull:
            if server.reject_when_full:
                server.counters.rejected += 1
                self._run_beside(stream, service_unavailable)
            else:
                server.park(self, stream)
            return
        stream.running = True
        task.add_done_callback(stream.app_finished)

    def unpark(self, stream: H2Stream) -> None:
        """A slot is free for the parked `stream` (called by the server, in FIFO order)."""
        self.launch(stream)

    def _run_beside(self, stream: H2Stream, app: Any) -> None:
        """An answer the worker gives itself (503, health), outside the pool: it takes no slot."""
        stream.running = True
        task = asyncio.get_running_loop().create_task(app(stream.scope, stream.receive, stream.send))
        task.add_done_callback(stream.app_finished)

    # ------------------------------------------------------------------ bookkeeping

    def response_complete(self, stream: H2Stream) -> None:
        self.server.requests_served += 1
        if stream.t0 is not None and self.http1 is not None:
            self.http1.log_access(stream)  # the connection's HTTP/1.1 class: access log and metrics alike

    def stream_finished(self, stream: H2Stream) -> None:
        """The stream's application returned: forget the stream (and give back what it left unread)."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if stream.unacked and self.phase != CLOSED:
            self.acknowledge(stream.stream_id, stream.unacked)
            stream.unacked = 0
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.streams or self.phase == CLOSED:
            return
        if self.going_away:
            self.close(goaway=False)  # said already; the last stream is done
            return
        self.phase = IDLE
        self.since = self.server.tick

    @property
    def request(self) -> Any:
        """For the server's body timer: a stream whose application waits for body bytes, or None."""
        for stream in self.streams.values():
            if stream.reading:
                return stream
        return None

    def body_timeout(self) -> None:
        """Body bytes stalled for `body_timeout` while applications wait for them: reset those streams."""
        for stream in list(self.streams.values()):
            if stream.reading:
                self.reset(stream, ErrorCodes.CANCEL)

    def header_timeout(self) -> None:
        self.close()

    # ------------------------------------------------------------------ stopping, closing

    def go_away(self) -> None:
        """Graceful GOAWAY: refuse new streams, let those in flight finish, close after the last one.

        Written past h2's state machine on purpose: h2 closes the connection for sending at its own
        GOAWAY, and the streams in flight must still be answered (RFC 9113 §6.8)."""
        if self.going_away or self.phase == CLOSED:
            return
        self.going_away = True
        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream
        frame.error_code = ErrorCodes.NO_ERROR
        self.transport.write(frame.serialize())
        if not self.streams:
            self.close(goaway=False)

    def close(self, code: int = ErrorCodes.NO_ERROR, goaway: bool = True) -> None:
        if self.phase == CLOSED:
            return
        if goaway and self.conn is not None:
            try:
                self.conn.close_connection(code, last_stream_id=self.last_stream)
            except h2.exceptions.ProtocolError:
                pass
            self.flush()
        self.phase = CLOSED
        self._disconnect_all()
        self.transport.close()

    def _disconnect_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.disconnect()


_HANDLERS: dict[type, Any] = {
    h2.events.RequestReceived: H2Protocol.on_request,
    h2.events.DataReceived: H2Protocol.on_data,
    h2.events.StreamEnded: H2Protocol.on_stream_ended,
    h2.events.StreamReset: H2Protocol.on_stream_reset,
    h2.events.WindowUpdated: H2Protocol.on_window_updated,
    h2.events.RemoteSettingsChanged: H2Protocol.on_settings,
    h2.events.PingReceived: H2Protocol.on_ping,
    h2.events.PriorityUpdated: H2Protocol.on_priority,
    h2.events.ConnectionTerminated: H2Protocol.on_terminated,
    # TrailersReceived: request trailers are dropped (ASGI has no message for them); StreamEnded follows.
}

# h2's state machines word a frame they do not allow as "Invalid input StreamInputs.RECV_DATA in state 6".
_INVALID_INPUT = re.compile(r"Invalid input (Stream|Connection)Inputs\.RECV_(\w+) in state (\S+)$")


def describe(exc: h2.exceptions.ProtocolError) -> str:
    """What a peer's protocol error was, for the log: h2's message in words (h2 gives only the stream id of a
    frame on a closed or unknown stream, and a state machine's input and state number for a frame out of
    place), then the error code the GOAWAY carries."""
    code = getattr(exc, "error_code", None)
    try:
        name = ErrorCodes(code).name  # type: ignore[arg-type]  # None too: ValueError, below
    except ValueError:
        name = str(code)
    if isinstance(exc, h2.exceptions.StreamClosedError):
        what = f"a frame on stream {exc.stream_id}, which is closed"
    elif isinstance(exc, h2.exceptions.NoSuchStreamError):
        what = f"a frame on stream {exc.stream_id}, which was never opened"
    else:
        what = str(exc) or type(exc).__name__
        invalid = _INVALID_INPUT.match(what)
        if invalid is not None:
            machine, frame, state = invalid.groups()
            if state.isdigit():
                state = h2.stream.StreamState(int(state)).name
            state = state.rpartition(".")[2].lower().replace("_", " ")
            what = f"a {frame.replace('_', '')} frame that the {machine.lower()}'s state ({state}) does not allow"
    return f"{what} ({name})"


def limit_continuations(frames: int) -> None:
    """h2 bounds the CONTINUATION frames of a header block by a module constant: set it to the setting
    (the same value for every connection of a worker)."""
    h2.frame_buffer.CONTINUATION_BACKLOG = frames
