"""A `timeout` context manager with asgiref's API (`asgiref.timeout.timeout`), built on `loop.call_at`.

On expiry the enclosing task is cancelled and the resulting CancelledError is turned into
`asyncio.TimeoutError` when it leaves the block. On Python 3.11+ the task's cancellation counter is used
(`Task.cancelling()` / `Task.uncancel()`, as `asyncio.timeout` does) so that a cancellation coming from
outside the block while it runs, even one that races with the expiry, propagates as CancelledError instead
of being swallowed into a TimeoutError.

Deprecated, as asgiref 3.13 deprecates its own: use `asyncio.timeout()` (Python 3.11+).
"""

from __future__ import annotations

import asyncio
import warnings
from types import TracebackType
from typing import Any

__all__ = ["timeout"]


class timeout:  # noqa: N801 - asgiref's name (asgiref.timeout.timeout)
    """Cancel the block after `delay` seconds and raise `asyncio.TimeoutError`; `delay=None` disables it.

    Usable as `async with timeout(1.0): ...`, or as a plain `with` inside a coroutine running in a task.
    """

    __slots__ = ("_delay", "_loop", "_task", "_handle", "_deadline", "_expired", "_cancelling")

    def __init__(self, delay: float | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # Deprecated as in asgiref 3.13 (same message, so that code filtering asgiref's warning works here).
        warnings.warn(
            "corral.shared.timeout.timeout is deprecated. Use asyncio.timeout() instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        if loop is not None:
            warnings.warn("The loop argument to timeout() is deprecated.", DeprecationWarning, stacklevel=2)
        self._setup(delay, loop)

    @classmethod
    def _quiet(cls, delay: float | None) -> timeout:
        """A timeout without the deprecation warning (ApplicationCommunicator on Python 3.10)."""
        self = cls.__new__(cls)
        self._setup(delay, None)
        return self

    def _setup(self, delay: float | None, loop: asyncio.AbstractEventLoop | None) -> None:
        self._delay = delay
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.Handle | None = None
        self._deadline: float | None = None
        self._expired = False
        self._cancelling = 0

    @property
    def expired(self) -> bool:
        """True once the delay ran out and the block was cancelled."""
        return self._expired

    @property
    def remaining(self) -> float | None:
        """Seconds left before expiry (never negative), or None when there is no deadline."""
        if self._deadline is None:
            return None
        return max(self._deadline - self._loop.time(), 0.0)

    def __enter__(self) -> timeout:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._exit(exc_type, exc_val)

    async def __aenter__(self) -> timeout:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._exit(exc_type, exc_val)

    def _enter(self) -> timeout:
        if self._task is not None or self._expired:
            raise RuntimeError("timeout() context managers cannot be reused")
        if self._delay is None:
            return self
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("timeout() must be used inside a task")
        self._task = task
        # Cancellations already requested before the block are not ours to consume on exit.
        cancelling = getattr(task, "cancelling", None)
        self._cancelling = cancelling() if cancelling is not None else 0
        loop = self._loop
        self._deadline = loop.time() + max(self._delay, 0.0)
        if self._delay <= 0:
            self._handle = loop.call_soon(self._on_expiry)
        else:
            self._handle = loop.call_at(self._deadline, self._on_expiry)
        return self

    def _exit(self, exc_type: type[BaseException] | None, exc_val: BaseException | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task, self._task = self._task, None
        if not self._expired or task is None:
            return
        uncancel = getattr(task, "uncancel", None)
        if uncancel is not None:
            # 3.11+: withdraw our own cancel request; if others remain, someone else cancelled the task
            # too and their CancelledError must propagate unchanged.
            if uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise asyncio.TimeoutError from exc_val
        elif exc_type is asyncio.CancelledError:
            # 3.10 has no cancellation counter: like asgiref, assume the cancellation was ours.
            raise asyncio.TimeoutError from exc_val

    def _on_expiry(self) -> None:
        self._handle = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            self._expired = True
