"""The arbiter: one master loop that keeps the right number of healthy workers serving.

gunicorn's shape, smaller. Signal handlers do no work: they `put_nowait` the signal on a queue, and
`signal.set_wakeup_fd` on a self-pipe wakes the loop's `select`. The loop then runs the verb-named
`handle_<sig>` methods, `murder_workers()` (heartbeat watchdog, kill deadlines, memory) and
`manage_workers()` (spawn, retire, replace new-first, spread the instance limits) once per pass; those and
the rest of the workers' lives (forking, reading their channels, reaping) are `Fleet`'s, this class's base
(corral.master.arbiter.fleet). Here: starting (pid file, app check, sockets), the loop, the signals, the
USR2 upgrade and the cleanup.

Each worker has a SOCK_SEQPACKET control channel (see channel.py): heartbeats and `ready` come up, limit
changes and stop requests go down. Errors that prevent a start are raised as typed exceptions; the CLI
turns them into exit codes.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from corral.master.arbiter import shutdown, workerproc
from corral.master.arbiter.appcheck import AppCheckError, check_app
from corral.master.arbiter.fleet import CrashLoop, Fleet
from corral.master.arbiter.proctitle import set_title
from corral.master.arbiter.upgrade import INHERIT_FDS_ENV, OLD_MASTER_ENV, start_new_master
from corral.master.arbiter.workerinfo import Worker, status_document
from corral.master.hooks.run import HookConfig, ServerView, child_view, run_hook
from corral.master.listen.sockets import bind_all, close_all, describe_listener, parse_address, systemd_sockets
from corral.master.listen.tls import server_context
from corral.master.observe.logs import reopen_logs, setup_logging
from corral.master.observe.observer import Observer
from corral.master.status.control import ControlServer
from corral.master.status.discover import register
from corral.master.status.pidfile import Pidfile, pid_alive
from corral.shared.settings import SettingError, Settings
from corral.worker.app.load import AppImportError, import_app

__all__ = ["Arbiter", "CrashLoop", "AppCheckError"]

logger = logging.getLogger("corral.master")

TICK = 0.5  # longest select() wait


class Arbiter(Fleet):
    def __init__(
        self,
        spec: str,
        settings: Settings,
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.reload = reload
        self.name = settings.proc_name or spec
        self.num_workers = settings.workers
        self.app: Any = spec  # the preloaded application object with --preload
        self.listeners: list[socket.socket] = []
        self.owned_paths: list[str] = []  # unix socket files we bound (and so remove)
        self.reuse_port_addresses: list[str] = []
        self.workers: dict[int, Worker] = {}
        self.worker_number = 0
        self.generation = 0
        self.pidfile: Pidfile | None = None
        self.control: ControlServer | None = None
        self.selector: selectors.BaseSelector | None = None
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.pipe: tuple[int, int] | None = None
        self.stopping = False
        self.failures = 0  # unexpected deaths in a row (backoff)
        self.boot_failures = 0  # boot errors in a row with no worker becoming ready
        self.spawn_after = 0.0
        self.next_memory_check = 0.0
        self.reexec_pid = 0  # the new master after USR2
        self.ssl_context: Any = None  # --certfile: built at setup and on HUP (corral.master.listen.tls)
        self.rollback: tuple[Settings, int, Any] | None = None  # what a HUP replaced, until a new worker is ready
        self.old_master = int(os.environ.pop(OLD_MASTER_ENV, "0") or 0)  # we are that new master
        self.start_cwd = os.getcwd()
        self.started = time.time()
        self.all_ready_once = False
        self.server = ServerView(self)  # what gunicorn's server hooks get
        self.reloader: Any = None  # --reload's watcher (corral.master.arbiter.reload)
        self.observer = Observer(self, settings)  # metrics, statsd, systemd notify, status figures

    # ------------------------------------------------------------------ start and the loop

    def run(self) -> int:
        """Start, serve until stopped; returns 0, raises CrashLoop (and the start errors of `start`)."""
        try:
            self.start()
            try:
                self.loop()
            except CrashLoop as exc:
                logger.error("Stopping: %s", exc)
                self.stop(graceful=False)
                raise
            return 0
        finally:
            self.cleanup()
            run_hook(self.settings, "on_exit", self.server)

    def start(self) -> None:
        """Pid file, app check or preload, sockets, control socket, signals. Raises the typed errors."""
        settings = self.settings
        pid = os.getpid()
        run_hook(settings, "on_starting", self.server)
        set_title("master", self.name)
        if settings.pidfile:
            pidfile = Pidfile(settings.pidfile)
            pidfile.create(pid)  # PidfileError: refused while a live process owns it
            self.pidfile = pidfile
        else:
            self.pidfile = register(pid)  # `serve status` with no --pid finds it
        self.load_app(settings)
        self.ssl_context = server_context(settings)  # SettingError: one line, exit 2, before binding
        self.listeners = self.open_sockets()
        if settings.user is not None or settings.group is not None:
            for path in self.owned_paths:
                os.chown(
                    path,
                    settings.user if settings.user is not None else -1,
                    settings.group if settings.group is not None else -1,
                )
        if self.pidfile is not None:
            self.control = ControlServer(self.pidfile.path, pid)
        self.pipe = os.pipe()
        for fd in self.pipe:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.pipe[0], selectors.EVENT_READ, self._drain_pipe)
        self.observer.start(self.selector)  # BindError for --metrics-bind
        if self.control is not None and self.control.sock is not None:
            self.selector.register(self.control.fileno(), selectors.EVENT_READ, self._answer_status)
        signal.set_wakeup_fd(self.pipe[1], warn_on_full_buffer=False)
        for sig in workerproc.MASTER_SIGNALS:
            signal.signal(sig, self._on_signal)
        if settings.reload:
            from corral.master.arbiter.reload import Reloader

            self.reloader = Reloader.start(settings, self.start_cwd)  # SettingError without watchfiles
            self.selector.register(self.reloader.fileno(), selectors.EVENT_READ, self._files_changed)
        where = ", ".join(describe_listener(s) for s in self.listeners) or ", ".join(self.reuse_port_addresses)
        logger.info("corral master %d serving %s on %s with %d worker(s)", pid, self.spec, where, self.num_workers)
        run_hook(settings, "when_ready", self.server)

    def load_app(self, settings: Settings) -> None:
        if settings.preload_app:
            self.app = import_app(self.spec, factory=settings.factory)  # AppImportError
            if settings.gc_freeze:
                # Before the forks: the children's collections never write to these objects' headers, so
                # their pages stay shared (Python's gc.freeze() documentation describes this use).
                gc.freeze()
        else:
            self.check_app(settings)  # AppCheckError
            self.app = self.spec

    def check_app(self, settings: Settings) -> None:
        """The app check's child goes through worker_exit and child_exit, as a worker does (see
        corral.master.arbiter.appcheck)."""
        master = os.getpid()

        def exiting(app: Any) -> None:  # in the child
            if settings.worker_exit is not None:
                view = child_view(os.getpid(), master, HookConfig(settings, self.name), app)
                run_hook(settings, "worker_exit", self.server, view)

        def exited(pid: int) -> None:
            if settings.child_exit is not None:
                run_hook(settings, "child_exit", self.server, child_view(pid, master, HookConfig(settings, self.name)))

        check_app(self.spec, settings, exited, exiting)

    def open_sockets(self) -> list[socket.socket]:
        settings = self.settings
        inherited = os.environ.pop(INHERIT_FDS_ENV, "")
        if inherited:  # USR2: the old master's listeners, same kernel sockets
            sockets = []
            for fd in (int(x) for x in inherited.split(",") if x):
                sock = socket.socket(fileno=fd)
                os.set_inheritable(fd, False)
                sock.setblocking(False)
                sockets.append(sock)
            self.owned_paths = [s.getsockname() for s in sockets if s.family == socket.AF_UNIX]
            return sockets
        activated = systemd_sockets()
        if activated:
            return activated
        sockets = bind_all(list(settings.bind), settings.backlog, settings.reuse_port, settings.umask)  # BindError
        if settings.reuse_port:
            # Each worker binds its own SO_REUSEPORT socket; the master's were only the fail-fast check
            # (a listening socket nobody accepts on would get its share of the connections).
            keep = []
            for sock, address in zip(sockets, settings.bind):
                if sock.family == socket.AF_UNIX or address.startswith("fd://"):
                    keep.append(sock)
                else:
                    self.reuse_port_addresses.append(str(parse_address(address)))
                    sock.close()
            sockets = keep
        self.owned_paths = [
            s.getsockname()
            for s in sockets
            if s.family == socket.AF_UNIX and not any(a.startswith("fd://") for a in settings.bind)
        ]
        return sockets

    def loop(self) -> None:
        self.manage_workers()  # boot the first workers now, not one tick later (cold start)
        while not self.stopping:
            self.sleep()
            handled = False
            while not self.stopping:
                try:
                    sig = self.signals.get_nowait()
                except queue.Empty:
                    break
                handled = True
                name = signal.Signals(sig).name[3:].lower()
                getattr(self, f"handle_{name}")()
            if self.stopping:
                return
            if handled:
                self.sleep(0)  # heartbeats that queued while a handler ran (HUP's app check) count
            self.murder_workers()
            self.manage_workers()
            self.observer.tick()

    def _on_signal(self, sig: int, frame: Any) -> None:
        # No work in a signal handler: the loop picks it up (set_wakeup_fd has already woken select).
        self.signals.put_nowait(sig)

    def sleep(self, timeout: float = TICK) -> None:
        assert self.selector is not None
        now = time.monotonic()
        if self.spawn_after > now:
            timeout = min(timeout, self.spawn_after - now)
        for worker in self.workers.values():
            if worker.kill_at is not None:
                timeout = min(timeout, max(0.0, worker.kill_at - now))
        if not self.signals.empty():
            timeout = 0
        for key, _ in self.selector.select(timeout):
            key.data(key)

    def _drain_pipe(self, key: Any) -> None:
        try:
            while os.read(self.pipe[0], 4096):  # type: ignore[index]  # the pipe is made before the loop selects on it
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ------------------------------------------------------------------ signals

    def handle_chld(self) -> None:
        self.reap_workers()

    def handle_hup(self) -> None:
        """Reload the settings and the application; new workers replace the old ones, new first."""
        logger.info("Reloading (HUP)")
        try:
            settings = self.reload() if self.reload is not None else self.settings
            if settings.bind != self.settings.bind:
                logger.warning(
                    "Reload: bind changes need a restart or an upgrade (USR2); keeping %s",
                    ", ".join(self.settings.bind),
                )
                settings = settings.replace(bind=self.settings.bind)
            settings = self.observer.keep_restart_only(settings)  # before the logs are set up again
            if not settings.preload_app:
                self.check_app(settings)
            ssl_context = server_context(settings)  # a renewed certificate: the new workers serve it
            setup_logging(settings)
        except (SettingError, AppCheckError, AppImportError) as exc:
            logger.error("Reload failed, keeping the running workers: %s", exc)
            self.observer.reload_failed()
            return
        settings = self.observer.reload_begun(settings)
        self.rollback = (self.settings, self.num_workers, self.ssl_context)
        old_workers = self.num_workers
        self.settings = settings
        self.ssl_context = ssl_context
        self.num_workers = settings.workers
        self.generation += 1
        for worker in self.workers.values():
            worker.outdated = True
            worker.cause = worker.cause or "reload"
        run_hook(settings, "on_reload", self.server)
        if self.num_workers != old_workers:
            run_hook(settings, "nworkers_changed", self.server, self.num_workers, old_workers)

    def _files_changed(self, key: Any) -> None:
        """--reload: a watched file changed; the reload is HUP's (queued like a signal, for the loop)."""
        changes = self.reloader.read()
        if changes:
            logger.info("Reloading: %s changed", changes)
            self.signals.put_nowait(signal.SIGHUP)

    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_int(self) -> None:
        self.stop(graceful=False)

    handle_quit = handle_int

    def handle_ttin(self) -> None:
        self.num_workers += 1
        logger.info("TTIN: %d worker(s)", self.num_workers)
        run_hook(self.settings, "nworkers_changed", self.server, self.num_workers, self.num_workers - 1)

    def handle_ttou(self) -> None:
        if self.num_workers > 1:
            self.num_workers -= 1
            run_hook(self.settings, "nworkers_changed", self.server, self.num_workers, self.num_workers + 1)
        logger.info("TTOU: %d worker(s)", self.num_workers)

    def handle_usr1(self) -> None:
        reopen_logs()
        logger.info("Reopened the log files (USR1)")
        for worker in self.workers.values():
            worker.channel.send("reopen")

    def handle_usr2(self) -> None:
        self.reexec()

    def handle_winch(self) -> None:
        pass  # gunicorn stops the workers of a daemonized master here; corral does not daemonize

    # ------------------------------------------------------------------ status

    def _answer_status(self, key: Any) -> None:
        assert self.control is not None
        self.control.answer(status_document(self))

    # ------------------------------------------------------------------ upgrade (USR2)

    def reexec(self) -> None:
        """Start a new master (same command line) that inherits the listening sockets."""
        if self.reexec_pid:
            logger.warning("USR2 ignored: an upgrade (pid %d) is already running", self.reexec_pid)
            return
        if self.old_master and pid_alive(self.old_master) and os.getppid() == self.old_master:
            logger.warning("USR2 ignored: the previous master (pid %d) has not retired yet", self.old_master)
            return
        if self.reuse_port_addresses:
            logger.warning("USR2 with --reuse-port: the new master's workers bind their own sockets")
        if self.pidfile is not None:
            self.pidfile.rename(self.pidfile.path + ".oldbin")
        run_hook(self.settings, "pre_exec", self.server)
        pid = start_new_master(self.listeners, self.start_cwd)
        self.reexec_pid = pid
        logger.info("Upgrading: new master pid %d", pid)

    # ------------------------------------------------------------------ stopping

    def stop(self, graceful: bool = True) -> None:
        """Stop every worker (TERM: drain if asked, then graceful; INT/QUIT: quick), SIGKILL what overstays."""
        shutdown.stop(self, graceful)

    def close_listeners(self) -> None:
        upgraded = bool(self.reexec_pid) and pid_alive(self.reexec_pid)
        close_all(self.listeners, unlink=False)
        self.listeners = []
        if not upgraded:  # the new master (USR2) holds the same sockets: leave their files for it
            for path in self.owned_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self.owned_paths = []

    def cleanup(self) -> None:
        if not self.stopping and self.workers:
            self.stop(graceful=False)
        self.close_listeners()
        if self.control is not None:
            self.control.close()
        if self.reloader is not None:
            self.reloader.stop()
        self.observer.close()
        if self.pidfile is not None:
            self.pidfile.unlink()
        signal.set_wakeup_fd(-1)
        if self.selector is not None:
            self.selector.close()
        if self.pipe is not None:
            for fd in self.pipe:
                try:
                    os.close(fd)
                except OSError:
                    pass
