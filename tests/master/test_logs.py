"""master/observe/logs.py: where the error log goes under each --naming, gunicorn's logger names in a dictConfig, and
a setup made again (a HUP with other settings) leaving no handler behind."""

from __future__ import annotations

import logging

import pytest

from corral.master.observe.logs import setup_logging
from corral.shared.settings import Settings
from corral.worker.edge.accesslog import make_access_log

NAMES = ("corral", "gunicorn.error", "corral.access", "gunicorn.access")


@pytest.fixture
def loggers():
    """corral's and gunicorn's error and access loggers, as a fresh process has them (no handlers, level
    NOTSET, propagating: so pytest does not attach its capture handlers to them either), restored after."""
    saved = {}
    for name in NAMES:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    yield logging.getLogger("corral"), logging.getLogger("gunicorn.error")
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_a_dict_config_that_names_neither_logger_drops_the_old_error_logfile(tmp_path, loggers):
    corral, gunicorn = loggers
    old_file = tmp_path / "error.log"
    setup_logging(Settings(errorlog=str(old_file)))
    assert [h.baseFilename for h in gunicorn.handlers if hasattr(h, "baseFilename")] == [str(old_file)]
    # HUP to a --log-config that configures only the root logger: neither logger keeps the old file's handler,
    # and corral's error log does not go to it.
    setup_logging(Settings(logconfig_dict={"version": 1, "root": {"level": "INFO"}}))
    for logger in (corral, gunicorn):
        assert not [h for h in logger.handlers if getattr(h, "baseFilename", None) == str(old_file)], logger.name
    size = old_file.stat().st_size
    corral.error("after the HUP")
    assert old_file.stat().st_size == size


def test_by_default_the_error_log_is_gunicorns_logger(tmp_path, loggers):
    """corral's modules log below "corral"; the records reach the file as gunicorn.error records, in
    gunicorn's line format, at --log-level."""
    path = tmp_path / "error.log"
    setup_logging(Settings(errorlog=str(path), loglevel="warning"))
    seen = []
    spy = logging.Handler()
    spy.emit = seen.append  # type: ignore[method-assign]  # a spy
    logging.getLogger("gunicorn.error").addHandler(spy)
    logging.getLogger("corral.master").warning("Worker %d died", 3)
    logging.getLogger("corral.worker.server").info("below --log-level")
    assert [(r.name, r.getMessage()) for r in seen] == [("gunicorn.error", "Worker 3 died")]
    for handler in logging.getLogger("gunicorn.error").handlers:
        handler.flush()
    (line,) = lines(path)
    assert line.endswith("] [WARNING] Worker 3 died") and line.startswith("[")


def test_naming_corral_keeps_corrals_loggers(tmp_path, loggers):
    path = tmp_path / "error.log"
    setup_logging(Settings(errorlog=str(path), naming="corral"))
    seen = []
    spy = logging.Handler()
    spy.emit = seen.append  # type: ignore[method-assign]  # a spy
    logging.getLogger("corral").addHandler(spy)
    logging.getLogger("corral.master").info("started")
    assert [r.name for r in seen] == ["corral.master"]
    for handler in logging.getLogger("corral").handlers:
        handler.flush()
    assert lines(path)[0].endswith("[INFO] started")
    # an app borrowing gunicorn.error's handlers (a Flask recipe) writes to the same file
    assert [h for h in logging.getLogger("gunicorn.error").handlers if getattr(h, "baseFilename", "") == str(path)]


def gunicorn_dict(tmp_path, *names):
    handlers = {
        name: {"class": "logging.FileHandler", "filename": str(tmp_path / f"{name}.log"), "formatter": "named"}
        for name in names
    }
    return {
        "version": 1,
        "formatters": {"named": {"format": "%(name)s|%(levelname)s|%(message)s"}},
        "handlers": handlers,
        "loggers": {name: {"handlers": [name], "level": "INFO", "propagate": False} for name in names},
    }


def flush_all():
    for name in NAMES:
        for handler in logging.getLogger(name).handlers:
            handler.flush()


@pytest.mark.parametrize("naming", ["gunicorn", "corral"])
def test_a_logconfig_dict_routing_gunicorns_loggers_gets_every_record(tmp_path, loggers, naming):
    config = gunicorn_dict(tmp_path, "gunicorn.error", "gunicorn.access")
    settings = Settings(logconfig_dict=config, naming=naming)
    setup_logging(settings)
    logging.getLogger("corral.worker.server").error("worker trouble")
    access = make_access_log(settings)
    assert access is not None  # the config gives the access logger a handler: the access log is on
    access(
        {
            "type": "http",
            "method": "GET",
            "path": "/x",
            "raw_path": b"/x",
            "query_string": b"",
            "http_version": "1.1",
            "headers": [],
            "client": ("10.0.0.1", 1),
        },
        200,
        2,
        0.001,
        [],
    )
    flush_all()
    error_name = "gunicorn.error" if naming == "gunicorn" else "corral.worker.server"
    access_name = "gunicorn.access" if naming == "gunicorn" else "corral.access"
    assert lines(tmp_path / "gunicorn.error.log") == [f"{error_name}|ERROR|worker trouble"]
    (line,) = lines(tmp_path / "gunicorn.access.log")
    assert line.startswith(f"{access_name}|INFO|10.0.0.1 - - [") and line.endswith('"GET /x HTTP/1.1" 200 2 "-" "-"')


@pytest.mark.parametrize("naming", ["gunicorn", "corral"])
def test_disable_existing_loggers_keeps_the_servers_own_records(tmp_path, loggers, naming):
    """structlog's gunicorn recipe sets disable_existing_loggers: True; the server's records still arrive (in
    gunicorn they come from gunicorn.error, which the config names; here from corral's loggers)."""
    arbiter = logging.getLogger("corral.master.arbiter")  # exists before the config, as at import
    app = logging.getLogger("someapp.module")
    config = dict(gunicorn_dict(tmp_path, "gunicorn.error", "gunicorn.access"), disable_existing_loggers=True)
    setup_logging(Settings(logconfig_dict=config, naming=naming))
    arbiter.info("Booting worker 1")
    app.info("an app logger the config does not name")  # disabled, as dictConfig says
    flush_all()
    name = "gunicorn.error" if naming == "gunicorn" else "corral.master.arbiter"
    assert lines(tmp_path / "gunicorn.error.log") == [f"{name}|INFO|Booting worker 1"]
    assert app.disabled
    app.disabled = False


def test_a_config_written_for_corrals_names_still_applies(tmp_path, loggers):
    config = gunicorn_dict(tmp_path, "corral", "corral.access")
    settings = Settings(logconfig_dict=config)
    setup_logging(settings)
    logging.getLogger("corral.master").warning("kept")
    access = make_access_log(settings)
    access({"type": "http", "path": "/", "headers": [], "client": None, "query_string": b""}, 204, 0, 0.0, [])
    flush_all()
    assert lines(tmp_path / "corral.log") == ["corral.master|WARNING|kept"]
    assert lines(tmp_path / "corral.access.log")[0].startswith("gunicorn.access|INFO|- - - [")


def test_a_setup_made_again_leaves_one_handler(tmp_path, loggers):
    corral, gunicorn = loggers
    for naming in ("gunicorn", "corral", "gunicorn"):
        setup_logging(Settings(errorlog=str(tmp_path / "error.log"), naming=naming))
    assert len(gunicorn.handlers) == 1 and len(corral.handlers) == 1
    corral.getChild("master").warning("once")
    for handler in gunicorn.handlers:
        handler.flush()
    assert len(lines(tmp_path / "error.log")) == 1
