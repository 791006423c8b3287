"""Everything the master reports about itself, in one object the arbiter calls at its events.

The arbiter tells the `Observer` when a worker starts or goes (and why), when a reload begins or fails and
when it stops; once per pass of its loop it calls `tick()`. From that the observer keeps the counts that
survive worker replacement (corral.master.observe.metrics), serves `/metrics` (`--metrics-bind`), pushes statsd
(`--statsd-host`), talks to systemd (`NOTIFY_SOCKET`), and computes the figures `serve status` shows
(requests/s over the last seconds, p50/p99, pool occupancy, restarts by cause).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

from corral.master.observe.metrics import MasterCounts, Totals, live_totals, quantile, ready_sum, served
from corral.master.observe.metrics_http import MetricsServer
from corral.master.observe.sdnotify import Notifier
from corral.master.observe.statsd import StatsdClient, master_counters, statsd_lines
from corral.worker.edge.counters import DURATION_BOUNDS, LogCounter, collecting

__all__ = ["Observer", "WINDOW"]

logger = logging.getLogger("corral.master")

WINDOW = 10.0  # seconds of history behind requests/s and p50/p99
SAMPLE_EVERY = 1.0  # also how often statsd is sent, from the same sum
STATUS_EVERY = 5.0  # systemd STATUS= lines
RESTART_ONLY = ("metrics_bind", "statsd_host", "statsd_prefix", "dogstatsd_tags", "naming")


class ArbiterView(Protocol):
    workers: dict[int, Any]
    num_workers: int
    spawn_after: float
    started: float


class Observer:
    def __init__(self, arbiter: ArbiterView, settings: Any) -> None:
        self.arbiter = arbiter
        self.counts = MasterCounts()
        self.collecting = collecting(settings)
        self.metrics_server: MetricsServer | None = None
        self.statsd: StatsdClient | None = None
        self.notifier = Notifier()
        self.samples: deque[tuple[float, int, list[int]]] = deque()
        self.next_sample = 0.0
        self.next_status = 0.0
        self.statsd_before = Totals()
        self.statsd_master: dict[str, int] = {}
        self.ready_sent = False
        self.reloading = False
        self.settings = settings  # as the master started: the RESTART_ONLY ones stay so across reloads
        self.log_counter: LogCounter | None = None

    # ------------------------------------------------------------------ start and stop

    def start(self, selector: Any) -> None:
        """Bind --metrics-bind (BindError: the CLI's exit 6) and open the statsd socket."""
        settings = self.settings
        if settings.metrics_bind:
            # prometheus_client writes the page; imported here, so only --metrics-bind pays its import (~40 ms)
            from corral.master.observe.exposition import Exposition

            self.metrics_server = MetricsServer(settings.metrics_bind, Exposition(self.families).render)
            self.metrics_server.register(selector)
            logger.info("Metrics on http://%s/metrics", settings.metrics_bind)
        if self.collecting:
            self.log_counter = LogCounter(self.counts.logs)
            self.log_counter.install()
        if settings.statsd_host:
            try:
                self.statsd = StatsdClient(settings.statsd_host, settings.dogstatsd_tags)
            except OSError as exc:
                logger.error("statsd: cannot use %s: %s; no statsd metrics", settings.statsd_host, exc)

    def close_in_child(self) -> None:
        """A forked worker must not hold the master's metrics sockets."""
        if self.metrics_server is not None:
            for conn in self.metrics_server.conns.values():
                conn.sock.close()
            self.metrics_server.sock.close()
        if self.statsd is not None:
            self.statsd.sock.close()
        self.notifier.close()

    def close(self) -> None:
        if self.log_counter is not None:
            logging.getLogger("corral").removeHandler(self.log_counter)
        if self.statsd is not None:
            self.flush_statsd()
            self.statsd.close()
            self.statsd = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.notifier.close()

    # ------------------------------------------------------------------ the arbiter's events

    def worker_started(self) -> None:
        self.counts.starts += 1

    def worker_gone(self, worker: Any, cause: str) -> None:
        self.counts.worker_gone(worker.stats, cause)

    def keep_restart_only(self, settings: Any) -> Any:
        """`settings` with the metrics settings (and --naming) the master started with: its sockets are bound,
        the workers must go on collecting for them, and logs and statsd keep one naming."""
        changed = {
            name: getattr(self.settings, name)
            for name in RESTART_ONLY
            if getattr(settings, name) != getattr(self.settings, name)
        }
        if changed:
            logger.warning(
                "Reload: %s changes need a restart; keeping the current values",
                ", ".join("--" + name.replace("_", "-") for name in changed),
            )
            settings = settings.replace(**changed)
        return settings

    def reload_begun(self, settings: Any) -> Any:
        """A HUP with good settings: returns them as `keep_restart_only` does."""
        settings = self.keep_restart_only(settings)
        self.counts.reloads += 1
        if self.log_counter is not None:
            self.log_counter.install()  # a --log-config reload (dictConfig) may have dropped it
        self.reloading = True
        self.notifier.reloading()
        return settings

    def reload_failed(self) -> None:
        """A HUP whose settings or app failed: the running workers carry on (still ready)."""
        self.counts.reload_failures += 1
        self.notifier.reloading()
        self.notifier.ready(self.summary())

    def stopping(self) -> None:
        self.notifier.stopping()

    # ------------------------------------------------------------------ every pass of the loop

    def tick(self) -> None:
        now = time.monotonic()
        self.notifier.watchdog(now)  # sent from the loop: a stuck master stops petting the watchdog
        if self.metrics_server is not None:
            self.metrics_server.sweep(now)
        if now >= self.next_sample:
            self.next_sample = now + SAMPLE_EVERY
            totals = self.totals() if self.collecting else None  # one sum of the workers' counts for both
            self.sample(now, totals)
            if self.statsd is not None:
                self.flush_statsd(totals)
        if self.notifier.enabled:
            self.check_ready()
            if self.ready_sent and now >= self.next_status:
                self.next_status = now + STATUS_EVERY
                self.notifier.status(self.summary())

    def check_ready(self) -> None:
        if self.ready_sent and not self.reloading:
            return  # READY=1 is sent once, and again only to end a reload
        workers = self.arbiter.workers.values()
        serving = sum(1 for w in workers if w.ready and not w.retiring and not w.outdated)
        outdated = any(w.outdated and not w.retiring for w in workers)
        if serving >= self.arbiter.num_workers and not outdated:
            self.ready_sent = True
            self.reloading = False
            self.notifier.ready(self.summary())

    def sample(self, now: float, totals: Totals | None) -> None:
        if totals is not None:
            served, durations = totals.request_count, totals.durations
        else:
            served, durations = self.served(), []
        samples = self.samples
        samples.append((now, served, durations))
        while len(samples) > 2 and now - samples[1][0] >= WINDOW:
            samples.popleft()

    def flush_statsd(self, totals: Totals | None = None) -> None:
        assert self.statsd is not None
        if totals is None:
            totals = self.totals()
        workers = self.arbiter.workers.values()
        gauges = {
            "workers": len(workers),
            "pool.in_use": ready_sum(workers, "instances"),
            "pool.parked": ready_sum(workers, "parked"),
            "websocket.open": ready_sum(workers, "websockets"),
        }
        lines = statsd_lines(
            self.settings.statsd_prefix,
            self.settings.naming,
            totals,
            self.statsd_before,
            self.counts,
            self.statsd_master,
            gauges,
        )
        self.statsd_before = totals
        self.statsd_master = master_counters(self.counts)
        self.statsd.send(lines)

    # ------------------------------------------------------------------ figures

    def totals(self) -> Totals:
        return live_totals(self.counts, self.arbiter.workers.values())

    def served(self) -> int:
        return served(self.counts, self.arbiter.workers.values())

    def families(self) -> Iterator[Any]:
        """The /metrics page's metric families (prometheus_client's), read at each scrape."""
        from corral.master.observe.exposition import families  # loaded by start() with --metrics-bind

        arbiter = self.arbiter
        return families(
            self.counts,
            list(arbiter.workers.values()),
            target=arbiter.num_workers,
            backoff=arbiter.spawn_after - time.monotonic(),
            started=arbiter.started,
            collecting=self.collecting,
        )

    def rate(self) -> float:
        """Requests per second over the last WINDOW seconds (what the samples cover)."""
        samples = self.samples
        if len(samples) < 2:
            return 0.0
        (t0, n0, _), (t1, n1, _) = samples[0], samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def figures(self) -> dict[str, Any]:
        """The status document's `metrics` part: what /metrics would say, digested for a human."""
        workers = self.arbiter.workers.values()
        totals = self.totals() if self.collecting else None
        figures: dict[str, Any] = {
            # with metrics: every response (the server's own 500s and WebSocket handshakes too), as in /metrics
            "requests": totals.request_count if totals is not None else self.served(),
            "requests_per_second": round(self.rate(), 1),
            "window": round(self.samples[-1][0] - self.samples[0][0], 1) if len(self.samples) > 1 else 0.0,
            "in_flight": ready_sum(workers, "instances"),
            "pool_size": ready_sum(workers, "max_applications"),
            "parked": ready_sum(workers, "parked"),
            "websockets": ready_sum(workers, "websockets"),
            "worker_starts": self.counts.starts,
            "exits": {cause: n for cause, n in self.counts.exits.items() if n},
            "reloads": self.counts.reloads,
            "collecting": self.collecting,
        }
        if totals is not None:
            recent = totals.durations
            if len(self.samples) > 1 and self.samples[0][2]:
                old = self.samples[0][2]
                window = [a - b for a, b in zip(self.samples[-1][2], old)]
                if sum(window):
                    recent = window
            p50, p99 = quantile(0.5, recent, DURATION_BOUNDS), quantile(0.99, recent, DURATION_BOUNDS)
            figures["p50_ms"] = round(p50 * 1000, 3) if p50 is not None else None
            figures["p99_ms"] = round(p99 * 1000, 3) if p99 is not None else None
            figures["status_classes"] = {}
            for (_, status), n in totals.by_class().items():
                figures["status_classes"][status] = figures["status_classes"].get(status, 0) + n
            figures["rejected"] = int(totals.scalars["rej"])
        return figures

    def summary(self) -> str:
        """systemd's STATUS= line."""
        workers = self.arbiter.workers.values()
        serving = sum(1 for w in workers if w.ready and not w.retiring)
        in_flight = ready_sum(workers, "instances")
        return f"{serving} workers serving, {self.rate():.0f} req/s, {in_flight} in flight"
