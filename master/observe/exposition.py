"""The /metrics page, written by prometheus_client from the master's sum of every worker's counts.

corral.master.observe.metrics keeps the counts (live workers' last heartbeats plus the totals of those that are
gone); `families` turns one reading of them into prometheus_client's metric families, and `Exposition`
renders them through a private `CollectorRegistry` with prometheus_client's own encoders. So the format is
the library's: counter families are named without `_total` and their samples with it, histograms get
`_bucket`/`_sum`/`_count`, and a scraper asking for OpenMetrics (`Accept: application/openmetrics-text`)
gets it. The registry is private: prometheus_client's default one (process and GC collectors of whichever
process imports it) is never rendered, so the page holds corral's figures only.

Imported by the master only with --metrics-bind: importing prometheus_client costs ~40 ms, which `serve`
without --metrics-bind does not pay.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import psutil
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from corral.master.observe.metrics import MasterCounts, WorkerView, live_totals, ready_sum, served
from corral.worker.edge.counters import DURATION_BOUNDS, LOG_LEVELS, WAIT_BOUNDS, histogram

__all__ = ["Exposition", "families"]

WORKER_LABELS = ("worker", "pid")

_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)


def _counter(name: str, help: str, value: float, unit: str = "") -> CounterMetricFamily:
    return CounterMetricFamily(name, help, value=value, unit=unit)


def _gauge(name: str, help: str, value: float, unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help, value=value, unit=unit)


def _labelled(family: _Family, samples: Iterable[tuple[tuple[object, ...], float]]) -> _Family:
    for labels, value in samples:
        family.add_metric([str(label) for label in labels], value)
    return family


def _histogram(name: str, help: str, counts: list[int], bounds: tuple[float, ...], total: float) -> Metric:
    buckets = [(floatToGoString(bound), count) for bound, count in histogram(counts, bounds)]
    return HistogramMetricFamily(name, help, buckets=buckets, sum_value=total, unit="seconds")


def families(
    counts: MasterCounts, workers: list[WorkerView], *, target: int, backoff: float, started: float, collecting: bool
) -> Iterator[Metric]:
    """The /metrics families: request metrics summed over every worker (live and gone), per-worker gauges,
    and the master's own counters. Names are the families' (a counter's samples add `_total`)."""
    if collecting:
        totals = live_totals(counts, workers)
        yield _labelled(
            CounterMetricFamily(
                "corral_http_requests", "HTTP responses by method class and status class.", labels=("method", "status")
            ),
            sorted(totals.by_class().items()),
        )
        yield _histogram(
            "corral_http_request_duration_seconds",
            "Time from the request head to the response's end.",
            totals.durations,
            DURATION_BOUNDS,
            totals.scalars["dsum"],
        )
        s = totals.scalars
        yield _counter(
            "corral_http_request_bytes", "Bytes read from HTTP connections (heads and bodies).", s["bin"], "bytes"
        )
        yield _counter("corral_http_response_bytes", "Response body bytes the application sent.", s["bout"], "bytes")
        yield _counter(
            "corral_pool_rejected", "Requests answered 503 because the pool was full (--pool-full 503).", s["rej"]
        )
        yield _histogram(
            "corral_pool_wait_seconds",
            "Time a request was parked waiting for a pool slot (--pool-full wait).",
            totals.waits,
            WAIT_BOUNDS,
            s["wsum"],
        )
        yield _counter("corral_websocket_opened", "WebSocket connections accepted.", s["wso"])
        yield _labelled(
            CounterMetricFamily(
                "corral_websocket_closed", "WebSocket connections closed, by close code.", labels=("code",)
            ),
            (((code,), n) for code, n in sorted(totals.closed.items())),
        )
        yield _counter("corral_websocket_messages_received", "WebSocket messages received.", s["wmi"])
        yield _counter("corral_websocket_messages_sent", "WebSocket messages sent.", s["wmo"])
        yield _labelled(
            CounterMetricFamily(
                "corral_log_messages",
                "Error-log records of the master and the workers, by level (exception: an error with a traceback).",
                labels=("level",),
            ),
            (((level,), totals.logs[level] + counts.logs[level]) for level in LOG_LEVELS),
        )
    yield _gauge(
        "corral_http_requests_in_flight",
        "Application instances running (HTTP and WebSocket).",
        ready_sum(workers, "instances"),
    )
    yield _gauge("corral_pool_parked", "Requests waiting for a pool slot.", ready_sum(workers, "parked"))
    yield _gauge("corral_websocket_open", "Open WebSocket connections.", ready_sum(workers, "websockets"))
    yield _counter(
        "corral_requests_served",
        "HTTP responses the application completed, all workers since the "
        "master started (counted with metrics off too).",
        served(counts, workers),
    )
    yield from _per_worker(sorted(workers, key=lambda x: x.number))
    yield _gauge("corral_workers", "Worker processes running (booting, serving or stopping).", len(workers))
    yield _gauge("corral_workers_target", "Workers wanted (-w, TTIN/TTOU).", target)
    yield _counter("corral_worker_starts", "Workers started.", counts.starts)
    yield _labelled(
        CounterMetricFamily("corral_worker_exits", "Workers exited, by cause.", labels=("cause",)),
        (((cause,), n) for cause, n in counts.exits.items()),
    )
    yield _counter(
        "corral_worker_boot_failures", "Workers that failed to boot (import or lifespan).", counts.boot_failures
    )
    yield _gauge(
        "corral_worker_backoff_seconds",
        "Seconds until the next worker start while backing off after repeated crashes (0: not backing off).",
        max(0.0, backoff),
        "seconds",
    )
    yield _labelled(
        CounterMetricFamily("corral_reloads", "HUP reloads, by result.", labels=("result",)),
        [(("ok",), counts.reloads), (("failed",), counts.reload_failures)],
    )
    yield _labelled(
        GaugeMetricFamily(
            "corral_master_start_time_seconds", "When the master started (Unix time).", labels=("pid",), unit="seconds"
        ),
        [((os.getpid(),), started)],
    )


def _per_worker(workers: list[WorkerView]) -> Iterator[Metric]:
    now = time.monotonic()
    size = GaugeMetricFamily(
        "corral_worker_pool_size", "The worker's share of --max-applications.", labels=WORKER_LABELS
    )
    use = GaugeMetricFamily(
        "corral_worker_pool_in_use", "Application instances running in the worker.", labels=WORKER_LABELS
    )
    rss = GaugeMetricFamily("corral_worker_resident_memory_bytes", "Worker RSS.", labels=WORKER_LABELS, unit="bytes")
    cpu = CounterMetricFamily(
        "corral_worker_cpu_seconds", "Worker CPU time (user + system).", labels=WORKER_LABELS, unit="seconds"
    )
    lag = GaugeMetricFamily(
        "corral_worker_event_loop_lag_seconds",
        "How late the worker's last heartbeat woke up.",
        labels=WORKER_LABELS,
        unit="seconds",
    )
    age = GaugeMetricFamily(
        "corral_worker_age_seconds", "Seconds since the worker was started.", labels=WORKER_LABELS, unit="seconds"
    )
    for x in workers:
        labels = [str(x.number), str(x.pid)]
        size.add_metric(labels, x.stats.get("max_applications", 0))
        use.add_metric(labels, x.stats.get("instances", 0))
        lag.add_metric(labels, float(x.stats.get("lag", 0.0)))
        age.add_metric(labels, now - x.born)
        if x.process is not None:
            try:
                with x.process.oneshot():
                    memory = x.process.memory_info().rss
                    times = x.process.cpu_times()
            except psutil.Error:  # gone since its last heartbeat: no figure rather than a stale one
                continue
            rss.add_metric(labels, memory)
            cpu.add_metric(labels, times.user + times.system)
    return iter((size, use, rss, cpu, lag, age))


class _Collector(Collector):
    """prometheus_client's collector over a function that reads the figures at each scrape."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return self.read()


class Exposition:
    """A private registry holding one collector; `render(accept)` is the /metrics answer's body and type."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        # auto_describe off (the default, said for the reader): registering must not read the figures.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(collect))

    def render(self, accept: str) -> tuple[bytes, str]:
        """The page in the format `accept` asks for (prometheus_client's choice: OpenMetrics when asked,
        else the text format 0.0.4) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
