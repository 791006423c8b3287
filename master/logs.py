"""The error log: `--log-level`, `--error-logfile`, `--log-config` (dictConfig), reopened on USR1.

Every corral logger is below "corral" ("corral.error", "corral.worker.server", ...), so the handler goes
on "corral"; the access log ("corral.access") keeps its own handler (see worker/accesslog.py).

gunicorn's logger names work too, both ways: a --log-config dictConfig that configures "gunicorn.error" or
"gunicorn.access" (a JSON formatter, say) applies to corral's error and access logs, and an app that hands
"gunicorn.error"'s handlers to its own logger (a common Flask recipe) gets corral's error log.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import runpy
import socket
import sys
from typing import Any

from corral.shared.settings import Settings, SettingError
from corral.worker.accesslog import ReopenableFileHandler, reopen_file

__all__ = ["setup_logging", "reopen_logs", "error_stream", "describe_listener"]

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S %z"
_OURS = "_corral_error"


def setup_logging(settings: Settings) -> None:
    """(Re)configure the error log from settings; raises SettingError for a bad --log-config file."""
    root = logging.getLogger("corral")
    gunicorn = logging.getLogger("gunicorn.error")
    # The handler made by an earlier call is on both loggers: off both, whichever way the log goes now (a
    # dictConfig that names neither logger would otherwise hand gunicorn's closed one back to corral).
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in [h for h in gunicorn.handlers if getattr(h, _OURS, False)]:
        gunicorn.removeHandler(handler)
    if settings.logconfig_dict or settings.logconfig:
        config = dict(settings.logconfig_dict) if settings.logconfig_dict else _load_dict_config(settings.logconfig)
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(config)
        _adopt_gunicorn_loggers()
        _capture_output(settings)
        return
    handler: logging.Handler
    if settings.errorlog in ("-", ""):
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = ReopenableFileHandler(settings.errorlog)
        except OSError as exc:
            raise SettingError(f"invalid value for --error-logfile: cannot open {settings.errorlog!r}: "
                               f"{exc.strerror or exc}") from None
    setattr(handler, _OURS, True)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root.addHandler(handler)
    root.setLevel(settings.loglevel.upper())
    root.propagate = False
    gunicorn.addHandler(handler)
    gunicorn.setLevel(settings.loglevel.upper())
    gunicorn.propagate = False
    _capture_output(settings)


#: gunicorn's logger -> the corral logger that does its job.
GUNICORN_LOGGERS = (("gunicorn.error", "corral"), ("gunicorn.access", "corral.access"))


def _adopt_gunicorn_loggers() -> None:
    """A dictConfig written for gunicorn configures gunicorn.error/gunicorn.access: corral's loggers take
    their handlers and level (a config that names corral's loggers itself is left as it is)."""
    for theirs, ours in GUNICORN_LOGGERS:
        source, target = logging.getLogger(theirs), logging.getLogger(ours)
        if source.handlers and not target.handlers:
            for handler in source.handlers:
                target.addHandler(handler)
            if source.level:
                target.setLevel(source.level)
            target.propagate = False


def _capture_output(settings: Settings) -> None:
    """--capture-output: fds 1 and 2 of the master (and so of every worker) go to the error log file."""
    if not settings.capture_output or settings.errorlog in ("-", ""):
        return
    try:
        fd = os.open(settings.errorlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SettingError(f"invalid value for --error-logfile: cannot open {settings.errorlog!r}: "
                           f"{exc.strerror or exc}") from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _load_dict_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise SettingError(f"invalid value for --log-config: {path!r} not found")
    try:
        if path.endswith(".json"):
            with open(path) as fh:
                config = json.load(fh)
        else:
            config = runpy.run_path(path).get("LOGGING")
    except Exception as exc:
        raise SettingError(f"invalid value for --log-config: {path!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(config, dict):
        raise SettingError(f"invalid value for --log-config: {path!r} must hold a dictConfig dict "
                           "(a JSON object, or LOGGING = {...} in a .py file)")
    config.setdefault("version", 1)
    config.setdefault("disable_existing_loggers", False)
    return config


def reopen_logs() -> None:
    """Reopen every file handler in this process (after logrotate moved the files)."""
    for logger in [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]:
        for handler in getattr(logger, "handlers", ()):
            reopen = getattr(handler, "reopen", None)
            if reopen is not None:
                reopen()
            elif isinstance(handler, logging.FileHandler):  # one made by --log-config
                reopen_file(handler)


def error_stream(settings: Settings) -> Any:
    """The file faulthandler writes stacks to: stderr, or the error log file (opened for appending)."""
    if settings.errorlog in ("-", "") or settings.logconfig or settings.logconfig_dict:
        return sys.stderr
    try:
        return open(settings.errorlog, "a", buffering=1)
    except OSError:
        return sys.stderr


def describe_listener(sock: socket.socket) -> str:
    """A listening socket as a log shows it: http://host:port, unix:path or fd N."""
    try:
        name = sock.getsockname()
    except OSError as exc:
        return f"fd {sock.fileno()} ({exc.strerror or exc})"
    if isinstance(name, str):
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"
