"""What the master knows about each worker, how limits are split, and the status document."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from corral.master.arbiter.channel import Channel
from corral.shared.exitcodes import APP_IMPORT_ERROR, WORKER_BOOT_ERROR

__all__ = ["Worker", "split_limit", "status_document", "exit_cause", "RETIRE_CAUSES"]


def split_limit(total: int, workers: int) -> list[int]:
    """`total` instances over `workers`: total // workers each, the remainder to the first ones.

    The sum is exactly `total` unless total < workers: a worker needs at least 1, so each gets 1.
    """
    if workers <= 0:
        return []
    base, extra = divmod(total, workers)
    return [max(1, base + (1 if i < extra else 0)) for i in range(workers)]


@dataclass(eq=False)
class Worker:
    pid: int
    number: int
    channel: Channel
    generation: int
    share: int
    max_requests: int
    born: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.time)
    ready: bool = False
    last_beat: float = field(default_factory=time.monotonic)
    stats: dict[str, Any] = field(default_factory=dict)
    retiring: bool = False  # told to stop: no longer counted
    outdated: bool = False  # to be replaced, once a new worker is ready
    kill_at: float | None = None  # SIGKILL deadline
    cause: str = ""  # why it is being replaced or stopped (metrics: exits by cause); "" until decided
    process: psutil.Process | None = None

    def heartbeat(self, message: dict[str, Any]) -> None:
        """Take a heartbeat's figures. One without the metrics counts (`m`: the worker leaves them out of a
        heartbeat too big for one message, liveness first) says nothing about them, so the last ones stand:
        the master's sum would otherwise dip by this worker's counts (and statsd send them again when they
        came back), and a worker exiting then would take them out of the sum for good."""
        if "m" not in message and "m" in self.stats:
            message["m"] = self.stats["m"]
        self.stats = message

    @property
    def state(self) -> str:
        if self.retiring:
            return "stopping"
        if self.outdated:
            return "outdated"
        return "ready" if self.ready else "booting"


#: The `retire()` reasons as exit causes (corral_worker_exits_total's label); a cause set earlier wins.
RETIRE_CAUSES = {"fewer workers wanted": "scale-down", "replaced": "reload", "reload abandoned": "reload"}


def exit_cause(worker: Worker, code: int, stopping: bool) -> str:
    """Why `worker` exited with `code`: the cause the master gave it, else stop, boot failure or crash."""
    if worker.cause:
        return worker.cause
    if stopping:
        return "stop"
    if code in (WORKER_BOOT_ERROR, APP_IMPORT_ERROR) and not worker.ready:
        return "boot-failure"
    return "crash"


def status_document(arbiter: Any) -> dict[str, Any]:
    """What `serve status` shows: the master and each worker (counters from its last heartbeat)."""
    now = time.monotonic()
    workers = []
    for worker in sorted(arbiter.workers.values(), key=lambda w: w.number):
        rss, cpu = 0, 0.0
        if worker.process is not None:
            try:
                rss = worker.process.memory_info().rss
                cpu = worker.process.cpu_percent(None)
            except psutil.Error:
                pass
        stats = worker.stats
        workers.append(
            {
                "pid": worker.pid,
                "number": worker.number,
                "state": worker.state,
                "age": now - worker.born,
                "requests": stats.get("requests", 0),
                "instances": stats.get("instances", 0),
                "limit": stats.get("max_applications", worker.share),
                "share": worker.share,
                "connections": stats.get("connections", 0),
                "rss": rss,
                "cpu": cpu,
                "generation": worker.generation,
            }
        )
    master = {
        "pid": os.getpid(),
        "name": arbiter.name,
        "started": arbiter.started,
        "target": arbiter.num_workers,
        "max_applications": arbiter.settings.max_applications,
        "generation": arbiter.generation,
    }
    return {"master": master, "workers": workers, "metrics": arbiter.observer.figures()}
