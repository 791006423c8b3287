"""Helpers shared by the test_sync_*.py files (tests/shared/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import contextvars
import threading

WAIT = 10  # seconds: a bound for waits on a busy machine, never reached when things work
var: contextvars.ContextVar[str] = contextvars.ContextVar("test_sync_var")


def current_thread_name() -> str:
    return threading.current_thread().name
