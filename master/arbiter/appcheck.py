"""Check that the application imports, in a short-lived child, before any worker is forked.

Without --preload the master must not import the app itself: its modules would be inherited by every
worker (no fresh import) and a HUP could never load new code. A forked child imports it and reports the
error (message and traceback) through a pipe, so a bad app path fails at start with exit code 4 and its
traceback printed once, and a HUP with a broken app keeps the running workers.

The child imports the app, so it may leave per-process state behind, as a worker does: prometheus_client's
multiprocess mode writes a file per pid, and a `livesum` gauge set at import would count the child as a
live worker forever. So the child goes through a worker's exit hooks: `worker_exit` in the child once the
import is done, whatever its outcome (as gunicorn runs it in a worker whose boot failed), then `child_exit`
in the master once it is reaped. Deployments clean up in either (gunicorn documents `child_exit` calling
`multiprocess.mark_process_dead(worker.pid)`; many call it from `worker_exit`), and both then cover every
process that imported the app. No other hook runs for it: it is no worker (no post_fork, it serves nothing).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from corral.master.arbiter.workerproc import reset_signals
from corral.shared.exitcodes import APP_IMPORT_ERROR
from corral.shared.settings import Settings
from corral.worker.app.load import AppImportError, import_app

__all__ = ["AppCheckError", "check_app", "describe_exit"]


class AppCheckError(Exception):
    """The application failed to import; `str()` is the message and traceback, to print once."""


def check_app(
    spec: str,
    settings: Settings,
    on_exit: Callable[[int], object] | None = None,
    exiting: Callable[[Any], object] | None = None,
) -> None:
    """Import the app in a short-lived child, so a bad app fails at once with its traceback, and the
    master stays free of the app's modules (workers, forked later, then import it fresh). `exiting(app)` is
    called in the child just before it exits, whatever the outcome (`app` is None when the import failed);
    `on_exit(pid)` in the master once the child has been reaped."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        app = None
        try:
            os.close(read_end)
            reset_signals()
            try:
                app = import_app(spec, factory=settings.factory)
            except AppImportError as exc:
                code = APP_IMPORT_ERROR
                text = str(exc)
                if exc.__cause__ is not None:
                    text += "\n" + "".join(traceback.format_exception(exc.__cause__)).rstrip()
                data = text.encode(errors="replace")
                while data:
                    data = data[os.write(write_end, data) :]
        except BaseException:  # noqa: BLE001 - any failure in the forked checker: the app failed to import
            code = APP_IMPORT_ERROR
        finally:
            try:
                if exiting is not None:
                    exiting(app)
                logging.shutdown()  # what the hook logged or printed, before os._exit
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(write_end)
    chunks = []
    while True:
        try:
            chunk = os.read(read_end, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            status = 0
            break
    if on_exit is not None:
        on_exit(pid)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        text = b"".join(chunks).decode(errors="replace") or f"importing {spec!r} crashed ({describe_exit(code)})"
        raise AppCheckError(text)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
