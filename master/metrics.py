"""The master's view of the metrics: every worker's counts added up, kept across worker replacement.

Each worker sends its cumulative counts on every heartbeat (corral.worker.counters). The master keeps the
last ones per live worker, and when a worker exits (after reading its final heartbeat) adds its totals to
`retired`: the sum `retired + live workers` only ever grows, so `rate()` does not dip when a worker is
replaced. prometheus_client's multiprocess mode gets this wrong for servers: it keeps one file per pid
and either sums dead workers' files forever (a directory that grows with every restart, and gauges that
need `mark_process_dead`) or drops them (counters fall back on every restart); here the dead worker's
totals are one in-memory sum in the master, and nothing touches the disk.

The trade-off: counts reach the master once per heartbeat (about a second late), and the counts of a
worker killed by SIGKILL since its last heartbeat are lost (a worker that stops normally sends a final
heartbeat). A scrape sees one consistent sum from a process that is not serving requests, so a saturated
worker cannot hide its own figures.

`render_prometheus` writes the text exposition format (version 0.0.4) by hand: it is a few lines of
code, and importing prometheus_client costs the master 50-110 ms of start-up on this machine for what
would only be string formatting. The tests parse the output with prometheus_client's own parser.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Iterable, Protocol

import psutil

from corral.worker.counters import DURATION_BOUNDS, LOG_LEVELS, METHODS, STATUS_SLOTS, WAIT_BOUNDS, histogram

__all__ = ["Totals", "MasterCounts", "render_prometheus", "quantile", "ready_sum", "served", "CONTENT_TYPE",
           "EXIT_CAUSES"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Why a worker exited, the `cause` label of corral_worker_exits_total.
EXIT_CAUSES = ("crash", "boot-failure", "timeout", "max-requests", "memory", "reload", "scale-down", "stop")

_SCALARS = ("bin", "bout", "rej", "park", "wso", "wmi", "wmo", "wbi", "wbo", "dsum", "wsum")


class Totals:
    """Counts added up from heartbeat snapshots (corral.worker.counters.Counters.snapshot)."""

    __slots__ = ("requests", "durations", "waits", "closed", "scalars", "logs")

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.durations = [0] * (len(DURATION_BOUNDS) + 1)
        self.waits = [0] * (len(WAIT_BOUNDS) + 1)
        self.closed: dict[int, int] = {}
        self.scalars: dict[str, float] = dict.fromkeys(_SCALARS, 0)
        self.logs: dict[str, int] = dict.fromkeys(LOG_LEVELS, 0)

    def add(self, snapshot: dict[str, Any] | None) -> None:
        if not snapshot:
            return
        requests = self.requests
        for slot, count in snapshot.get("req", {}).items():
            requests[int(slot)] = requests.get(int(slot), 0) + count
        for index, count in enumerate(snapshot.get("dur", ())[: len(self.durations)]):
            self.durations[index] += count
        for index, count in enumerate(snapshot.get("wait", ())[: len(self.waits)]):
            self.waits[index] += count
        for code, count in snapshot.get("wsc", {}).items():
            self.closed[int(code)] = self.closed.get(int(code), 0) + count
        scalars = self.scalars
        for key in _SCALARS:
            scalars[key] += snapshot.get(key, 0)
        for level, count in snapshot.get("logs", {}).items():
            if level in self.logs:
                self.logs[level] += count

    def copy(self) -> Totals:
        other = Totals()
        other.requests = dict(self.requests)
        other.durations = list(self.durations)
        other.waits = list(self.waits)
        other.closed = dict(self.closed)
        other.scalars = dict(self.scalars)
        other.logs = dict(self.logs)
        return other

    @property
    def request_count(self) -> int:
        return sum(self.requests.values())

    def by_status(self) -> dict[int, int]:
        """Exact status code -> requests."""
        out: dict[int, int] = {}
        for slot, count in self.requests.items():
            status = slot % STATUS_SLOTS
            out[status] = out.get(status, 0) + count
        return out

    def by_class(self) -> dict[tuple[str, str], int]:
        """(method class, status class) -> requests."""
        out: dict[tuple[str, str], int] = {}
        for slot, count in self.requests.items():
            method, status = divmod(slot, STATUS_SLOTS)
            key = (METHODS[method], f"{status // 100}xx" if status else "other")
            out[key] = out.get(key, 0) + count
        return out


class MasterCounts:
    """What only the master knows: worker starts and exits, boot failures, reloads."""

    __slots__ = ("starts", "exits", "boot_failures", "reloads", "reload_failures", "served_retired", "retired",
                 "logs")

    def __init__(self) -> None:
        self.starts = 0
        self.exits: dict[str, int] = dict.fromkeys(EXIT_CAUSES, 0)
        self.boot_failures = 0
        self.reloads = 0
        self.reload_failures = 0
        self.served_retired = 0  # requests served by workers that are gone (the heartbeats' `requests`)
        self.retired = Totals()  # metrics counts of workers that are gone
        self.logs: dict[str, int] = dict.fromkeys(LOG_LEVELS, 0)  # the master's own error-log records

    def worker_gone(self, stats: dict[str, Any], cause: str) -> None:
        self.exits[cause] = self.exits.get(cause, 0) + 1
        if cause == "boot-failure":
            self.boot_failures += 1
        self.served_retired += int(stats.get("requests", 0))
        self.retired.add(stats.get("m"))


class WorkerView(Protocol):
    pid: int
    number: int
    born: float
    ready: bool
    stats: dict[str, Any]
    process: psutil.Process | None


def live_totals(counts: MasterCounts, workers: Iterable[WorkerView]) -> Totals:
    totals = counts.retired.copy()
    for worker in workers:
        totals.add(worker.stats.get("m"))
    return totals


def ready_sum(workers: Iterable[WorkerView], key: str) -> int:
    """A pool figure of the heartbeats (instances, parked, websockets, max_applications) added up over the
    ready workers."""
    return sum(worker.stats.get(key, 0) for worker in workers if worker.ready)


def served(counts: MasterCounts, workers: Iterable[WorkerView]) -> int:
    """Responses the application completed since the master started (counted with metrics off too)."""
    return counts.served_retired + sum(worker.stats.get("requests", 0) for worker in workers)


def quantile(q: float, counts: list[int], bounds: tuple[float, ...]) -> float | None:
    """The q-quantile from per-bucket counts, interpolated inside its bucket (Prometheus'
    histogram_quantile); None without observations."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for index, count in enumerate(counts):
        upper = bounds[index] if index < len(bounds) else math.inf
        if seen + count >= rank and count:
            if upper == math.inf:
                return lower  # in the +Inf bucket: the highest finite bound is all we know
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper if upper != math.inf else lower
    return lower


# ---------------------------------------------------------------------------- the exposition format


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str, samples: Iterable[tuple[dict[str, Any], float]],
               suffix: str = "") -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, help: str, counts: list[int], bounds: tuple[float, ...], total: float) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} histogram")
        cumulative = histogram(counts, bounds)
        for bound, count in cumulative:
            le = "+Inf" if bound == math.inf else repr(float(bound))
            self.lines.append(f'{name}_bucket{{le="{le}"}} {count}')
        self.lines.append(f"{name}_sum {_number(total)}")
        self.lines.append(f"{name}_count {cumulative[-1][1]}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_prometheus(counts: MasterCounts, workers: list[Any], *, target: int, backoff: float,
                      started: float, collecting: bool) -> str:
    """The /metrics page: request metrics summed over every worker (live and gone), per-worker gauges,
    and the master's own counters."""
    w = _Writer()
    if collecting:
        totals = live_totals(counts, workers)
        by_class = totals.by_class()
        w.family("corral_http_requests", "counter", "HTTP responses by method class and status class.",
                 [({"method": m, "status": s}, n) for (m, s), n in sorted(by_class.items())], "_total")
        w.histogram("corral_http_request_duration_seconds", "Time from the request head to the response's end.",
                    totals.durations, DURATION_BOUNDS, totals.scalars["dsum"])
        s = totals.scalars
        w.family("corral_http_request_bytes", "counter", "Bytes read from HTTP connections (heads and bodies).",
                 [({}, s["bin"])], "_total")
        w.family("corral_http_response_bytes", "counter", "Response body bytes the application sent.", [({}, s["bout"])], "_total")
        w.family("corral_pool_rejected", "counter", "Requests answered 503 because the pool was full "
                 "(--pool-full 503).", [({}, s["rej"])], "_total")
        w.histogram("corral_pool_wait_seconds", "Time a request was parked waiting for a pool slot "
                    "(--pool-full wait).", totals.waits, WAIT_BOUNDS, s["wsum"])
        w.family("corral_websocket_opened", "counter", "WebSocket connections accepted.", [({}, s["wso"])], "_total")
        w.family("corral_websocket_closed", "counter", "WebSocket connections closed, by close code.",
                 [({"code": code}, n) for code, n in sorted(totals.closed.items())], "_total")
        w.family("corral_websocket_messages_received", "counter", "WebSocket messages received.",
                 [({}, s["wmi"])], "_total")
        w.family("corral_websocket_messages_sent", "counter", "WebSocket messages sent.", [({}, s["wmo"])], "_total")
        logs = {level: totals.logs[level] + counts.logs[level] for level in LOG_LEVELS}
        w.family("corral_log_messages", "counter", "Error-log records of the master and the workers, by level "
                 "(exception: an error with a traceback).", [({"level": k}, n) for k, n in logs.items()], "_total")
    w.family("corral_http_requests_in_flight", "gauge", "Application instances running (HTTP and WebSocket).",
             [({}, ready_sum(workers, "instances"))])
    w.family("corral_pool_parked", "gauge", "Requests waiting for a pool slot.", [({}, ready_sum(workers, "parked"))])
    w.family("corral_websocket_open", "gauge", "Open WebSocket connections.", [({}, ready_sum(workers, "websockets"))])
    w.family("corral_requests_served", "counter", "HTTP responses the application completed, all workers since "
             "the master started (counted with metrics off too).", [({}, served(counts, workers))], "_total")
    # per worker
    now = time.monotonic()
    rows = sorted(workers, key=lambda x: x.number)
    per: dict[str, list[tuple[dict[str, Any], float]]] = {k: [] for k in ("size", "use", "rss", "cpu", "lag", "age")}
    for x in rows:
        labels = {"worker": x.number, "pid": x.pid}
        per["size"].append((labels, x.stats.get("max_applications", 0)))
        per["use"].append((labels, x.stats.get("instances", 0)))
        per["lag"].append((labels, float(x.stats.get("lag", 0.0))))
        per["age"].append((labels, now - x.born))
        if x.process is not None:
            try:
                with x.process.oneshot():
                    per["rss"].append((labels, x.process.memory_info().rss))
                    times = x.process.cpu_times()
                    per["cpu"].append((labels, times.user + times.system))
            except psutil.Error:
                pass
    w.family("corral_worker_pool_size", "gauge", "The worker's share of --max-applications.", per["size"])
    w.family("corral_worker_pool_in_use", "gauge", "Application instances running in the worker.", per["use"])
    w.family("corral_worker_resident_memory_bytes", "gauge", "Worker RSS.", per["rss"])
    w.family("corral_worker_cpu_seconds", "counter", "Worker CPU time (user + system).", per["cpu"], "_total")
    w.family("corral_worker_event_loop_lag_seconds", "gauge", "How late the worker's last heartbeat woke up.",
             per["lag"])
    w.family("corral_worker_age_seconds", "gauge", "Seconds since the worker was started.", per["age"])
    # master
    w.family("corral_workers", "gauge", "Worker processes running (booting, serving or stopping).",
             [({}, len(workers))])
    w.family("corral_workers_target", "gauge", "Workers wanted (-w, TTIN/TTOU).", [({}, target)])
    w.family("corral_worker_starts", "counter", "Workers started.", [({}, counts.starts)], "_total")
    w.family("corral_worker_exits", "counter", "Workers exited, by cause.",
             [({"cause": cause}, n) for cause, n in counts.exits.items()], "_total")
    w.family("corral_worker_boot_failures", "counter", "Workers that failed to boot (import or lifespan).",
             [({}, counts.boot_failures)], "_total")
    w.family("corral_worker_backoff_seconds", "gauge", "Seconds until the next worker start while backing off "
             "after repeated crashes (0: not backing off).", [({}, max(0.0, backoff))])
    w.family("corral_reloads", "counter", "HUP reloads, by result.",
             [({"result": "ok"}, counts.reloads), ({"result": "failed"}, counts.reload_failures)], "_total")
    w.family("corral_master_start_time_seconds", "gauge", "When the master started (Unix time).",
             [({"pid": os.getpid()}, started)])
    return w.text()
