"""USR2: exec a new master (same command line) that inherits the listening sockets.

The old master forks; the child marks the listening fds inheritable and execs the original command
with two variables: the fds to adopt instead of binding, and the old master's pid. The new master,
once all its workers are ready, sends TERM to the old one, which then retires on its own. The names
do not start with CORRAL_ (those are settings, and unknown ones are errors).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import traceback

from corral.master.arbiter.workerproc import reset_signals

__all__ = ["INHERIT_FDS_ENV", "OLD_MASTER_ENV", "start_new_master", "retire_old_master"]

logger = logging.getLogger("corral.master")

INHERIT_FDS_ENV = "_CORRAL_INHERIT_FDS"
OLD_MASTER_ENV = "_CORRAL_OLD_MASTER"


def start_new_master(listeners: list[socket.socket], cwd: str) -> int:
    """Fork and exec the new master; returns its pid (in the old master)."""
    fds = [sock.fileno() for sock in listeners]
    environ = dict(os.environ)
    environ[INHERIT_FDS_ENV] = ",".join(str(fd) for fd in fds)
    environ[OLD_MASTER_ENV] = str(os.getpid())
    # sys.orig_argv keeps `-m corral.master` or the `serve` script path, and interpreter flags.
    argv = [sys.executable, *sys.orig_argv[1:]]
    pid = os.fork()
    if pid == 0:
        try:
            reset_signals()
            for fd in fds:
                os.set_inheritable(fd, True)
            os.chdir(cwd)
            os.execve(sys.executable, argv, environ)
        except BaseException:  # noqa: BLE001 - nothing may unwind from the forked child into the old master's stack
            traceback.print_exc()
        finally:
            os._exit(1)  # never back into the old master's stack
    return pid


def retire_old_master(old: int) -> None:
    """In the new master, once its workers are ready: TERM the old one, which then stops on its own."""
    # Only the master that exec'd us, still our parent: a recycled pid must not get a TERM.
    if old and os.getppid() == old:
        logger.info("All workers ready: telling the old master (pid %d) to stop", old)
        try:
            os.kill(old, signal.SIGTERM)
        except ProcessLookupError:
            pass
