"""Minimum data rates: a request body or a response that moves slower than its minimum rate is ended, and its
pool slot freed (Kestrel's MinRequestBodyDataRate and MinResponseDataRate).

A client that sends a request head and then stalls in the body, or asks for a large response and never reads
it, holds an application instance; a thousand of them fill the pool and nobody else is served. Each transfer
gets a clock that runs only while the transfer waits on its client:

- a request body, while the application waits for it (`awaits_body()` of the request: an ASGI `receive()`
  with nothing to hand over; a WSGI app waiting for its pre-read body or blocked in a `wsgi.input` read) and
  the connection reads. Bytes: the body's bytes so far (the parser counts them anyway).
- a response, while the server has bytes the client does not take (`output_waiting()` of the connection:
  the transport above its high-water mark, a `sendfile` waiting for the socket, a closed connection still
  flushing). Bytes: what the client acknowledged since the wait began (TCP_INFO's `bytes_acked`), so the
  kernel's buffers, which take a megabyte or more before anything waits, count for nothing. On other
  sockets (unix: a proxy on the same host, which buffers for its own clients) responses are not timed.

Once its clock passes the grace period, a transfer must have moved `rate x time waited` bytes, else it is
ended: a body gets 408 and its connection closes (the application sees `http.disconnect`, a WSGI read
raises), a response's connection is reset (SO_LINGER 0: the kernel drops the send queue at once rather than
keeping it for a client that does not read). While the worker's pool is full (requests wait for a slot, the
worker stopped accepting) the grace is cut to `PRESSURE_GRACE`: a flood of stalled connections then holds
the pool for a second or two, not for the grace period, and an ordinary request waiting behind it gets its
slot.

Nothing is timed per connection, per request or per byte: the server's tick (one coroutine per worker, about
a second apart, like Kestrel's heartbeat) calls `RateSweep.check` for each HTTP/1.1 connection, and only a
transfer seen waiting costs more than a few attribute reads. Ended transfers are logged in one line per
worker every `REPORT_INTERVAL` seconds at most, not one per connection.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import BUSY, FRESH, WEBSOCKET

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = ["RateSweep", "Transfer", "bytes_acked", "PRESSURE_GRACE", "REPORT_INTERVAL", "RESPONSE"]

logger = logging.getLogger("corral.error")

#: The grace period while the worker's pool is full (at most the configured one).
PRESSURE_GRACE = 1.0

#: Seconds between two log lines of one worker about the transfers it ended.
REPORT_INTERVAL = 10.0

#: `Transfer.key` of a connection's output (a body's key is its request's number on the connection, >= 1).
RESPONSE = 0

_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux
# struct tcp_info's tcpi_bytes_acked (Linux 4.1+): a u64 at byte 120, after the fields every kernel has.
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120
_INFO_SIZE = _BYTES_ACKED_AT + _BYTES_ACKED.size


def bytes_acked(transport: Any) -> int | None:
    """Bytes of this connection's output the client has acknowledged (TCP), None when that is unknown."""
    if _TCP_INFO is None:
        return None
    try:
        info = transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    except (AttributeError, OSError):  # not TCP (unix socket), or gone
        return None
    if len(info) < _INFO_SIZE:
        return None
    return _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0]


class Transfer:
    """The clock of one transfer waiting on its client (kept on its connection, `HttpProtocol.rate`)."""

    __slots__ = ("key", "seen", "waited", "start")

    def __init__(self, key: int, seen: float, start: int) -> None:
        self.key = key  # RESPONSE, or the number of the request whose body is timed
        self.seen: float | None = seen  # when a sweep last saw it waiting (None: not waiting then)
        self.waited = 0.0  # seconds between two sweeps that both saw it waiting
        self.start = start  # the byte count when it began (a response's bytes_acked; 0 for a body)


class RateSweep:
    """The minimum rates of one worker, applied by its tick: `begin()` once per tick, `check()` for each
    HTTP/1.1 connection, `report()` after the sweep."""

    __slots__ = (
        "body_rate",
        "response_rate",
        "grace",
        "interval",
        "now",
        "limit",
        "ended_body",
        "ended_response",
        "window",
        "last_report",
        "acked",
    )

    def __init__(
        self,
        body_rate: int,
        response_rate: int,
        grace: float,
        interval: float,
        acked: Callable[[Any], int | None] = bytes_acked,
    ) -> None:
        self.body_rate = body_rate
        self.response_rate = response_rate
        self.grace = grace
        self.interval = interval  # the tick's: how often a transfer is looked at
        self.acked = acked
        self.now = 0.0
        self.limit = grace
        self.ended_body = 0
        self.ended_response = 0
        self.window = 0.0  # when the first transfer not reported yet was ended
        self.last_report = float("-inf")

    @classmethod
    def from_settings(cls, settings: Settings, interval: float) -> RateSweep | None:
        """None when both rates are off."""
        if not settings.min_request_body_rate and not settings.min_response_rate:
            return None
        return cls(settings.min_request_body_rate, settings.min_response_rate, settings.min_rate_grace, interval)

    def begin(self, now: float, pressure: bool) -> None:
        """A new sweep at `now` (the loop's clock); `pressure`: the pool is full and requests wait for it."""
        self.now = now
        grace = min(self.grace, PRESSURE_GRACE) if pressure else self.grace
        # Sweeps are `interval` apart, give or take the loop's lag: a transfer is judged at the first sweep
        # at which it has waited the grace less half an interval (a 5 s grace with 1 s ticks: after ~5 s).
        self.limit = grace - self.interval / 2

    def check(self, protocol: Any) -> None:
        """Time what `protocol` (an HttpProtocol) waits on its client; end it when it is below its rate."""
        phase = protocol.phase
        if phase == BUSY and self.body_rate:
            state = protocol.state
            request = state.request
            if request is not None and not protocol.flow.read_paused and request.awaits_body():
                self._body(protocol, state.requests, state.body_size)
                return
        if self.response_rate and phase != WEBSOCKET and phase != FRESH and protocol.output_waiting():
            self._response(protocol)
            return
        transfer = protocol.rate
        if transfer is not None:
            if transfer.key == RESPONSE or phase != BUSY or protocol.state.requests != transfer.key:
                protocol.rate = None  # the response caught up, or the request is over
            else:
                transfer.seen = None  # the application is not waiting for its body: the clock stops

    def _body(self, protocol: Any, key: int, received: int) -> None:
        transfer = protocol.rate
        if transfer is None or transfer.key != key:
            protocol.rate = Transfer(key, self.now, 0)
        elif self._slow(transfer, received, self.body_rate):
            protocol.rate = None
            self._opening()
            self.ended_body += 1
            protocol.body_timeout()  # 408 and close; the application gets http.disconnect

    def _response(self, protocol: Any) -> None:
        acked = self.acked(protocol.transport)
        if acked is None:
            return  # not TCP: not timed
        transfer = protocol.rate
        if transfer is None or transfer.key != RESPONSE:
            protocol.rate = Transfer(RESPONSE, self.now, acked)
        elif self._slow(transfer, acked - transfer.start, self.response_rate):
            protocol.rate = None
            self._opening()
            self.ended_response += 1
            protocol.abort()

    def _opening(self) -> None:
        """A transfer is about to be ended: the first of an interval opens its log window."""
        if not self.ended_body and not self.ended_response:
            self.window = self.now

    def _slow(self, transfer: Transfer, moved: int, rate: int) -> bool:
        now = self.now
        seen = transfer.seen
        transfer.seen = now
        if seen is None:
            return False  # it waits again from now on
        transfer.waited = waited = transfer.waited + (now - seen)
        return waited >= self.limit and moved < rate * waited

    def report(self) -> None:
        """Log what was ended since the last line, at most once per REPORT_INTERVAL (the first at once)."""
        ended = self.ended_body + self.ended_response
        now = self.now
        if not ended or now - self.last_report < REPORT_INTERVAL:
            return
        span = max(1.0, now - self.window + self.interval)  # (the window began with a sweep: its interval counts)
        logger.warning(
            "Ended %d connection(s) below the minimum data rate in the last %.0f s (request body %d, response "
            "%d; --min-request-body-rate, --min-response-rate)",
            ended,
            span,
            self.ended_body,
            self.ended_response,
        )
        self.ended_body = self.ended_response = 0
        self.last_report = now
