"""`ApplicationCommunicator`: drive an ASGI application in tests, API-compatible with asgiref.testing."""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

from corral.shared.compatibility import guarantee_single_callable
from corral.shared.timeout import timeout as _timeout

__all__ = ["ApplicationCommunicator"]


class ApplicationCommunicator:
    """Runs one ASGI application instance as a task; feeds it input messages and collects what it sends.

    The task starts on first use (inside the running loop). An exception raised by the application is
    re-raised from the next `send_input`, `receive_output`, `receive_nothing`, `wait` or `stop` call.
    """

    def __init__(self, application: Any, scope: dict[str, Any]) -> None:
        self.application = guarantee_single_callable(application)
        self.scope = scope
        self._future: asyncio.Task[Any] | None = None
        self._input_queue: asyncio.Queue[Any] | None = None
        self._output_queue: asyncio.Queue[dict[str, Any]] | None = None

    # The queues and the task are made lazily so that they belong to the loop the test runs in.
    @property
    def input_queue(self) -> asyncio.Queue[Any]:
        if self._input_queue is None:
            self._input_queue = asyncio.Queue()
        return self._input_queue

    @property
    def output_queue(self) -> asyncio.Queue[dict[str, Any]]:
        if self._output_queue is None:
            self._output_queue = asyncio.Queue()
        return self._output_queue

    @property
    def future(self) -> asyncio.Task[Any]:
        """The task running the application (started on first access)."""
        if self._future is None:
            coro = self.application(self.scope, self.input_queue.get, self.output_queue.put)
            # A fresh context: context variables set by the test must not leak into the application,
            # which a server would start with an empty context.
            self._future = contextvars.Context().run(asyncio.ensure_future, coro)
        return self._future

    def _raise_if_finished(self) -> None:
        if self.future.done():
            self.future.result()

    async def _cancel_and_reap(self) -> None:
        future = self.future
        if not future.done():
            future.cancel()
        try:
            await future
        except asyncio.CancelledError:
            pass

    async def wait(self, timeout: float = 1) -> None:
        """Wait for the application to return and re-raise its exception.

        As in asgiref, an application still running after `timeout` seconds is cancelled and `wait` returns
        None (the expiry cancels the awaited task, and an application ending cancelled is not an error).
        """
        try:
            async with _timeout._quiet(timeout):
                try:
                    await self.future
                except asyncio.CancelledError:
                    pass
        finally:
            if not self.future.done():
                await self._cancel_and_reap()

    def stop(self, exceptions: bool = True) -> None:
        """Cancel the application if it still runs; otherwise re-raise its exception (if `exceptions`)."""
        future = self._future
        if future is None:
            return
        if not future.done():
            future.cancel()
        elif exceptions:
            future.result()

    def __del__(self) -> None:
        try:
            self.stop(exceptions=False)
        except RuntimeError:
            # The event loop is already closed.
            pass

    async def send_input(self, message: dict[str, Any]) -> None:
        """Queue one message for the application's `receive()`."""
        self._raise_if_finished()
        await self.input_queue.put(message)

    async def receive_output(self, timeout: float = 1) -> dict[str, Any]:
        """Return the next message the application sent; TimeoutError (application cancelled) if none comes."""
        self._raise_if_finished()
        try:
            async with _timeout._quiet(timeout):
                return await self._next_output()
        except asyncio.TimeoutError:
            # An application that died while we waited explains the silence better than the timeout.
            if self.future.done():
                self.future.result()
            else:
                await self._cancel_and_reap()
            raise

    async def _next_output(self) -> dict[str, Any]:
        # Wait for output or for the application to fail, whichever comes first: a crashed application
        # is reported at once instead of after the whole timeout (asgiref waits it out).
        getter = asyncio.ensure_future(self.output_queue.get())
        try:
            await asyncio.wait((getter, self.future), return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                future = self.future
                if not future.cancelled() and future.exception() is not None:
                    future.result()
            return await getter
        finally:
            getter.cancel()  # no-op once it has its item; a cancelled get() leaves the queue intact

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> bool:
        """True if the application sends nothing within `timeout` seconds (polled every `interval`)."""
        self._raise_if_finished()
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.output_queue.empty():
                return False
            await asyncio.sleep(interval)
        return self.output_queue.empty()
