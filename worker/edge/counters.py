"""What a worker counts for the metrics: plain integers on one slotted object, shipped on the heartbeat.

Counting costs a few integer increments per request and no system call: the worker keeps *cumulative*
totals here, and the heartbeat (worker -> master control channel, once a second) carries them to the
master. The master takes the difference from the previous heartbeat itself, so a heartbeat lost to a full
channel loses nothing, and when a worker is replaced its last totals are kept by the master (counters
never go backwards; see corral.master.observe.metrics).

The request metrics are recorded where the access log is written: the response is complete there, and its
status, size and duration are known. `Counters` is the server's `access_log` hook (see `meter`; it chains
to the real access log when there is one), and worker/serve/metered.py's protocol does the same inline. With
metrics off neither is installed and a request pays nothing.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = [
    "Counters",
    "meter",
    "METHODS",
    "METHOD_INDEX",
    "DURATION_BOUNDS",
    "WAIT_BOUNDS",
    "STATUS_SLOTS",
    "histogram",
    "collecting",
    "METHOD_OFFSET",
    "OTHER_OFFSET",
    "LogCounter",
    "LOG_LEVELS",
]

#: Method classes (label values); any other method counts as "other".
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
METHOD_INDEX = {name: index for index, name in enumerate(METHODS[:-1])}


def collecting(settings: Settings) -> bool:
    """Whether the worker records per-request metrics: only when something consumes them."""
    return bool(settings.metrics_bind or settings.statsd_host)


#: Request counts are kept per (method class, exact status): `requests[method * STATUS_SLOTS + status]`.
#: Exact codes feed statsd's `request.status.<code>` (gunicorn's names); Prometheus gets status classes
#: (bounded label cardinality).
STATUS_SLOTS = 1000
METHOD_OFFSET = {name: index * STATUS_SLOTS for name, index in METHOD_INDEX.items()}
OTHER_OFFSET = (len(METHODS) - 1) * STATUS_SLOTS

#: Histogram bucket upper bounds in seconds (Prometheus' `le`), +Inf implied. Request durations: a
#: plaintext response takes ~0.1 ms, a database page 5-50 ms; 10 s and beyond is a stuck request.
DURATION_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Time a request waited for a pool slot (parked), in seconds.
WAIT_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


class Counters:
    """A worker's cumulative counts (since it started); `snapshot()` is what the heartbeat carries."""

    __slots__ = (
        "requests",
        "durations",
        "duration_sum",
        "bytes_in",
        "bytes_out",
        "rejected",
        "parked",
        "waits",
        "wait_sum",
        "log",
        "logs",
        "ws_opened",
        "ws_closed",
        "ws_messages_in",
        "ws_messages_out",
        "ws_bytes_in",
        "ws_bytes_out",
    )

    def __init__(self) -> None:
        self.requests = [0] * (len(METHODS) * STATUS_SLOTS)
        self.durations = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        self.bytes_in = 0  # bytes read from HTTP connections (request heads and bodies)
        self.bytes_out = 0  # response body bytes
        self.rejected = 0  # answered 503 by --pool-full 503
        self.parked = 0  # requests that waited for a slot
        self.waits = [0] * (len(WAIT_BOUNDS) + 1)
        self.wait_sum = 0.0
        self.ws_opened = 0
        self.ws_closed: dict[int, int] = {}  # close code -> sockets
        self.ws_messages_in = 0
        self.ws_messages_out = 0
        self.ws_bytes_in = 0
        self.ws_bytes_out = 0
        self.log: AccessHook | None = None  # the access log to chain to, when Counters is the hook
        self.logs: dict[str, int] = dict.fromkeys(LOG_LEVELS, 0)  # error-log records (LogCounter)

    def __call__(self, scope: dict, status: int, nbytes: int, duration: float, headers: Any) -> None:
        """The access-log hook (see `meter`): one response is complete. (worker/serve/metered.py's protocol
        does the same inline: keep the two in step.)"""
        # status: 100-999, validated before any response is written (response.status_line)
        self.requests[METHOD_OFFSET.get(scope.get("method", "GET"), OTHER_OFFSET) + status] += 1
        self.durations[bisect_left(DURATION_BOUNDS, duration)] += 1
        self.duration_sum += duration
        self.bytes_out += nbytes
        log = self.log
        if log is not None:
            log(scope, status, nbytes, duration, headers)

    def websocket_closed(self, scope: dict, duration: float, session: Any) -> None:
        closed = getattr(self.log, "websocket_closed", None)  # (the close code is counted by the cycle)
        if closed is not None:
            closed(scope, duration, session)

    def reopen(self) -> None:
        reopen = getattr(self.log, "reopen", None)
        if reopen is not None:
            reopen()

    def parked_for(self, seconds: float) -> None:
        """A parked request got its slot after `seconds` (rare: only when the pool is full)."""
        self.parked += 1
        self.waits[bisect_left(WAIT_BOUNDS, seconds)] += 1
        self.wait_sum += seconds

    def count_close(self, code: int) -> None:
        closed = self.ws_closed
        closed[code] = closed.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """The cumulative counts, compact (JSON): only non-zero request slots are sent."""
        requests = self.requests
        return {
            "req": {str(i): n for i, n in enumerate(requests) if n},
            "dur": list(self.durations),
            "dsum": self.duration_sum,
            "bin": self.bytes_in,
            "bout": self.bytes_out,
            "rej": self.rejected,
            "park": self.parked,
            "wait": list(self.waits),
            "wsum": self.wait_sum,
            "wso": self.ws_opened,
            "wsc": {str(k): v for k, v in self.ws_closed.items()},
            "wmi": self.ws_messages_in,
            "wmo": self.ws_messages_out,
            "wbi": self.ws_bytes_in,
            "wbo": self.ws_bytes_out,
            "logs": dict(self.logs),
        }


#: gunicorn's statsd `log.<level>` counters: an error logged with a traceback counts as "exception".
LOG_LEVELS = ("critical", "error", "warning", "exception")


class LogCounter(logging.Handler):
    """Counts the error log's records by level (gunicorn's `log.critical` ... `log.exception`), into
    `counts`; installed on the "corral" logger of each process (`install`), never writes anything."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__(logging.WARNING)
        self.counts = counts

    def handle(self, record: logging.LogRecord) -> bool:  # no lock, no formatting: one dict add
        if record.levelno >= logging.CRITICAL:
            level = "critical"
        elif record.levelno >= logging.ERROR:
            level = "exception" if record.exc_info else "error"
        elif record.levelno >= logging.WARNING:
            level = "warning"
        else:
            return False
        self.counts[level] += 1
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does the work
        pass

    def install(self, logger_name: str = "corral") -> None:
        """Replace any LogCounter on the logger (a forked worker inherits its master's) with this one."""
        logger = logging.getLogger(logger_name)
        for handler in list(logger.handlers):
            if isinstance(handler, LogCounter):
                logger.removeHandler(handler)
        logger.addHandler(self)


def histogram(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[float, int]]:
    """Per-bucket counts -> cumulative (le, count) pairs, +Inf last (Prometheus' layout)."""
    out = []
    total = 0
    for bound, count in zip((*bounds, float("inf")), counts):
        total += count
        out.append((bound, total))
    return out


AccessHook = Callable[[dict, int, int, float, Any], None]


def meter(counters: Counters, log: AccessHook | None = None) -> Counters:
    """`counters` as the server's `access_log` hook: each response is counted, then logged (when `log`)."""
    counters.log = log
    return counters
