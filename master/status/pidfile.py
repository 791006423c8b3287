"""The master's pid file: refused while a live process owns it, renamed to .oldbin on USR2, removed at exit."""

from __future__ import annotations

import errno
import os

__all__ = ["PidfileError", "Pidfile"]


class PidfileError(Exception):
    """The pid file is owned by a live process or cannot be written; `str()` is one line."""


def read_pid(path: str) -> int | None:
    """The pid in `path`, or None when the file is missing or does not hold a pid."""
    try:
        with open(path) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def create(self, pid: int) -> None:
        """Write `pid`; refuse when another live process's pid is there (a stale file is replaced)."""
        old = read_pid(self.path)
        if old is not None and old != pid and pid_alive(old):
            raise PidfileError(f"pid file {self.path} belongs to running process {old}: is corral already running?")
        tmp = f"{self.path}.{pid}.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(f"{pid}\n")
            os.chmod(tmp, 0o644)  # readable by monitoring and logrotate scripts whatever the umask (gunicorn's)
            os.replace(tmp, self.path)  # atomic: a reader never sees an empty pid file
        except OSError as exc:
            raise PidfileError(f"cannot write pid file {self.path}: {exc.strerror or exc}") from None
        self.pid = pid

    def rename(self, path: str) -> None:
        """Move our pid file (USR2: the old master's becomes <pidfile>.oldbin)."""
        path = os.path.abspath(path)
        try:
            os.replace(self.path, path)
        except OSError:
            pass
        self.path = path

    def unlink(self) -> None:
        """Remove the file if it still holds our pid (a new master may already own the name)."""
        if self.pid is not None and read_pid(self.path) == self.pid:
            try:
                os.unlink(self.path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
