"""The master's side of its workers: fork them, read their control channels, retire them, reap them, and keep
their number and their shares of `--max-applications` right. `Arbiter`'s base (corral.master.arbiter.loop),
whose attributes the ones declared here are; the loop calls `manage_workers()` and `murder_workers()` once
per pass and `reap_workers()` on SIGCHLD. The child's side of a fork is corral.master.arbiter.workerproc,
the worker record corral.master.arbiter.workerinfo.

A reload replaces workers new-first: an old worker is retired only once enough new ones serve, and a reload
whose new workers cannot boot is rolled back (`worker_exited`). Workers that keep dying young are respawned
with a growing backoff; workers that keep failing to boot with none serving are a `CrashLoop`.
"""

from __future__ import annotations

import logging
import os
import random
import selectors
import signal
import socket
import time
from typing import Any

import psutil

from corral.master.arbiter import watchdog, workerproc
from corral.master.arbiter.appcheck import describe_exit
from corral.master.arbiter.channel import pair
from corral.master.arbiter.shutdown import KILL_MARGIN, QUICK_STOP
from corral.master.arbiter.upgrade import retire_old_master
from corral.master.arbiter.workerinfo import RETIRE_CAUSES, Worker, exit_cause, split_limit
from corral.master.hooks.run import ServerView, run_hook, unborn_worker, worker_view
from corral.master.observe.observer import Observer
from corral.master.status.control import ControlServer
from corral.master.status.pidfile import Pidfile
from corral.shared.exitcodes import APP_IMPORT_ERROR, WORKER_BOOT_ERROR
from corral.shared.settings import Settings

__all__ = ["Fleet", "CrashLoop"]

logger = logging.getLogger("corral.master")

MAX_BACKOFF = 10.0  # seconds between respawns when workers keep dying
DIED_YOUNG = 1.0  # seconds: a worker dying younger than this grows the respawn backoff


class CrashLoop(Exception):
    """Workers keep failing to boot; the master stopped everything. `str()` is the one-line reason."""


class Fleet:
    # The arbiter's state these methods read and write, all set in Arbiter.__init__.
    settings: Settings
    app: Any
    name: str
    num_workers: int
    listeners: list[socket.socket]
    reuse_port_addresses: list[str]
    workers: dict[int, Worker]
    worker_number: int
    generation: int
    stopping: bool
    failures: int
    boot_failures: int
    spawn_after: float
    rollback: tuple[Settings, int, Any] | None
    reexec_pid: int
    old_master: int
    all_ready_once: bool
    ssl_context: Any
    pidfile: Pidfile | None
    control: ControlServer | None
    selector: selectors.BaseSelector | None
    pipe: tuple[int, int] | None
    reloader: Any
    server: ServerView
    observer: Observer

    def manage_workers(self) -> None:
        """Spawn what is missing, retire what is too many, replace outdated workers new-first."""
        if self.stopping:
            return
        now = time.monotonic()
        live = [w for w in self.workers.values() if not w.retiring]
        fresh = [w for w in live if not w.outdated]
        missing = self.num_workers - len(fresh)
        if missing > 0 and now >= self.spawn_after:
            if self.failures > 1:
                missing = 1  # backing off: one at a time
            layout = split_limit(self.settings.max_applications, len(live) + missing)
            for index in range(missing):
                self.spawn_worker(layout[len(live) + index])
            live = [w for w in self.workers.values() if not w.retiring]
            fresh = [w for w in live if not w.outdated]
        extra = len(fresh) - self.num_workers
        if extra > 0:  # TTOU: booting ones first, then the oldest
            for worker in sorted(fresh, key=lambda w: (w.ready, w.number))[:extra]:
                self.retire(worker, "fewer workers wanted")
        ready_fresh = sum(1 for w in fresh if w.ready and not w.retiring)
        outdated = sorted((w for w in live if w.outdated), key=lambda w: w.number)
        # Stop an old worker only once enough new ones serve: capacity never drops below the target.
        while outdated and ready_fresh + len(outdated) > self.num_workers:
            self.retire(outdated.pop(0), "replaced")
        self.spread_limits()
        if self.old_master and not self.all_ready_once and ready_fresh >= self.num_workers:
            self.all_ready_once = True
            old, self.old_master = self.old_master, 0
            retire_old_master(old)

    def spread_limits(self) -> None:
        """Every counted worker gets its share of --max-applications; changed shares are sent live."""
        live = sorted((w for w in self.workers.values() if not w.retiring), key=lambda w: w.number)
        for worker, share in zip(live, split_limit(self.settings.max_applications, len(live))):
            if worker.share != share:
                worker.share = share
                worker.channel.send("limit", max_applications=share)

    def spawn_worker(self, share: int) -> None:
        self.worker_number += 1
        number = self.worker_number
        settings = self.settings
        master_end, worker_end = pair()
        jitter = random.randint(0, settings.max_requests_jitter) if settings.max_requests_jitter else 0
        max_requests = settings.max_requests + jitter if settings.max_requests else 0
        if settings.pre_fork is not None:
            run_hook(settings, "pre_fork", self.server, unborn_worker(number, self.server.cfg, max_requests))
        # Blocked across fork: a signal the child got before dropping the master's handlers would only
        # feed the child's copy of the queue (a TERM lost until the SIGKILL deadline).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, workerproc.MASTER_SIGNALS)
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        else:
            master_end.close()
            workerproc.run_child(
                self.app,
                settings,
                self.listeners,
                worker_end,
                number=number,
                name=self.name,
                reuse_port=self.reuse_port_addresses,
                cleanup=self._close_in_child,
                server=self.server,
                ssl_context=self.ssl_context,
                share=share,
                max_requests=max_requests,
            )
        worker_end.close()
        worker = Worker(pid, number, master_end, self.generation, share, max_requests)
        try:
            worker.process = psutil.Process(pid)
            worker.process.cpu_percent(None)  # prime: later calls measure from here
        except psutil.Error:
            pass
        self.workers[pid] = worker
        assert self.selector is not None
        self.selector.register(master_end.fileno(), selectors.EVENT_READ, self._worker_readable)
        self.observer.worker_started()
        logger.info("Booting worker %d (pid %d)", number, pid)

    def _close_in_child(self) -> None:
        # The child must not hold the master's ends of other channels (their workers would never see EOF
        # when the master dies) nor the self-pipe or the status socket.
        for worker in self.workers.values():
            worker.channel.close()
        if self.selector is not None:
            self.selector.close()
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
        if self.reloader is not None:
            self.reloader.close_in_child()
        if self.control is not None and self.control.sock is not None:
            self.control.sock.close()
        self.observer.close_in_child()

    def _worker_readable(self, key: Any) -> None:
        worker = next((w for w in self.workers.values() if w.channel.fileno() == key.fd), None)
        if worker is not None:
            self.read_worker(worker)

    def read_worker(self, worker: Worker) -> None:
        messages, eof = worker.channel.receive()
        now = time.monotonic()
        for message in messages:
            worker.last_beat = now
            kind = message.get("t")
            if kind == "ready" and not worker.ready:
                worker.ready = True
                self.boot_failures = 0
                if not worker.outdated and worker.generation == self.generation:
                    self.rollback = None  # the reloaded app boots: no going back
                logger.info("Worker %d (pid %d) ready", worker.number, worker.pid)
            elif kind == "recycle" and not worker.outdated:
                logger.warning(
                    "Worker %d (pid %d) asks to be replaced (%s)",
                    worker.number,
                    worker.pid,
                    message.get("why", "stuck requests"),
                )
                worker.outdated = True
            elif kind == "hb":
                worker.heartbeat(message)
                if (
                    worker.max_requests
                    and not worker.outdated
                    and not worker.retiring
                    and message.get("requests", 0) >= worker.max_requests
                ):
                    logger.info(
                        "Worker %d (pid %d) served %d requests: replacing it",
                        worker.number,
                        worker.pid,
                        message["requests"],
                    )
                    worker.outdated = True
                    worker.cause = "max-requests"
        if eof:
            self.selector.unregister(worker.channel.fileno())  # type: ignore[union-attr]  # a live worker has its channel
            worker.channel.close()

    def retire(self, worker: Worker, why: str, graceful: bool = True) -> None:
        """Tell a worker to stop (it finishes in-flight requests); SIGKILL if it overstays."""
        if worker.retiring:
            return
        worker.retiring = True
        worker.cause = worker.cause or RETIRE_CAUSES.get(why, "stop")
        logger.info("Stopping worker %d (pid %d): %s", worker.number, worker.pid, why)
        worker.kill_at = time.monotonic() + (self.settings.graceful_timeout + KILL_MARGIN if graceful else QUICK_STOP)
        self._signal_worker(worker, signal.SIGTERM if graceful else signal.SIGQUIT)

    def _signal_worker(self, worker: Worker, sig: int) -> None:
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid == self.reexec_pid:
                self.reexec_pid = 0
                logger.error("The new master (pid %d) exited with %s; this master carries on", pid, describe_exit(code))
                if self.pidfile is not None:
                    self.pidfile.rename(self.pidfile.path.removesuffix(".oldbin"))
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if not worker.channel.closed:
                self.read_worker(worker)  # its last heartbeat (final counts) may still be in the channel
            if not worker.channel.closed:
                try:
                    self.selector.unregister(worker.channel.fileno())  # type: ignore[union-attr]  # a live worker has its channel
                except (KeyError, ValueError):
                    pass
                worker.channel.close()
            self.observer.worker_gone(worker, exit_cause(worker, code, self.stopping))
            self.worker_exited(worker, code)

    def worker_exited(self, worker: Worker, code: int) -> None:
        if self.settings.child_exit is not None:
            run_hook(self.settings, "child_exit", self.server, worker_view(worker, self.server.cfg))
        if worker.retiring or self.stopping:
            logger.info("Worker %d (pid %d) exited with %s", worker.number, worker.pid, describe_exit(code))
            return
        logger.warning("Worker %d (pid %d) died with %s", worker.number, worker.pid, describe_exit(code))
        now = time.monotonic()
        # Only workers that die young are a loop to slow down; one that had been running is replaced at once.
        self.failures = self.failures + 1 if now - worker.born < DIED_YOUNG else 0
        if self.failures > 1:
            delay = min(MAX_BACKOFF, 0.1 * 2 ** (self.failures - 2))
            self.spawn_after = now + delay
            logger.warning("Workers keep dying: next start in %.1fs", delay)
        if code in (WORKER_BOOT_ERROR, APP_IMPORT_ERROR) and not worker.ready:
            self.boot_failures += 1
            serving = any(w.ready for w in self.workers.values())
            if self.boot_failures < self.settings.worker_boot_retries:
                return
            what = (
                "lifespan startup or post_fork failed"
                if code == WORKER_BOOT_ERROR
                else "the application failed to import"
            )
            if not serving:
                raise CrashLoop(
                    f"{self.boot_failures} workers in a row failed to boot ({what}) and none "
                    "is serving; see the log above"
                )
            if self.rollback is not None:  # a reload whose new workers cannot boot: keep the old ones
                logger.error(
                    "Reload abandoned: %d new workers in a row failed to boot (%s); the previous workers keep serving",
                    self.boot_failures,
                    what,
                )
                self.settings, self.num_workers, self.ssl_context = self.rollback
                self.rollback = None
                self.boot_failures = self.failures = 0
                self.spawn_after = 0.0
                for other in self.workers.values():
                    if other.ready and other.outdated and not other.retiring:
                        other.outdated = False
                for other in list(self.workers.values()):
                    if not other.ready:
                        self.retire(other, "reload abandoned")

    def murder_workers(self) -> None:
        """Kill overdue workers: no heartbeat for --timeout, past a stop or dump deadline; check memory."""
        watchdog.check(self)
