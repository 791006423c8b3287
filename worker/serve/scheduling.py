"""The worker process's CPU scheduling policy (`--scheduling-policy`): Linux's SCHED_BATCH unless told not to.

A worker with more than one thread - the WSGI pool, `sync_to_async`'s executors - hands the GIL back and
forth between them: the event loop's thread wakes for a read while a pool thread runs the application, and
with the normal policy (SCHED_OTHER) the kernel lets the thread it woke preempt the one running, at once.
The woken thread then finds the GIL held and sleeps again until the runner lets it go (at its next database
call, say), which wakes it, which preempts the runner again: about three of these round trips per request of
a Django view (1 ms) sharing a core with its loop, and 13 % of the worker's CPU spent in the kernel switching
(perf; 4 % with one thread). SCHED_BATCH is the kernel's policy for exactly this (sched(7): "workloads that
want a deterministic scheduling policy without interactivity causing extra preemptions (between the
workload's tasks)"): a thread woken under it does not preempt, it runs when the running one sleeps or has had
its share of the core. The loop then finds the GIL free and takes a batch of events at once.

What it changes besides, and why that is acceptable for a server: the worker's threads, when woken, also do
not preempt other processes on the core (they get the core at the next scheduling tick or when it frees, a
few milliseconds at most, not seconds: the share of CPU, nice values and cgroups' quotas are unchanged). A
thread that needs the GIL waited for it anyway (up to the 5 ms switch interval). Measured: see
docs/benchmarks.md ("The worker's threads and the kernel's scheduler").

Set in the forked worker before anything else runs there, so every thread it starts (the pool, executors,
the application's own) inherits it (pthread_create's default), and on the threads a fork hook started before
that; processes the application starts inherit it too. Not applied where the policy is not the default
one (a worker run under `chrt` or a real-time policy keeps it), nor where the platform has no SCHED_BATCH.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["apply_policy", "POLICIES"]

logger = logging.getLogger("corral.error")

#: The values of --scheduling-policy.
POLICIES = ("batch", "inherit")


def apply_policy(policy: str) -> str:
    """Give this process's threads (and the threads and processes they start) `policy`; returns what the
    calling thread has after.

    "inherit" leaves the policy the master had. "batch" sets SCHED_BATCH on every thread of the process that
    has the default policy (SCHED_OTHER): the calling one, and any a fork hook has started already
    (`os.register_at_fork`, a preloaded library restarting its exporter thread, say), since the policy is a
    thread's own. Where the kernel refuses it (a seccomp profile, say) the worker keeps its policy and says so
    at warning level, once per worker: serving is unaffected."""
    setter = getattr(os, "sched_setscheduler", None)
    batch = getattr(os, "SCHED_BATCH", None)
    if policy != "batch" or setter is None or batch is None:
        return "inherit"
    try:
        current = os.sched_getscheduler(0)
    except OSError:
        return "inherit"
    if current == batch:
        return "batch"
    if current != os.SCHED_OTHER:
        return "inherit"  # a policy someone chose (chrt, a real-time one): theirs
    try:
        # 0: the calling thread. The priority of SCHED_BATCH is 0; the nice value is kept.
        setter(0, batch, os.sched_param(0))
    except OSError as exc:
        logger.warning(
            "Worker %d keeps its CPU scheduling policy: SCHED_BATCH refused (%s); "
            "--scheduling-policy inherit silences this",
            os.getpid(),
            exc.strerror or exc,
        )
        return "inherit"
    for thread in _other_threads():
        try:
            if os.sched_getscheduler(thread) == os.SCHED_OTHER:
                setter(thread, batch, os.sched_param(0))
        except OSError:  # gone meanwhile, or refused: that thread keeps its policy
            pass
    return "batch"


def _other_threads() -> list[int]:
    """The ids of this process's threads but the calling one (Linux's /proc; none elsewhere)."""
    try:
        ids = [int(name) for name in os.listdir(f"/proc/{os.getpid()}/task")]
    except (OSError, ValueError):
        return []
    me = threading.get_native_id()
    return [tid for tid in ids if tid != me]
