"""The master's view of the metrics: every worker's counts added up, kept across worker replacement.

Each worker sends its cumulative counts on every heartbeat (corral.worker.edge.counters). The master keeps the
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

The /metrics page itself is written by prometheus_client from these sums (corral.master.observe.exposition,
imported only with --metrics-bind).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import psutil

from corral.worker.edge.counters import DURATION_BOUNDS, LOG_LEVELS, METHODS, STATUS_SLOTS, WAIT_BOUNDS

__all__ = ["Totals", "MasterCounts", "WorkerView", "live_totals", "quantile", "ready_sum", "served", "EXIT_CAUSES"]

#: Why a worker exited, the `cause` label of corral_worker_exits_total.
EXIT_CAUSES = ("crash", "boot-failure", "timeout", "max-requests", "memory", "reload", "scale-down", "stop")

_SCALARS = ("bin", "bout", "rej", "park", "wso", "wmi", "wmo", "wbi", "wbo", "dsum", "wsum")


class Totals:
    """Counts added up from heartbeat snapshots (corral.worker.edge.counters.Counters.snapshot)."""

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

    __slots__ = ("starts", "exits", "boot_failures", "reloads", "reload_failures", "served_retired", "retired", "logs")

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
