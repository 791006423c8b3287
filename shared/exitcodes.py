"""The exit-code contract between a worker process and the master.

A worker exits with one of these codes; the master reads it to decide whether to respawn the worker,
stop, or give up. 3 and 4 are gunicorn's worker codes (WORKER_BOOT_ERROR, APP_LOAD_ERROR); the others are
corral's, one per fix (gunicorn exits 1 for a config file, bind or pid-file problem, 2 only for a bad flag).
docs/signals.md compares each with gunicorn's.
"""

from __future__ import annotations

import enum

__all__ = ["ExitCode", "OK", "CONFIG_ERROR", "WORKER_BOOT_ERROR", "APP_IMPORT_ERROR", "HALT_CRASH_LOOP", "BIND_ERROR"]


class ExitCode(enum.IntEnum):
    """Process exit statuses shared by the worker and the master."""

    OK = 0
    """Clean exit (graceful stop)."""

    CONFIG_ERROR = 2
    """A bad flag, config file or setting value (same as click's usage-error status)."""

    WORKER_BOOT_ERROR = 3
    """The worker could not boot: lifespan startup failed, or it could not set itself up."""

    APP_IMPORT_ERROR = 4
    """The application could not be imported (bad spec, missing module or attribute, factory error)."""

    HALT_CRASH_LOOP = 5
    """The master gave up after workers repeatedly failed to boot."""

    BIND_ERROR = 6
    """The master could not listen: address in use, permission denied, bad or unusable address."""


OK = ExitCode.OK
CONFIG_ERROR = ExitCode.CONFIG_ERROR
WORKER_BOOT_ERROR = ExitCode.WORKER_BOOT_ERROR
APP_IMPORT_ERROR = ExitCode.APP_IMPORT_ERROR
HALT_CRASH_LOOP = ExitCode.HALT_CRASH_LOOP
BIND_ERROR = ExitCode.BIND_ERROR
