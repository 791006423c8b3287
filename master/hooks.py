"""gunicorn's server hooks in the master: the `server` object they get, and calling them safely.

Where each hook runs (gunicorn's call points):

    on_starting(server)              master, before the app check and the sockets
    when_ready(server)               master, sockets bound, just before the first workers are forked
    pre_fork(server, worker)         master, before each fork (worker.pid is None)
    post_fork(server, worker)        worker, right after the fork; raising fails the boot (exit 3, backoff)
    post_worker_init(worker)         worker, app loaded and lifespan started, before accepting
    pre_request(worker, req)         worker, before each HTTP request (see corral.worker.hookapi)
    post_request(worker, req, environ, resp)   worker, after each HTTP response
    worker_int(worker)               worker, on SIGINT/SIGQUIT
    worker_abort(worker)             worker, when the --timeout watchdog aborts it (then it is killed)
    worker_exit(server, worker)      worker, just before the process exits
    child_exit(server, worker)       master, after a worker exited (it has been reaped)
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

from corral.shared.settings import Settings
from corral.worker.hookapi import WorkerView

__all__ = ["ServerView", "run_hook", "unborn_worker", "worker_view"]

logger = logging.getLogger("corral.error")


class ServerView:
    """The `server` a gunicorn hook gets: `log`, `cfg` (the effective settings), `pid`, `num_workers`,
    `proc_name`, `app_uri`, `WORKERS` (pid -> worker view of the live workers). Not there: gunicorn's
    `LISTENERS`, `reexec_pid` and the arbiter's methods."""

    __slots__ = ("_arbiter", "log")

    def __init__(self, arbiter: Any) -> None:
        self._arbiter = arbiter
        self.log = logging.getLogger("corral.error")

    @property
    def cfg(self) -> Settings:
        return self._arbiter.settings

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
    def WORKERS(self) -> dict[int, WorkerView]:  # noqa: N802 - gunicorn's name
        return {pid: worker_view(w, self.cfg) for pid, w in self._arbiter.workers.items()}

    def __repr__(self) -> str:
        return f"<Master pid={self.pid} workers={self.num_workers}>"


def worker_view(worker: Any, cfg: Settings) -> WorkerView:
    """A master-side worker record as hooks see it (pid, age = its number, cfg, log)."""
    view = WorkerView(worker.number, cfg, pid=worker.pid, ppid=os.getpid())
    view.booted = bool(worker.ready)
    return view


def unborn_worker(number: int, cfg: Settings) -> WorkerView:
    """The worker pre_fork gets: not forked yet, so no pid (None, as in gunicorn)."""
    view = WorkerView(number, cfg, pid=0, ppid=os.getpid())
    view.pid = None  # type: ignore[assignment]
    return view


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
