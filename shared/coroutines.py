"""Coroutine-function detection that also sees functions marked with `markcoroutinefunction`."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["iscoroutinefunction", "markcoroutinefunction"]

_F = TypeVar("_F", bound=Callable[..., Any])

if sys.version_info >= (3, 12):
    iscoroutinefunction = inspect.iscoroutinefunction
    markcoroutinefunction = inspect.markcoroutinefunction
else:
    import asyncio.coroutines

    # Python < 3.12 has no public marker. Use asyncio's private one, as asgiref does, so that callables
    # marked by asgiref (Django's async middleware) and by corral are recognised alike.
    _MARKER = getattr(asyncio.coroutines, "_is_coroutine", object())

    def iscoroutinefunction(func: Any) -> bool:
        """True for `async def` functions and for callables marked with `markcoroutinefunction`."""
        while inspect.ismethod(func):
            func = func.__func__
        while hasattr(func, "func") and hasattr(func, "args") and hasattr(func, "keywords"):
            func = func.func  # functools.partial, as inspect does on 3.12
        if getattr(func, "_is_coroutine", None) is _MARKER:
            return True
        return inspect.iscoroutinefunction(func)

    def markcoroutinefunction(func: _F) -> _F:
        """Mark a sync callable that returns an awaitable so that it is treated as a coroutine function."""
        if hasattr(func, "__func__"):
            func = func.__func__
        func._is_coroutine = _MARKER  # type: ignore[attr-defined]  # asyncio's marker, as asgiref sets it
        return func
