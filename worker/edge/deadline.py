"""--request-timeout: a deadline on every HTTP request, for ASGI and WSGI apps.

Past the deadline the client gets `504 Gateway Timeout` at once (when the response has not begun; when it
has, the connection is closed, the only way left to say the response is incomplete). Then:

- ASGI: the app's task is cancelled, and any later `receive()` returns `http.disconnect`;
- WSGI: the app's thread cannot be stopped. Its response is dropped, its next `write`/`yield`/read of the
  body raises (the bridge sees the disconnect), and the thread is counted as stuck until it returns. When the
  stuck threads fill the worker's pool (`--threads`), the worker asks to be replaced gracefully: the master
  starts a new worker first, and this one stops (its stuck threads end with the process).

This is not `--timeout`: that is the watchdog of the worker's event loop (a loop that stops beating is
killed with its stack dumped), gunicorn's `timeout` for the event loop. gunicorn's sync and gthread workers
have only that one timeout, which kills the whole worker and every request in it; this one answers the one
late request and keeps the others.

Only installed when the setting is on: no per-request work otherwise. This middleware serves ASGI apps (and
WSGI apps through the adapter, BENCH_WSGI_DISPATCH=adapter); WSGI apps served natively get the same
semantics from `corral.worker.wsgi.layers.WsgiDeadline`, swept by the server's tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["RequestDeadline", "StuckThreads", "TIMEOUT_RESPONSE"]

logger = logging.getLogger("corral.error")

_DISCONNECT = {"type": "http.disconnect"}
TIMEOUT_BODY = b"Gateway Timeout: the application did not answer in time\n"
TIMEOUT_RESPONSE: tuple[dict[str, Any], ...] = (
    {
        "type": "http.response.start",
        "status": 504,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(TIMEOUT_BODY)),
            (b"connection", b"close"),
        ],
    },
    {"type": "http.response.body", "body": TIMEOUT_BODY},
)


class _Guard:
    """The app's receive/send for one request: pass-through until the deadline, closed after it."""

    __slots__ = ("_receive", "_send", "expired", "started", "complete")

    def __init__(self, receive: Callable, send: Callable) -> None:
        self._receive = receive
        self._send = send
        self.expired = False
        self.started = False
        self.complete = False

    async def receive(self) -> dict:
        if self.expired:
            return _DISCONNECT
        message = await self._receive()
        return _DISCONNECT if self.expired else message

    async def send(self, message: dict) -> None:
        if self.expired:
            return  # the client has its 504 (or its connection closed): nothing the app says goes out
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)


class StuckThreads:
    """WSGI threads still running a request past its deadline (`stuck`): when they fill `--threads`, the worker
    asks once to be replaced (`on_stuck`). Shared by the adapter path (`RequestDeadline`) and the native WSGI
    path (`corral.worker.wsgi.layers.WsgiDeadline`)."""

    __slots__ = ("threads", "on_stuck", "stuck", "recycling")

    def __init__(self, threads: int, on_stuck: Callable[[], None]) -> None:
        self.threads = threads
        self.on_stuck = on_stuck
        self.stuck = 0
        self.recycling = False

    def thread_stuck(self) -> None:
        self.stuck += 1
        if self.stuck >= self.threads and not self.recycling:
            self.recycling = True
            logger.warning(
                "%d WSGI thread(s) are stuck past --request-timeout (--threads %d): asking for this "
                "worker to be replaced",
                self.stuck,
                self.threads,
            )
            try:
                self.on_stuck()
            except Exception:
                logger.exception("Could not ask for a replacement")

    def thread_returned(self) -> None:
        self.stuck -= 1


async def _answer(send: Callable) -> None:
    for message in TIMEOUT_RESPONSE:
        await send(message)


def _ours(task: asyncio.Task[Any]) -> bool:
    """The task's cancellation is the deadline's only: withdrawn, the request ends without an error."""
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+; before, a cancellation cannot be told apart
    return uncancel is None or uncancel() == 0


class RequestDeadline(StuckThreads):
    """ASGI middleware enforcing `timeout` seconds per HTTP request (see the module docstring)."""

    __slots__ = ("app", "timeout", "wsgi")

    def __init__(
        self, app: Callable, timeout: float, *, wsgi: bool, threads: int, on_stuck: Callable[[], None]
    ) -> None:
        super().__init__(threads, on_stuck)
        self.app = app
        self.timeout = timeout
        self.wsgi = wsgi

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.wsgi:
            await self._bridged(scope, receive, send)
            return
        # The app runs in this task, under a timer: a task of its own, waited for with wait_for and shield,
        # cost a hello-world request 81,000 instructions more than the app alone (bench guard
        # --serve-arg=--request-timeout=30: 157k against 76k), the timer and the guard's wrappers 17,000; what
        # happens at the deadline is what happened before (the 504 goes out first, then the app is cancelled).
        guard = _Guard(receive, send)
        task = asyncio.current_task()
        timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, guard, task, scope, send)
        try:
            await self.app(scope, guard.receive, guard.send)
        except asyncio.CancelledError:
            if not guard.expired or task is None or not _ours(task):
                raise  # the worker is stopping (or the client left)
        except Exception as exc:
            if not guard.expired:
                raise
            logger.debug("application raised after its deadline", exc_info=exc)
        finally:
            timer.cancel()

    def _expire(self, guard: _Guard, task: asyncio.Task[Any] | None, scope: dict, send: Callable) -> None:
        """The deadline (a loop callback): the 504 (its own task, ahead of the cancellation), then the app is
        cancelled; any later receive() is a disconnect and its sends go nowhere (`_Guard`)."""
        if guard.complete:  # finished as the deadline passed
            return
        guard.expired = True
        self._log_expired(scope, guard)
        if not guard.started:
            asyncio.get_running_loop().create_task(_answer(send))
        if task is not None:
            task.cancel()

    def _log_expired(self, scope: dict, guard: _Guard) -> None:
        logger.warning(
            "Request %s %s timed out after %gs (--request-timeout)%s",
            scope.get("method"),
            scope.get("path"),
            self.timeout,
            "" if guard.started else ": answered 504",
        )

    async def _bridged(self, scope: dict, receive: Callable, send: Callable) -> None:
        """A WSGI app through the ASGI adapter: its thread cannot be stopped, so it runs in a task of its own,
        which is left to finish (counted as stuck) once the 504 is out."""
        guard = _Guard(receive, send)
        task = asyncio.get_running_loop().create_task(self.app(scope, guard.receive, guard.send))
        try:
            await asyncio.wait_for(asyncio.shield(task), self.timeout)
            return
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:
            task.cancel()  # the worker is stopping (or the client left): the app's task goes too
            raise
        if guard.complete:  # finished as the deadline passed
            await asyncio.wait((task,))
            return
        guard.expired = True
        self._log_expired(scope, guard)
        if not guard.started:
            await _answer(send)
        self.thread_stuck()  # (only WSGI apps come here: their thread runs on, counted until it returns)
        task.add_done_callback(self._unstuck)

    def _unstuck(self, task: asyncio.Task[Any]) -> None:
        self.thread_returned()
        if not task.cancelled():
            task.exception()  # retrieved: the response was dropped, what it raised no longer matters


def wrap_deadline(
    asgi_app: Callable, raw_app: Any, timeout: float, threads: int, on_stuck: Callable[[], None]
) -> Callable:
    """`asgi_app` itself when `timeout` is 0, else under a RequestDeadline."""
    if timeout <= 0:
        return asgi_app
    wsgi = getattr(asgi_app, "wsgi_application", None) is raw_app and raw_app is not None
    return RequestDeadline(asgi_app, timeout, wsgi=wsgi, threads=threads, on_stuck=on_stuck)
