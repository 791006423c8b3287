"""ASGI 2 ("double callable") to ASGI 3 ("single callable") adaptation, API-compatible with asgiref's."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

from corral.shared.coroutines import iscoroutinefunction

__all__ = ["is_double_callable", "double_to_single_callable", "guarantee_single_callable"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGI3Application = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_double_callable(application: Any) -> bool:
    """True if `application` looks like an ASGI 2 app: `application(scope)` returns `instance(receive, send)`."""
    # An explicit marker wins over every heuristic.
    if getattr(application, "_asgi_single_callable", False):
        return False
    if getattr(application, "_asgi_double_callable", False):
        return True
    # A class is called with the scope to make the per-connection instance: the ASGI 2 shape.
    if inspect.isclass(application):
        return True
    # An instance whose __call__ is a coroutine function is ASGI 3. A sync __call__ proves nothing yet:
    # the object itself may be marked as a coroutine function (checked below).
    call = getattr(application, "__call__", None)  # noqa: B004 - the bound __call__ itself is inspected
    if call is not None and iscoroutinefunction(call):
        return False
    return not iscoroutinefunction(application)


def double_to_single_callable(application: Callable[[Scope], Any]) -> ASGI3Application:
    """Wrap an ASGI 2 application so that it is called the ASGI 3 way."""

    async def new_application(scope: Scope, receive: Receive, send: Send) -> Any:
        instance = application(scope)
        return await instance(receive, send)  # its return value passes through, as asgiref's

    return new_application


def guarantee_single_callable(application: Any) -> ASGI3Application:
    """Return `application` in ASGI 3 form, wrapping it only if it is an ASGI 2 application."""
    if is_double_callable(application):
        return double_to_single_callable(application)
    return cast(ASGI3Application, application)
