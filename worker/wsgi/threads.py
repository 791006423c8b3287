"""The threads that run native WSGI requests: `--threads` of them, handed work in batches.

A request costs the server about as much as its thread hand-offs: with `ThreadPoolExecutor` every request
wakes a thread (a futex wake and a context switch) and each wake-up then fights the event loop for the
GIL - about three context switches per request measured on one core (bench/wsgi_dispatch.py). Here the
event loop appends requests to a deque and wakes at most one idle thread per batch; a thread that takes a
request while more wait wakes one more (so blocking applications still get every thread), and a thread
only sleeps when the deque is empty. Under load a thread runs many requests per wake-up.

A thread that runs a slow request counts as awake meanwhile, so a request queued behind it waits for it:
`nudge()` (the server's tick, at most a second apart) wakes a sleeping thread for a request still queued
a tick later,
and threads stuck past --request-timeout (`stuck`, kept by corral.worker.wsgi.layers) count as asleep.

A thread whose request waits on its client - for request body bytes that have not come, or for the client to
take the response it is behind on - steps aside (`client_wait()`): it no longer counts against `size`, so a
queued request gets a thread (started if none sleeps) instead of waiting behind clients that stall; a flood
of such clients is then found out all at once by the minimum data rates (corral.worker.edge.datarate), not
`size` at a time. The extra threads end as soon as more than `size` run application code with nothing
queued (each runs at most one request past that); every one of them holds a pool slot, so the pool's limit
bounds them.

Threads start on first use (after fork) and are daemons; `close()` stops them once their work is done.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["WorkerThreads", "Job"]

logger = logging.getLogger("corral.error")


class Job(Protocol):
    def run(self) -> None: ...

    def cancel(self) -> bool: ...


class WorkerThreads:
    __slots__ = ("size", "jobs", "lock", "idle", "threads", "closed", "name", "stuck", "waiting", "aside", "surplus")

    def __init__(self, size: int, name: str = "corral-wsgi") -> None:
        if size < 1:
            raise ValueError(f"threads must be >= 1, got {size}")
        self.size = size
        self.name = name
        self.jobs: deque[Job] = deque()
        self.lock = threading.Lock()
        self.idle: list[threading.Lock] = []  # the sleeping threads' wake-up locks (held: asleep)
        self.threads: list[threading.Thread] = []
        self.closed = False
        self.stuck = 0  # threads running a request past --request-timeout: never free again (before it returns)
        self.waiting: Job | None = None  # the queue's first job at the last nudge()
        self.aside = 0  # threads whose request waits on its client (client_wait): not counted against `size`
        self.surplus = False  # more than `size` threads exist (started while others stood aside)

    def submit(self, job: Job) -> None:
        """Queue `job` (event-loop side); wakes a thread only if none is awake to take it."""
        if self.closed:
            job.cancel()
            return
        self.jobs.append(job)
        if len(self.idle) + self.stuck + self.aside >= len(self.threads):
            self.wake()  # nobody is awake (an awake thread looks at the deque again before it sleeps)

    def all_idle(self) -> bool:
        """Nothing queued, and every thread started (none yet, maybe) asleep: no request is running here."""
        return not self.jobs and len(self.idle) == len(self.threads)

    def nudge(self) -> None:
        """Called every tick: when the request first in the queue was already first at the last tick (the
        awake threads are all in slow requests), wake a sleeping thread for it. Only then: under load the
        queue moves, and waking threads that it does not need costs context switches on every request."""
        try:
            head = self.jobs[0]
        except IndexError:
            head = None
        if head is not None and head is self.waiting and (self.idle or len(self.threads) - self.aside < self.size):
            self.wake()
        self.waiting = head

    def wake(self) -> None:
        with self.lock:
            if self.idle:
                waking = self.idle.pop()
            elif len(self.threads) - self.aside < self.size:
                waking = None
                self._start()
            else:
                return  # every thread is awake: one of them will take the job
        if waking is not None:
            waking.release()

    def _start(self) -> None:  # with the lock held
        thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self.threads)}", daemon=True)
        self.threads.append(thread)
        if len(self.threads) > self.size:
            self.surplus = True
        thread.start()

    def _work(self) -> None:
        jobs = self.jobs
        wakeup = threading.Lock()
        wakeup.acquire()
        while True:
            try:
                job = jobs.popleft()
            except IndexError:
                with self.lock:
                    if jobs:
                        continue  # queued after our look: take it
                    if self.closed or (self.surplus and len(self.threads) - self.aside > self.size):
                        self._retire()  # (the latter: an extra thread, started while others stood aside)
                        return
                    self.idle.append(wakeup)
                wakeup.acquire()  # until wake() releases it
                continue
            if jobs and self.idle:
                self.wake()  # more are waiting: let a sleeping thread take the next one
            try:
                job.run()
            except BaseException:  # a job reports its own errors; this would be a bug of ours
                logger.exception("WSGI job failed")
            del job
            if self.surplus:  # (one attribute per request when there is none: the hot path)
                with self.lock:
                    if len(self.threads) - self.aside > self.size:
                        self._retire()
                        return

    def _retire(self) -> None:  # with the lock held: this thread ends
        if not self.closed:
            self.threads.remove(threading.current_thread())
            self.surplus = len(self.threads) > self.size

    @contextmanager
    def client_wait(self) -> Iterator[None]:
        """Around a wait of the calling pool thread on its request's client (see the module docstring)."""
        with self.lock:
            self.aside += 1
            start = self.jobs and not self.idle and not self.closed and len(self.threads) - self.aside < self.size
            if start:
                self._start()  # a queued request gets this thread's place now
        try:
            yield
        finally:
            with self.lock:
                self.aside -= 1

    def close(self) -> None:
        """Let the threads finish what is queued, then end; cancels nothing."""
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for wakeup in idle:
            wakeup.release()
