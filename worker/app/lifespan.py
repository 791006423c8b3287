"""The ASGI lifespan protocol, run once per worker: startup before serving, shutdown after.

The application runs as one task for the life of the worker with a `lifespan` scope. `startup()` sends
`lifespan.startup` and waits for the app's answer; `shutdown()` sends `lifespan.shutdown` and waits (bounded).

How an app that does not speak lifespan is told apart from one that fails, by mode:

* `auto`: raising *before* it receives `lifespan.startup` (e.g. Django's "can only handle ASGI/HTTP
  connections, not lifespan", an `assert scope["type"] == "http"`), or returning without answering, means
  "no lifespan support": logged at info, the worker serves without it. Raising *after* it received the
  startup message is a real startup failure (its startup handler broke), as is `lifespan.startup.failed`.
* `on`: the app must complete startup; anything else is a failure.
* `off`: nothing is run.

A failure raises `LifespanFailure`, already logged here with the app's traceback; the worker then exits
with `exitcodes.WORKER_BOOT_ERROR` without logging it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

__all__ = ["Lifespan", "LifespanFailure"]

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

_MODES = ("auto", "on", "off")
_ERROR_LOG = logging.getLogger("corral.error")  # the default logger: lifespan failures are errors


class LifespanFailure(Exception):
    """Lifespan startup failed; `message` is the app's (or our) one-line reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Lifespan:
    """One worker's lifespan conversation with the application."""

    def __init__(
        self,
        app: ASGIApp,
        mode: str = "auto",
        logger: logging.Logger = _ERROR_LOG,
        *,
        startup_timeout: float | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"lifespan mode must be one of {', '.join(_MODES)}, got {mode!r}")
        self.app = app
        self.mode = mode
        self.logger = logger
        self.startup_timeout = startup_timeout  # None: startup may take as long as it needs (model loading)
        self.shutdown_timeout = shutdown_timeout
        #: Shared with the app as scope["state"]; the server shallow-copies it into each request scope.
        self.state: dict[str, Any] = {}
        #: Whether the app completed startup (so shutdown will be sent).
        self.running = False
        self._task: asyncio.Task | None = None
        self._receive_queue: asyncio.Queue | None = None
        self._startup_answer: asyncio.Future | None = None
        self._shutdown_answer: asyncio.Future | None = None
        self._received_startup = False
        self._answered_failed = False

    @property
    def scope(self) -> dict:
        return {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}

    # ------------------------------------------------------------------------ the app's side

    async def _receive(self) -> dict:
        assert self._receive_queue is not None
        message = await self._receive_queue.get()
        if message["type"] == "lifespan.startup":
            self._received_startup = True
        return message

    async def _send(self, message: dict) -> None:
        kind = message.get("type")
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            answer = self._startup_answer
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            answer = self._shutdown_answer
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in the lifespan protocol")
        if answer is None or answer.done():
            raise RuntimeError(f"ASGI message {kind!r} sent out of order in the lifespan protocol")
        if kind.endswith(".failed"):
            self._answered_failed = True
        answer.set_result(message)

    async def _main(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        finally:
            # Whatever happens, nobody must wait for an answer the app can no longer give.
            for answer in (self._startup_answer, self._shutdown_answer):
                if answer is not None and not answer.done():
                    answer.set_result(None)

    # ------------------------------------------------------------------------ the server's side

    async def startup(self) -> None:
        """Run the app's startup; raises LifespanFailure if it fails (or, in mode 'on', is unsupported)."""
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._receive_queue = asyncio.Queue()
        self._startup_answer = loop.create_future()
        self._shutdown_answer = loop.create_future()
        self._task = loop.create_task(self._main(), name="corral-lifespan")
        await self._receive_queue.put({"type": "lifespan.startup"})
        try:
            await asyncio.wait_for(asyncio.shield(self._startup_answer), self.startup_timeout)
        except asyncio.TimeoutError:
            await self._cancel_task()
            self._fail(f"lifespan startup did not complete within {self.startup_timeout:g}s", None)
        except BaseException:  # cancelled while starting (the worker is told to stop): take the app down too
            await self._cancel_task()
            raise

        message = self._startup_answer.result()
        if message is not None and message["type"] == "lifespan.startup.complete":
            self.running = True
            return
        if message is not None:  # lifespan.startup.failed
            await self._settle_task()
            error = self._task_exception()
            self._fail(message.get("message") or "lifespan startup failed", error)

        # The task ended without answering: unsupported, or a crash in the startup handler.
        await self._settle_task()
        error = self._task_exception()
        if self.mode == "auto" and not self._received_startup:
            self.logger.info("ASGI 'lifespan' protocol appears unsupported by the application.")
            if error is not None:
                self.logger.debug("lifespan: the application raised %r", error, exc_info=error)
            return
        if error is not None:
            self._fail(f"exception in lifespan startup: {type(error).__name__}: {error}", error)
        if self.mode == "auto":  # received startup, returned without answering: treat as unsupported
            self.logger.info("ASGI 'lifespan' protocol appears unsupported by the application.")
            return
        self._fail("lifespan is 'on' but the application returned without completing startup", None)

    async def shutdown(self) -> None:
        """Run the app's shutdown (bounded by shutdown_timeout); failures are logged, never raised."""
        if not self.running:
            return
        self.running = False
        assert self._receive_queue is not None and self._shutdown_answer is not None
        await self._receive_queue.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self._shutdown_answer), self.shutdown_timeout)
        except asyncio.TimeoutError:
            self.logger.error("Lifespan shutdown did not complete within %gs; cancelling it.", self.shutdown_timeout)
            await self._cancel_task()
            return
        except BaseException:
            await self._cancel_task()
            raise
        message = self._shutdown_answer.result()
        await asyncio.sleep(0)  # let the app return after its last send
        if message is None:  # the task ended without answering
            await self._settle_task()
            error = self._task_exception()
            if error is not None:
                self.logger.error("Exception in lifespan shutdown", exc_info=error)
            else:
                self.logger.error("Lifespan shutdown: the application returned without completing shutdown.")
        elif message["type"] == "lifespan.shutdown.failed":
            self.logger.error("Lifespan shutdown failed: %s", message.get("message") or "(no message)")
        await self._cancel_task()  # an app still waiting on receive() after answering

    # ------------------------------------------------------------------------ helpers

    def _fail(self, message: str, error: BaseException | None) -> NoReturn:
        self.logger.error("Application startup failed: %s", message, exc_info=error)
        raise LifespanFailure(message) from error

    async def _settle_task(self) -> None:
        """Let the app task finish after its final message (it may re-raise, as Starlette does)."""
        task = self._task
        if task is None or task.done():
            return
        await asyncio.sleep(0)
        if not task.done():
            await self._cancel_task()

    async def _cancel_task(self) -> None:
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            # Bounded: an app that swallows the cancellation must not keep the worker from exiting.
            await asyncio.wait({task}, timeout=1.0)
        if task.done() and not task.cancelled():
            task.exception()  # mark it retrieved: no "exception was never retrieved" noise at exit

    def _task_exception(self) -> BaseException | None:
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()
