"""master/logs.py: the error log set up again (a HUP with other settings) leaves no handler behind."""

from __future__ import annotations

import logging

import pytest

from corral.master.logs import setup_logging
from corral.shared.settings import Settings


@pytest.fixture
def loggers():
    """corral's and gunicorn's error loggers, restored after the test."""
    saved = {}
    for name in ("corral", "gunicorn.error"):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
    yield logging.getLogger("corral"), logging.getLogger("gunicorn.error")
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate


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
