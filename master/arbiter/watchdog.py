"""The master's watchdog, run on every pass of its loop: a worker whose event loop has not beaten for
`--timeout` gets its stack dumped (faulthandler, on DUMP_SIGNAL) and is killed `DUMP_GRACE` later; a worker
past a stop deadline is killed; a worker above `--max-worker-memory` is replaced (new worker first).

Liveness is proven from the worker's event loop (its heartbeat coroutine), not from a side thread: a blocked
loop is seen, and its stack is in the log.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import psutil

from corral.master.arbiter import workerproc
from corral.master.observe.logs import flush_error_log

__all__ = ["check", "DUMP_GRACE", "MIN_BOOT_TIMEOUT", "MEMORY_CHECK"]

logger = logging.getLogger("corral.master")

DUMP_GRACE = 0.3  # seconds between the stack-dump signal and SIGKILL for a timed-out worker
MIN_BOOT_TIMEOUT = 60.0  # a booting worker (importing the app, lifespan startup) gets at least this
MEMORY_CHECK = 3.0  # seconds between RSS checks


def check(arbiter: Any) -> None:
    """Kill overdue workers: no heartbeat for --timeout, past a stop or dump deadline; check memory."""
    now = time.monotonic()
    timeout = arbiter.settings.timeout
    for worker in list(arbiter.workers.values()):
        if worker.kill_at is not None:
            if now >= worker.kill_at:
                logger.warning("Killing worker %d (pid %d)", worker.number, worker.pid)
                worker.kill_at = None
                arbiter._signal_worker(worker, signal.SIGKILL)
            continue
        if timeout <= 0 or worker.retiring:
            continue
        limit = timeout if worker.ready else max(timeout, MIN_BOOT_TIMEOUT)
        silent = now - worker.last_beat
        if silent > limit:
            logger.error(
                "Worker %d (pid %d) timed out: no heartbeat for %.1fs (--timeout %g); its stack "
                "follows, then it is killed",
                worker.number,
                worker.pid,
                silent,
                timeout,
            )
            flush_error_log()
            worker.retiring = True  # counted out: its replacement starts now
            worker.cause = "timeout"
            worker.kill_at = now + DUMP_GRACE
            arbiter._signal_worker(worker, workerproc.DUMP_SIGNAL)
    if arbiter.settings.max_worker_memory and now >= arbiter.next_memory_check:
        arbiter.next_memory_check = now + MEMORY_CHECK
        for worker in arbiter.workers.values():
            if worker.retiring or worker.outdated or not worker.ready or worker.process is None:
                continue
            try:
                rss = worker.process.memory_info().rss
            except psutil.Error:
                continue
            if rss > arbiter.settings.max_worker_memory:
                logger.warning(
                    "Worker %d (pid %d) uses %d MiB (limit %d MiB): replacing it",
                    worker.number,
                    worker.pid,
                    rss >> 20,
                    arbiter.settings.max_worker_memory >> 20,
                )
                worker.outdated = True
                worker.cause = "memory"
