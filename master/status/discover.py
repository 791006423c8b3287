"""Where `serve status` finds a master started without `--pid`: a pid file in a per-user runtime folder.

A master started without `--pid` registers itself as `<runtime dir>/<pid>.pid` (its control socket next to
it, see corral.master.status.control) and removes the file when it exits. The runtime dir is
`$XDG_RUNTIME_DIR/corral` (systemd's per-user /run/user/UID) or else `<tmp>/corral-<uid>`, mode 0700.
`serve status` with no `--pid` looks there: one live master is shown, none or several give one line saying
what to pass. A master started with `--pid FILE` is found through that file only.
"""

from __future__ import annotations

import os
import tempfile

from corral.master.status.pidfile import Pidfile, PidfileError, pid_alive, read_pid

__all__ = ["runtime_dir", "register", "find_master", "NoMaster"]


class NoMaster(Exception):
    """`serve status` without --pid found no single master; `str()` is the one line to show."""


def runtime_dir() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "corral")
    return os.path.join(tempfile.gettempdir(), f"corral-{os.getuid()}")


def register(pid: int) -> Pidfile | None:
    """The registration pid file of a master started without --pid; None when the folder is unusable
    (the master runs anyway, `serve status` then needs --pid)."""
    folder = runtime_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        pidfile = Pidfile(os.path.join(folder, f"{pid}.pid"))
        pidfile.create(pid)
    except (OSError, PidfileError):
        return None
    return pidfile


def find_master() -> str:
    """The registration pid file of the one live master of this user; raises NoMaster otherwise."""
    folder = runtime_dir()
    live = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    for name in names:
        if not name.endswith(".pid"):
            continue
        path = os.path.join(folder, name)
        pid = read_pid(path)
        if pid is not None and pid_alive(pid):
            live.append((pid, path))
    if len(live) == 1:
        return live[0][1]
    if not live:
        raise NoMaster(
            f"no running corral master found in {folder}; for one started with --pid FILE, run: serve status --pid FILE"
        )
    pids = ", ".join(str(pid) for pid, _ in live)
    raise NoMaster(
        f"{len(live)} corral masters are running (pids {pids}); pick one: serve status --pid "
        f"{os.path.join(folder, '<PID>.pid')}"
    )
