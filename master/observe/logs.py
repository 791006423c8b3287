"""The error log: `--log-level`, `--error-logfile`, `--log-config` (dictConfig), reopened on USR1.

Every corral module logs below "corral" ("corral.error", "corral.master", "corral.worker.server", ...). Where
the records end up depends on `--naming`:

* gunicorn (the default): they are handed to gunicorn's error logger, "gunicorn.error", under that name, so
  they are gunicorn's records: a `logconfig_dict` that routes "gunicorn.error" gets every one, `%(name)s`
  reads gunicorn.error, and the file/stream handler of --error-logfile sits on "gunicorn.error". The access
  log is "gunicorn.access" (worker/edge/accesslog.py).
* corral: they stay corral's ("corral.*", handler on "corral"); the access log is "corral.access". A config
  written for gunicorn still applies: "corral" takes gunicorn.error's handlers, "corral.access"
  gunicorn.access's, when the config names gunicorn's loggers and not corral's.

Either way, a config that names the other scheme's access logger is followed (its handlers are taken over),
and an app that hands "gunicorn.error"'s handlers to its own logger (a common Flask recipe) gets the error log.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import runpy
import sys
from typing import Any

from corral.shared.settings import SettingError, Settings
from corral.worker.edge.accesslog import ACCESS_LOGGER_NAME, GUNICORN_ACCESS_LOGGER, ReopenableFileHandler, reopen_file

__all__ = ["setup_logging", "reopen_logs", "error_stream", "flush_error_log"]

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S %z"
_OURS = "_corral_error"
CORRAL = "corral"
GUNICORN_ERROR = "gunicorn.error"


class ToGunicorn(logging.Handler):
    """On the "corral" logger with --naming gunicorn: each record goes on as a "gunicorn.error" record, through
    that logger's level, filters, handlers and propagation (as gunicorn's own records would)."""

    def __init__(self) -> None:
        super().__init__()
        self.target = logging.getLogger(GUNICORN_ERROR)

    def handle(self, record: logging.LogRecord) -> bool:  # no lock: nothing emitted here
        target = self.target
        if not target.isEnabledFor(record.levelno):
            return False
        renamed = logging.makeLogRecord(record.__dict__)
        renamed.name = GUNICORN_ERROR
        target.handle(renamed)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does the work
        pass


def setup_logging(settings: Settings) -> None:
    """(Re)configure the error log from settings; raises SettingError for a bad --log-config file."""
    corral = logging.getLogger(CORRAL)
    gunicorn = logging.getLogger(GUNICORN_ERROR)
    # What an earlier call installed comes off both loggers, whichever way the log goes now (a dictConfig that
    # names neither logger would otherwise hand the closed handler back), with the level and propagation it set.
    ours = []
    for logger in (corral, gunicorn):
        for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
            logger.removeHandler(old)
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
            if old not in ours:
                ours.append(old)
    for old in ours:
        old.close()
    naming = settings.naming
    level = settings.loglevel.upper()
    if settings.logconfig_dict or settings.logconfig:
        config = dict(settings.logconfig_dict) if settings.logconfig_dict else _load_dict_config(settings.logconfig)
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)
        if naming == "gunicorn":
            gunicorn.setLevel(level)  # gunicorn sets it before applying the config (which may change it)
        logging.config.dictConfig(config)
        _keep_servers_loggers()
        _adopt_other_names(naming)
        if naming == "gunicorn" and CORRAL not in config.get("loggers", {}):
            _forward(corral, gunicorn.getEffectiveLevel())
        _capture_output(settings)
        return
    handler: logging.Handler
    if settings.errorlog in ("-", ""):
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = ReopenableFileHandler(settings.errorlog)
        except OSError as exc:
            raise SettingError(
                f"invalid value for --error-logfile: cannot open {settings.errorlog!r}: {exc.strerror or exc}"
            ) from None
    setattr(handler, _OURS, True)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    gunicorn.addHandler(handler)
    gunicorn.setLevel(level)
    gunicorn.propagate = False
    if naming == "gunicorn":
        _forward(corral, gunicorn.level)
    else:
        corral.addHandler(handler)
        corral.setLevel(level)
        corral.propagate = False
    _capture_output(settings)


def _keep_servers_loggers() -> None:
    """A config with `disable_existing_loggers: True` (structlog's gunicorn recipe has it) disables every
    logger it does not name that exists already: corral's own (`corral.master.arbiter`, ...) among them,
    whose records are the server's error log (gunicorn.error's records, with gunicorn's naming). gunicorn's
    records come from the logger the config names and so survive; corral's must too."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == CORRAL or name.startswith(CORRAL + ".")):
            logger.disabled = False


def _forward(corral: logging.Logger, level: int) -> None:
    forward = ToGunicorn()
    setattr(forward, _OURS, True)
    corral.addHandler(forward)
    corral.setLevel(level)  # records below gunicorn.error's level are not even made
    corral.propagate = False  # they reach the root (if at all) through gunicorn.error's propagation


def _adopt_other_names(naming: str) -> None:
    """A dictConfig written for the other naming (gunicorn's loggers with --naming corral, corral's access
    logger with --naming gunicorn): the logger records go to takes the named one's handlers and level (a
    config that names the logger itself is left as it is)."""
    pairs: tuple[tuple[str, str], ...]
    if naming == "gunicorn":
        pairs = ((ACCESS_LOGGER_NAME, GUNICORN_ACCESS_LOGGER),)
    else:
        pairs = ((GUNICORN_ERROR, CORRAL), (GUNICORN_ACCESS_LOGGER, ACCESS_LOGGER_NAME))
    for theirs, ours in pairs:
        source, target = logging.getLogger(theirs), logging.getLogger(ours)
        if source.handlers and not target.handlers:
            for handler in source.handlers:
                target.addHandler(handler)
            if source.level:
                target.setLevel(source.level)
            target.propagate = False


def flush_error_log() -> None:
    """Flush the error log's handlers (before a worker's stack dump is written beside them)."""
    for name in (CORRAL, GUNICORN_ERROR):
        for handler in logging.getLogger(name).handlers:
            handler.flush()


def _capture_output(settings: Settings) -> None:
    """--capture-output: fds 1 and 2 of the master (and so of every worker) go to the error log file."""
    if not settings.capture_output or settings.errorlog in ("-", ""):
        return
    try:
        fd = os.open(settings.errorlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SettingError(
            f"invalid value for --error-logfile: cannot open {settings.errorlog!r}: {exc.strerror or exc}"
        ) from None
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
    except Exception as exc:  # noqa: BLE001 - a --log-config file is user code or JSON: all it raises is one line
        raise SettingError(f"invalid value for --log-config: {path!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(config, dict):
        raise SettingError(
            f"invalid value for --log-config: {path!r} must hold a dictConfig dict "
            "(a JSON object, or LOGGING = {...} in a .py file)"
        )
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
