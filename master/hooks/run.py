"""gunicorn's server hooks in the master: the `server` object they get, and calling them safely.

Where each hook runs (gunicorn's call points):

    on_starting(server)              master, before the app check and the sockets
    when_ready(server)               master, sockets bound, just before the first workers are forked
    pre_fork(server, worker)         master, before each fork (worker.pid is "[booting]", as in gunicorn)
    post_fork(server, worker)        worker, right after the fork; raising fails the boot (exit 3, backoff)
    post_worker_init(worker)         worker, app loaded and lifespan started, before accepting
    pre_request(worker, req)         worker, before each HTTP request (see corral.worker.app.hooks)
    post_request(worker, req, environ, resp)   worker, after each HTTP response
    worker_int(worker)               worker, on SIGINT/SIGQUIT
    worker_abort(worker)             worker, when the --timeout watchdog aborts it (then it is killed)
    worker_exit(server, worker)      worker, just before the process exits
    child_exit(server, worker)       master, after a worker exited (it has been reaped)
                                     (the short-lived app-check child runs worker_exit and child_exit too,
                                     with worker.age 0; see arbiter/appcheck.py)
    on_reload(server)                master, on HUP or a --reload change, once the new settings are good
    nworkers_changed(server, new, old)   master, TTIN/TTOU/reload changed the number of workers
    pre_exec(server)                 master, before the new master of an upgrade (USR2) is started
    on_exit(server)                  master, just before it exits

A hook that raises is logged with its traceback; the master carries on (a master hook never stops it).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from corral.master.hooks.cfg import HookConfig, Listener
from corral.shared.settings import Settings
from corral.worker.app.hooks import WorkerView

__all__ = ["ServerView", "run_hook", "unborn_worker", "worker_view", "child_view", "HookConfig", "Listener"]

logger = logging.getLogger("corral.error")


class ServerView:
    """The `server` a gunicorn hook gets, with gunicorn's Arbiter attributes: `cfg` (gunicorn's Config view
    of the effective settings, corral.master.hooks.cfg), `log` (a `logging.Logger`), `pid`, `LISTENERS`
    (the listening sockets, as gunicorn's socket wrappers), `WORKERS` (pid -> worker of the live workers),
    `num_workers`, `proc_name`, `master_name`, `app_uri`, `timeout`, `worker_age` (workers started so far),
    `reexec_pid` (the new master during an upgrade, else 0), `master_pid` (the old master while this one is
    its upgrade, else 0). Not there: gunicorn's Application object (`app`) and the arbiter's methods (send
    the master a signal instead)."""

    __slots__ = ("_arbiter", "log", "_cfg")

    master_name = "Master"

    def __init__(self, arbiter: Any) -> None:
        self._arbiter = arbiter
        self.log = logging.getLogger("corral.error")
        self._cfg: HookConfig | None = None

    @property
    def cfg(self) -> HookConfig:
        arbiter = self._arbiter
        if self._cfg is None or self._cfg._settings is not arbiter.settings:  # a HUP brings new settings
            self._cfg = HookConfig(arbiter.settings, arbiter.name)
        return self._cfg

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def num_workers(self) -> int:
        return self._arbiter.num_workers

    @property
    def proc_name(self) -> str:
        return self._arbiter.name

    @property
    def app_uri(self) -> str:
        return self._arbiter.spec

    @property
    def timeout(self) -> float:
        return self._arbiter.settings.timeout

    @property
    def worker_age(self) -> int:
        return self._arbiter.worker_number

    @property
    def reexec_pid(self) -> int:
        return self._arbiter.reexec_pid

    @property
    def master_pid(self) -> int:
        return self._arbiter.old_master

    @property
    def LISTENERS(self) -> list[Listener]:  # noqa: N802 - gunicorn's name
        tls = self._arbiter.ssl_context is not None
        return [Listener(sock, tls) for sock in self._arbiter.listeners]

    @property
    def WORKERS(self) -> dict[int, WorkerView]:  # noqa: N802 - gunicorn's name
        cfg = self.cfg
        return {pid: worker_view(w, cfg) for pid, w in self._arbiter.workers.items()}

    def __repr__(self) -> str:
        return f"<Master pid={self.pid} workers={self.num_workers}>"


def worker_view(worker: Any, cfg: HookConfig | Settings) -> WorkerView:
    """A master-side worker record as hooks see it: pid, age (its number), booted, nr, nr_conns and
    tmp.last_update() from its last heartbeat, max_requests with its jitter."""
    view = WorkerView(
        worker.number, cfg, pid=worker.pid, ppid=os.getpid(), max_requests=worker.max_requests, timeout=_timeout(cfg)
    )
    view.booted = bool(worker.ready)
    stats = worker.stats
    view.requests = int(stats.get("requests", 0))
    view.connections = int(stats.get("connections", 0))
    view.tmp.last = worker.last_beat
    view.started = worker.started
    return view


def unborn_worker(number: int, cfg: HookConfig | Settings, max_requests: int = 0) -> WorkerView:
    """The worker pre_fork gets: not forked yet, so its pid is gunicorn's "[booting]"."""
    return WorkerView(number, cfg, pid="[booting]", ppid=os.getpid(), max_requests=max_requests, timeout=_timeout(cfg))


def child_view(pid: int, ppid: int, cfg: HookConfig | Settings, app: Any = None) -> WorkerView:
    """A short-lived child the master forked that is no worker (the app check, corral.master.arbiter.appcheck),
    for worker_exit (in the child, `app` the application it imported, None if the import failed) and
    child_exit (in the master): age 0, never booted, not alive, nothing served, no sockets."""
    view = WorkerView(0, cfg, pid=pid, ppid=ppid, timeout=_timeout(cfg))
    view._alive = False
    view.wsgi = app
    return view


def _timeout(cfg: Any) -> float:
    """gunicorn's worker.timeout: half the configured timeout (how often gunicorn's workers must notify)."""
    return cfg.timeout / 2


def run_hook(settings: Settings, name: str, *args: Any) -> bool:
    """Call the hook `name` if set; False when it raised (logged with its traceback), True otherwise."""
    hook = getattr(settings, name)
    if hook is None:
        return True
    try:
        hook(*args)
    except Exception:
        logger.exception("Server hook %s raised", name)
        return False
    return True
