"""The child side of a fork: turn a copy of the master into one worker, run it, and `_exit`.

Everything here runs in the forked child, before and around `run_worker`. The child must never return
into the master's stack (its finally blocks would remove the pid file, close the sockets, ...), so
`run_child` always ends in `os._exit`.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from corral.master.arbiter.channel import Channel
from corral.master.arbiter.proctitle import set_title
from corral.master.hooks.run import HookConfig, Listener, run_hook
from corral.master.listen.sockets import bind_all
from corral.master.observe.logs import error_stream, reopen_logs
from corral.shared.exitcodes import WORKER_BOOT_ERROR
from corral.shared.settings import Settings
from corral.worker.app.hooks import WorkerView
from corral.worker.edge.counters import collecting
from corral.worker.serve.boot import run_worker
from corral.worker.serve.scheduling import apply_policy

__all__ = ["run_child", "reset_signals", "DUMP_SIGNAL"]

logger = logging.getLogger("corral.error")

#: The master sends this to a worker whose loop stopped beating; faulthandler (C level, so it works while
#: the loop is blocked in `time.sleep` or a tight loop) writes every thread's stack to the error log.
DUMP_SIGNAL = signal.SIGUSR2

# Signals the master handles; a child must not inherit its handlers (they feed the master's queue).
MASTER_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
    signal.SIGWINCH,
)


def reset_signals() -> None:
    """Back to default dispositions, and no wakeup fd (it is the master's self-pipe)."""
    signal.set_wakeup_fd(-1)
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # The master blocks its signals around fork (see Fleet.spawn_worker); what arrived meanwhile is
    # delivered now, to the default dispositions.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)


class _Link:
    """The worker's end of the control channel, driven by the worker's event loop."""

    def __init__(self, channel: Channel, heartbeat: float, settings: Settings, worker: WorkerView) -> None:
        self.channel = channel
        self.heartbeat = heartbeat
        self.settings = settings
        self.worker = worker
        self.server: Any = None
        self.ready_sent = False
        worker.recycle = self.recycle
        worker.tmp.beat = self.beat
        self.metrics = collecting(settings)

    def on_ready(self, server: Any) -> None:
        import asyncio

        self.server = server
        server.heartbeat_interval = self.heartbeat
        loop = asyncio.get_running_loop()
        loop.add_reader(self.channel.fileno(), self.on_readable)
        if self.settings.worker_int is not None:  # replaces boot's INT/QUIT handlers: the hook, then the same stop
            for sig in (signal.SIGINT, signal.SIGQUIT):
                loop.add_signal_handler(sig, self.interrupted)
        self.worker.booted = True
        self.worker.server = server  # worker.nr and worker.alive read it
        run_hook(self.settings, "post_worker_init", self.worker)

    def interrupted(self) -> None:
        run_hook(self.settings, "worker_int", self.worker)
        self.server.request_stop(False)

    def recycle(self, why: str = "stuck requests") -> None:
        """Ask the master for a replacement (new worker first, then this one stops gracefully)."""
        self.channel.send("recycle", why=why)

    def beat(self) -> None:
        """A heartbeat outside the loop's own (gunicorn's worker.notify() from a hook): the watchdog's clock
        restarts, nothing else changes."""
        self.channel.send("alive")

    def notify(self) -> None:
        # Called by WorkerServer's heartbeat coroutine, on the loop: the first call means the loop serves.
        server = self.server
        if not self.ready_sent:
            self.ready_sent = True
            self.channel.send("ready")
        fields = heartbeat_fields(server, self.metrics)
        if not self.channel.send("hb", **fields) and "m" in fields:
            # Too big for one message (thousands of distinct statuses?) or a full buffer: liveness first.
            del fields["m"]
            self.channel.send("hb", **fields)

    def final(self) -> None:
        """The worker has stopped: its last counts go up, so a replaced worker's totals (its requests served,
        what child_exit's worker.nr says, and the metrics when collected) are exact."""
        if self.server is not None:
            self.channel.send("hb", **heartbeat_fields(self.server, self.metrics))

    def on_readable(self) -> None:
        messages, eof = self.channel.receive()
        server = self.server
        for message in messages:
            kind = message.get("t")
            if kind == "limit":
                server.max_applications = int(message["max_applications"])
            elif kind == "stop":
                server.request_stop(bool(message.get("graceful", True)))
            elif kind == "drain":
                server.drain()
            elif kind == "reopen":
                reopen_logs()
                faulthandler.register(
                    DUMP_SIGNAL,
                    file=error_stream(self.settings),
                    all_threads=True,
                    chain=self.settings.worker_abort is not None,
                )
                if server.access_log is not None:
                    server.access_log.reopen()
        if eof:
            # The master is gone (killed -9?): nobody would stop or replace us; finish what we have.
            import asyncio

            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self.channel.close()
            logger.warning("Master went away; worker %d stopping", os.getpid())
            server.request_stop(True)


def heartbeat_fields(server: Any, metrics: bool) -> dict[str, Any]:
    """The heartbeat's fields: the pool, and the cumulative counts when metrics are collected."""
    if server is None:
        return {}
    stats = server.stats()
    fields = {
        key: stats.get(key, 0)
        for key in ("requests", "instances", "max_applications", "connections", "parked", "websockets", "lag")
    }
    fields["stopping"] = bool(stats.get("stopping"))
    if metrics:
        fields["m"] = server.counters.snapshot()
    return fields


def _drop_privileges(settings: Settings) -> None:
    if settings.group is not None and os.getgid() != settings.group:
        os.setgid(settings.group)
    if settings.user is not None and os.getuid() != settings.user:
        import pwd

        try:
            name = pwd.getpwuid(settings.user).pw_name
            os.initgroups(name, settings.group if settings.group is not None else os.getgid())
        except (KeyError, PermissionError):
            pass
        os.setuid(settings.user)


def _aborted(settings: Settings, worker: WorkerView) -> None:
    worker.aborted = True
    run_hook(settings, "worker_abort", worker)


def run_child(
    app: Any,
    settings: Settings,
    sockets: list[socket.socket],
    channel: Channel,
    *,
    number: int,
    name: str,
    reuse_port: Sequence[str] = (),
    cleanup: Callable[[], None] | None = None,
    server: Any = None,
    ssl_context: Any = None,
    share: int | None = None,
    max_requests: int = 0,
) -> NoReturn:
    """Run one worker in this (forked) process and exit with its code; never returns."""
    code = 1
    tls = ssl_context is not None
    worker = WorkerView(
        number,
        HookConfig(settings, name),
        sockets=[Listener(sock, tls) for sock in sockets],
        timeout=settings.timeout / 2,
        max_requests=max_requests,
    )
    try:
        reset_signals()
        # First, so that every thread and process the worker starts inherits it (corral.worker.serve.scheduling).
        apply_policy(settings.scheduling_policy)
        # Job-control and reload signals are the master's business; a worker that got them (a signal to the
        # whole process group) must neither stop (TTIN/TTOU default) nor die (HUP default).
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        if cleanup is not None:
            cleanup()  # close the master's fds: other workers' channels, self-pipe, control socket
        set_title(f"worker {number}", name)
        if settings.worker_abort is not None:
            # Chained after faulthandler's C-level stack dump: runs when the main thread next gets the GIL
            # (a blocked time.sleep is interrupted), before the SIGKILL that follows DUMP_GRACE later.
            signal.signal(DUMP_SIGNAL, lambda *_: _aborted(settings, worker))
        faulthandler.register(
            DUMP_SIGNAL, file=error_stream(settings), all_threads=True, chain=settings.worker_abort is not None
        )
        if not run_hook(settings, "post_fork", server, worker):
            logger.error("Worker %d failed to boot: its post_fork hook raised", number)
            code = WORKER_BOOT_ERROR
            return  # type: ignore[misc]  # the finally below exits
        own = bind_all(list(reuse_port), settings.backlog, reuse_port=True)
        worker.sockets += [Listener(sock, tls) for sock in own]
        _drop_privileges(settings)
        heartbeat = min(1.0, settings.timeout / 4) if settings.timeout > 0 else 1.0
        link = _Link(channel, heartbeat, settings, worker)
        code = run_worker(
            app,
            settings,
            sockets + own,
            notify=link.notify,
            on_ready=link.on_ready,
            worker=worker,
            ssl_context=ssl_context,
            max_applications=share,
        )
        link.final()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the worker's last frame: whatever escaped is printed and becomes exit code 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            worker.recycle = None  # (alive = False below must not ask for a replacement)
            worker.alive = False
            run_hook(settings, "worker_exit", server, worker)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
