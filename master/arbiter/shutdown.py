"""How a master stops its workers: the drain (`--drain-delay`), the graceful stop, the quick stop, the kill.

TERM: with `--drain-delay`, first a drain - every worker keeps serving and accepting while its health path
answers 503, so that load balancers take the host out of rotation - then the graceful stop: the listeners
close, each worker stops accepting and finishes what is in flight within `--graceful-timeout`, and whatever
overstays that (plus a margin) is killed. INT/QUIT: the quick stop, the same with a few seconds. A signal
during the wait changes course: INT/QUIT cuts a drain or a graceful wait short; a second TERM ends a drain.

The loop keeps the master's duties while it waits: signals, reaping, /metrics and the systemd watchdog.
"""

from __future__ import annotations

import logging
import queue
import signal
import time
from typing import Any

__all__ = ["drain", "stop"]

logger = logging.getLogger("corral.master")

QUICK_STOP = 5.0  # INT/QUIT: seconds before stragglers are killed
KILL_MARGIN = 5.0  # TERM: seconds past graceful_timeout before stragglers are killed
TICK = 0.5  # longest wait between two looks at the signal queue


def _next_signal(arbiter: Any) -> int | None:
    try:
        return arbiter.signals.get_nowait()
    except queue.Empty:
        return None


def drain(arbiter: Any, seconds: float) -> bool:
    """Fail the health path everywhere for `seconds` while serving. Returns False when an INT/QUIT asked for a
    quick stop meanwhile (a second TERM ends the drain early and goes on gracefully)."""
    logger.info("Draining for %g s: the health path fails while every request is still served", seconds)
    for worker in arbiter.workers.values():
        worker.channel.send("drain")
    deadline = time.monotonic() + seconds
    while arbiter.workers and time.monotonic() < deadline:
        arbiter.sleep(min(TICK, max(0.0, deadline - time.monotonic())))
        arbiter.observer.tick()
        while (sig := _next_signal(arbiter)) is not None:
            if sig in (signal.SIGINT, signal.SIGQUIT):
                logger.info("Drain cut short: quick stop")
                return False
            if sig == signal.SIGTERM:
                logger.info("Drain cut short: a second TERM")
                return True
        arbiter.reap_workers()
    logger.info("Drain over: stopping accepting, finishing what is in flight")
    return True


def stop(arbiter: Any, graceful: bool = True) -> None:
    """Stop every worker, SIGKILL what overstays; bounded."""
    if arbiter.stopping:
        return
    arbiter.stopping = True
    arbiter.observer.stopping()
    logger.info("Stopping (%s)", "graceful" if graceful else "quick")
    if graceful and arbiter.settings.drain_delay > 0:
        graceful = drain(arbiter, arbiter.settings.drain_delay)
    arbiter.close_listeners()
    for worker in list(arbiter.workers.values()):
        worker.retiring = False
        worker.cause = "stop"
        arbiter.retire(worker, "master stopping", graceful)
        worker.kill_at = None  # this loop's own deadline applies
    deadline = time.monotonic() + (arbiter.settings.graceful_timeout + KILL_MARGIN if graceful else QUICK_STOP)
    while arbiter.workers and time.monotonic() < deadline:
        arbiter.sleep()
        arbiter.observer.tick()  # /metrics keeps answering; the watchdog is petted while the loop runs
        while (sig := _next_signal(arbiter)) is not None:
            if sig in (signal.SIGINT, signal.SIGQUIT) and graceful:
                graceful = False  # a second, impatient signal: cut the graceful wait short
                deadline = min(deadline, time.monotonic() + QUICK_STOP)
                for worker in arbiter.workers.values():
                    arbiter._signal_worker(worker, signal.SIGQUIT)
        arbiter.reap_workers()
    for worker in list(arbiter.workers.values()):
        arbiter._signal_worker(worker, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while arbiter.workers and time.monotonic() < deadline:
        arbiter.reap_workers()
        if arbiter.workers:
            time.sleep(0.02)
