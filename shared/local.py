"""`Local`: attribute storage local to a thread and to an asyncio task, carried across the sync/async bridges.

Semantics as asgiref's `Local`:

* ``Local()`` keeps its data in a context variable, copied on write. A value set in an async task is seen by
  code it awaits, by tasks it creates and by sync code it calls through `sync_to_async`; concurrent tasks do
  not see each other's writes. In a sync thread the data is local to the thread, and shared with async code
  run through `async_to_sync`. Writes made on the far side of a bridge are seen by the caller afterwards.
* ``Local(thread_critical=True)`` is a plain `threading.local` in sync code, and in async code a context
  variable private to the loop's thread: nothing crosses `sync_to_async` or `async_to_sync`.

A context copied into an unrelated thread (``contextvars.Context.run`` in a new thread, `asyncio.to_thread`,
or Python 3.14's ``thread_inherit_context``) does not make the data visible there: stored data is tagged with
the thread that wrote it, and is visible elsewhere only where the bridges have deliberately moved the context
(they mark it with the thread now running it, see `_HOME`). asgiref re-tags every stored value on each
crossing instead; the marker does the same job without walking the context on the hot path.
"""

from __future__ import annotations

import threading
from asyncio.events import _get_running_loop
from contextvars import ContextVar
from typing import Any

__all__ = ["Local"]

_get_ident = threading.get_ident
_object_setattr = object.__setattr__

#: Set by the bridges in a context they hand to another thread, to the ident of that thread: data stored in
#: the context is then visible there whichever thread wrote it.
_HOME: ContextVar[int] = ContextVar("corral.local.home")

#: Name of the per-thread context variables of thread-critical locals; the bridges never copy these back.
CRITICAL_VAR_NAME = "corral.local.critical"

# "_data" is the name asgiref reserves: code that runs here must run on asgiref too.
_RESERVED = frozenset({"_corral_var", "_corral_tl", "_data"})


class _Storage:
    """The data of one `Local` in one context, tagged with the thread that wrote it."""

    __slots__ = ("thread", "data")

    def __init__(self, thread: int, data: dict[str, Any]) -> None:
        self.thread = thread
        self.data = data


def _visible(storage: _Storage | None) -> dict[str, Any] | None:
    if storage is None:
        return None
    ident = _get_ident()
    if storage.thread == ident or _HOME.get(None) == ident:
        return storage.data
    return None


class Local:
    """Namespace whose attributes are local to the current thread and asyncio task (see module docstring)."""

    __slots__ = ("_corral_var", "_corral_tl")

    def __new__(cls, thread_critical: bool = False) -> Local:
        if cls is not Local:
            # As asgiref: the storage is the class's own business (and a subclass's attributes would
            # bypass it); wrap a Local instead.
            raise TypeError("corral.shared.local.Local cannot be subclassed")
        if thread_critical:
            return object.__new__(_ThreadCriticalLocal)
        return object.__new__(cls)

    def __init__(self, thread_critical: bool = False) -> None:
        _object_setattr(self, "_corral_var", ContextVar("corral.local"))

    def __getattr__(self, key: str) -> Any:
        data = _visible(self._corral_var.get(None))
        if data is not None:
            try:
                return data[key]
            except KeyError:
                pass
        raise AttributeError(f"{self!r} object has no attribute {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _RESERVED:
            raise AttributeError(f"cannot set reserved attribute {key!r} on Local")
        var = self._corral_var
        data = _visible(var.get(None))
        # Copy on write: other contexts holding the old dict (concurrent tasks, callers) keep their view.
        data = {} if data is None else data.copy()
        data[key] = value
        var.set(_Storage(_get_ident(), data))

    def __delattr__(self, key: str) -> None:
        var = self._corral_var
        data = _visible(var.get(None))
        if data is None or key not in data:
            raise AttributeError(f"{self!r} object has no attribute {key!r}")
        data = data.copy()
        del data[key]
        var.set(_Storage(_get_ident(), data))


class _ThreadCriticalLocal(Local):
    """``Local(thread_critical=True)``: per thread; per task too in a thread running an event loop."""

    __slots__ = ()

    def __init__(self, thread_critical: bool = True) -> None:
        # Sync code: a plain thread-local. Async code: a context variable made for, and only ever used in,
        # one thread, so copies of the context that travel elsewhere never expose it (and the bridges skip
        # it, by name, when copying a context back).
        _object_setattr(self, "_corral_tl", threading.local())
        _object_setattr(self, "_corral_var", threading.local())

    def _thread_var(self) -> ContextVar[dict[str, Any]]:
        holder = self._corral_var
        var: ContextVar[dict[str, Any]]
        try:
            var = holder.var
        except AttributeError:
            holder.var = var = ContextVar(CRITICAL_VAR_NAME)
        return var

    def __getattr__(self, key: str) -> Any:
        if _get_running_loop() is None:
            data = self._corral_tl.__dict__
        else:
            data = self._thread_var().get(None) or {}
        try:
            return data[key]
        except KeyError:
            raise AttributeError(f"{self!r} object has no attribute {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _RESERVED:
            raise AttributeError(f"cannot set reserved attribute {key!r} on Local")
        if _get_running_loop() is None:
            self._corral_tl.__dict__[key] = value
            return
        var = self._thread_var()
        data = dict(var.get(None) or ())
        data[key] = value
        var.set(data)

    def __delattr__(self, key: str) -> None:
        if _get_running_loop() is None:
            data = self._corral_tl.__dict__
            if key not in data:
                raise AttributeError(f"{self!r} object has no attribute {key!r}")
            del data[key]
            return
        var = self._thread_var()
        data = var.get(None)
        if not data or key not in data:
            raise AttributeError(f"{self!r} object has no attribute {key!r}")
        data = dict(data)
        del data[key]
        var.set(data)
