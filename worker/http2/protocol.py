"""The asyncio Protocol of one HTTP/2 connection: thin glue between a transport and the connection's state
machine (corral.worker.http2.machine, whose listener it is).

An `HttpProtocol` becomes this one (`transport.set_protocol`, see corral.worker.http2.detect) when TLS
negotiated `h2` by ALPN or a cleartext client opened with the HTTP/2 preface. Imported only then: HTTP/1.1-only
workers never load the HTTP/2 modules.

Each stream is an application instance in the worker's pool, parked (FIFO, with HTTP/1.1's requests) or
answered 503 when the pool is full, like an HTTP/1.1 request; SETTINGS_MAX_CONCURRENT_STREAMS is the pool's
free room when the connection opens (at least 100, RFC 9113's advice; at most
`--http2-max-concurrent-streams`).

The server treats the connection like an HTTP/1.1 one through `phase`/`since`: IDLE (no stream: the
keep-alive timer closes it), BUSY (streams open: the body timer runs while an application waits for body
bytes that do not come, see `request`), CLOSED. A stopping server sends GOAWAY (`go_away`): the streams in
flight finish, new ones are refused, and the connection closes with its last stream.

Defences (each a setting, all on): Rapid Reset (client resets per second; the stream errors a client
provokes count as its resets too), SETTINGS/PING/PRIORITY/empty DATA floods (per second each), CONTINUATION
floods (frames per header block), HPACK bombs (decoded header list size, dynamic table size), window abuse
(a stream waits `send_timeout` at most for the client's window or for it to read; a WINDOW_UPDATE that lets a
waiting response send under 1 KiB counts per second, like a PING: it costs a DATA frame for a few bytes; the
connection is dropped when more than `max_write_buffer` waits to be written).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.worker.app.pool import PoolFull
from corral.worker.conn.flow import FlowControl
from corral.worker.conn.phases import BUSY, CLOSED, IDLE
from corral.worker.edge.health import health_app
from corral.worker.http1.fields import PROXY_HEADERS
from corral.worker.http1.protocol import HttpProtocol, service_unavailable
from corral.worker.http1.scope import ASGI, METHODS, decode_path
from corral.worker.http2.fields import HOP_BY_HOP, RequestHead
from corral.worker.http2.frames import ErrorCode, ProtocolError, error_name
from corral.worker.http2.machine import H2Machine
from corral.worker.http2.send import H2Sender
from corral.worker.http2.state import LocalSettings, StreamState
from corral.worker.http2.stream import H2Stream

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = ["H2Protocol", "H2Limits"]

logger = logging.getLogger("corral.error")

# The request of an `Upgrade: h2c` keeps none of its HTTP/1.1 connection headers as stream 1.
_UPGRADE_HEADERS = HOP_BY_HOP | {b"http2-settings", b"te"}
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
_PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR.value
_CANCEL = ErrorCode.CANCEL.value
_ENHANCE_YOUR_CALM = ErrorCode.ENHANCE_YOUR_CALM.value


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


class H2Protocol(H2Sender, asyncio.Protocol):
    __slots__ = (
        "server",
        "limits",
        "http1",
        "transport",
        "machine",
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
        "state",
        "loop",
        "flushing",
        "timed",
        "__weakref__",
    )

    def __init__(self, http1: HttpProtocol, limits: H2Limits) -> None:
        # What the HTTP/1.1 protocol learnt of the connection (addresses, PROXY header, TLS) carries over.
        self.server = http1.server
        self.limits = limits
        self.http1 = http1  # its class logs and counts (metrics) a finished response: see log_access
        self.transport: Any = None
        self.machine: H2Machine | None = None
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
        # The server's tick reads `protocol.state.request` of BUSY connections (the body timer): here the
        # connection itself answers (see `request`).
        self.state = self
        self.loop: Any = None
        self.flushing = False  # a flush_soon() is scheduled
        self.timed = self.server.access_log is not None

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: Any, upgrade: tuple[bytes, dict] | None = None) -> None:
        """`upgrade`: (the HTTP2-Settings header, the scope) of a bodiless HTTP/1.1 request answered `101`
        for `Upgrade: h2c` (RFC 7540 §3.2): that request becomes stream 1."""
        server = self.server
        limits = self.limits
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.flow = FlowControl(transport)
        # The pool's free room bounds the streams (each is an application instance), but never below RFC 9113
        # §6.5.2's advice of 100 (within the setting): a client's first requests leave before our SETTINGS
        # reach it. Streams past the pool's room are parked, like HTTP/1.1 requests.
        room = server.max_applications - len(server.application_instances)
        streams = min(limits.max_concurrent_streams, max(room, _MIN_STREAMS))
        # The connection window covers a few streams' windows: one slow stream does not stall the others,
        # and the body buffered per connection stays bounded.
        machine = self.machine = H2Machine(
            self,
            LocalSettings(
                streams,
                limits.initial_window_size,
                limits.max_frame_size,
                limits.max_header_list_size,
                limits.header_table_size,
                min(streams, 16) * limits.initial_window_size,
                limits.max_continuation_frames,
            ),
        )
        if upgrade is None:
            machine.initiate()
        else:
            try:
                first = machine.initiate_upgrade(upgrade[0])
            except ValueError:  # a malformed HTTP2-Settings (base64 of SETTINGS): the 101 is out, end here
                logger.info("Malformed HTTP2-Settings from %s: closing", self.peer)
                self.close(_PROTOCOL_ERROR)
                return
        self.flush()
        if upgrade is not None:
            self.upgraded_request(upgrade[1], first)
        if server.stopping:
            self.go_away()

    def upgraded_request(self, scope: dict, first: StreamState) -> None:
        """Stream 1: the HTTP/1.1 request that asked for the upgrade (it has no body)."""
        scope["http_version"] = "2"
        scope["headers"] = [(name, value) for name, value in scope["headers"] if name not in _UPGRADE_HEADERS]
        extensions = scope.get("extensions") or {}
        extensions["http.response.trailers"] = {}
        scope["extensions"] = extensions
        stream = H2Stream(self, first, scope, scope["method"] == "HEAD", self.timed)
        stream.body_complete = True
        self.streams[1] = stream
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
            self.machine.receive(data)  # type: ignore[union-attr]  # set in connection_made
        except ProtocolError as exc:
            # The GOAWAY (PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR...) is queued: send it, close.
            logger.info("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self.flush()
            self.close(goaway=False)
            return
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
        if self.machine is not None:
            self.machine.listener = None  # likewise

    # ------------------------------------------------------------------ what the client sent (H2Machine's listener)

    def on_request(self, flow: StreamState, head: RequestHead, end_stream: bool) -> None:
        server = self.server
        derived = head.derived
        if derived is None:
            derived = head.derived = _scope_parts(head)
        method, path, raw_path, query, forwarded = derived
        scope = {
            "type": "http",
            "asgi": ASGI,
            "http_version": "2",
            "server": self.sockname,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": server.root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": list(head.headers),
            "state": server.lifespan_state.copy(),
            "extensions": {"http.response.trailers": {}}
            if self.extensions is None
            else {**self.extensions, "http.response.trailers": {}},
        }
        stream = H2Stream(self, flow, scope, method == "HEAD", self.timed)
        stream.body_complete = end_stream
        self.streams[flow.stream_id] = stream
        if self.phase != BUSY:
            self.phase = BUSY
            self.since = server.tick
        proxy = server.proxy
        if proxy is not None and self.trusted is not False:
            try:
                if self.trusted is None:
                    proxy.apply(scope)  # a proxy without `trusts` (any object with apply(scope)) decides itself
                elif forwarded:
                    # Trust decided once for the connection; without a proxy header (noted once per header
                    # block, with its other derived parts) there is nothing to apply, as on HTTP/1.1.
                    proxy.apply(scope, True)
            except Exception:
                logger.exception("Could not apply proxy headers")
                stream.status = 400
                self.send_error(stream, 400)
                self.streams.pop(flow.stream_id, None)
                self._maybe_idle()
                return
        self.start(stream)

    def on_data(self, stream_id: int, data: bytes, flow_controlled: int, end_stream: bool) -> None:
        if not data and not end_stream and self._flood(_EMPTY):
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            # A stream we answered already: give the window back at once.
            if flow_controlled:
                self.machine.acknowledge(stream_id, flow_controlled)  # type: ignore[union-attr]  # set in connection_made
            return
        stream.on_data(data, flow_controlled)
        if end_stream:
            stream.on_end()

    def on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_end()

    def on_reset(self, stream_id: int, code: int, why: str | None) -> None:
        if why is not None:
            logger.info("HTTP/2 protocol error from %s: %s (%s)", self.peer, why, error_name(code))
        # The client's resets count, and so do those it provokes with frames that are stream errors.
        if self._flood(_RESETS):
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.disconnect()
            if not stream.running:  # parked: the pool skips it; nothing else holds it
                self.streams.pop(stream_id, None)
                self._maybe_idle()

    def on_window(self, stream_id: int) -> None:
        # DATA follows any window, one byte included. An update that lets a waiting response send only a few
        # bytes (under 1 KiB) is counted as a flood frame: reopening a shut window a few bytes at a time costs
        # the server a frame each, CPU for nothing. A large update, shared in small pieces by the streams that
        # wait on it, is not.
        machine = self.machine
        assert machine is not None
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is None or stream.window is None:
                return
            if 0 < min(stream.flow.send_window, machine.send_window) < _TINY and self._flood(_TRICKLE):
                return
            stream.window_opened()
        else:
            streams = self.streams.values()
            if 0 < machine.send_window < _TINY and any(s.window is not None for s in streams) and self._flood(_TRICKLE):
                return
            for stream in streams:
                stream.window_opened()

    def on_settings(self, window_changed: bool) -> None:
        if self._flood(_SETTINGS):
            return
        if window_changed:
            for stream in self.streams.values():
                stream.window_opened()

    def on_ping(self) -> None:
        self._flood(_PINGS)

    def on_priority(self) -> None:
        self._flood(_PRIORITY)

    def on_goaway(self, code: int) -> None:
        # The client's GOAWAY: nothing more is sent after it; the streams in flight are lost to it.
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
        self.close(_ENHANCE_YOUR_CALM)
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
                self.reset(stream, _CANCEL)

    def header_timeout(self) -> None:
        self.close()

    # ------------------------------------------------------------------ stopping, closing

    def go_away(self) -> None:
        """Graceful GOAWAY: refuse new streams, let those in flight finish (RFC 9113 §6.8), close after the
        last one."""
        if self.going_away or self.phase == CLOSED:
            return
        self.going_away = True
        self.machine.go_away()  # type: ignore[union-attr]  # set in connection_made
        self.flush()
        if not self.streams:
            self.close(goaway=False)

    def close(self, code: int = ErrorCode.NO_ERROR, goaway: bool = True) -> None:
        if self.phase == CLOSED:
            return
        if goaway and self.machine is not None:
            self.machine.close(code)
            self.flush()
        self.phase = CLOSED
        self._disconnect_all()
        self.transport.close()

    def _disconnect_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.disconnect()


def _scope_parts(head: RequestHead) -> tuple[str, str, bytes, bytes, bool]:
    """The scope's method, path, raw_path and query_string of a request head, and whether it has a proxy
    header (kept with the head)."""
    path = head.path
    if path[:1] == b"/":
        if b"#" in path:  # a client's own fragment (RFC 9110 §4.2.4): never the app's path or query
            path = path[: path.index(b"#")]
        raw_path, _, query = path.partition(b"?")
    else:  # OPTIONS *
        raw_path, query = path, b""
    method = head.method
    forwarded = any(name in PROXY_HEADERS for name, _ in head.headers)
    return METHODS.get(method) or method.decode("ascii", "replace"), decode_path(raw_path), raw_path, query, forwarded
