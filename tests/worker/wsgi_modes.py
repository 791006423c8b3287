"""The native WSGI path's two ways of calling the application, for the tests that run in both: on the pool's
threads (--threads 10, the default) and, with --threads 1, on the event loop's thread when it can
(corral.worker.wsgi.inline). tests/worker/wsgi/conftest.py's `thread_mode` fixture sets the mode; a test that
names its own --threads keeps them."""

from __future__ import annotations

from typing import Any

_MODE: dict[str, Any] = {}


def set_mode(threads: int | None) -> None:
    _MODE.clear()
    if threads is not None:
        _MODE["threads"] = threads


def with_mode(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (settings) with the current mode's --threads, unless they name their own."""
    if _MODE.get("threads") and "threads" not in values:
        values = dict(values, threads=_MODE["threads"])
    return values
