"""The request layers of the native WSGI path: --request-timeout and the pre_request/post_request hooks.

On the ASGI path these are middleware (`corral.worker.edge.deadline`, `corral.worker.app.hooks`); a native WSGI
request is not an ASGI call, so here they are:

- `WsgiDeadline`: no timer per request. The server's tick (`WorkerServer._ticker`, every
  min(1 s, timeout / 4)) sweeps the pool's in-flight WSGI requests, whose slots carry their start time
  already, and expires those past the deadline (`WsgiCycle.expire`: 504 at once, or a close once the
  response has begun). Their threads cannot be stopped: each counts as stuck until it returns, and when the
  stuck threads fill `--threads` the worker asks to be replaced (`on_stuck`), as `RequestDeadline` does.
- `HookedWsgiCycle`: the request class when a hook is set. The hooks run on the request's thread around
  the application call, as gunicorn runs them in its worker thread: pre_request before the app,
  post_request once the response is handed over, with the environ the app got and `req`/`resp` objects of
  `corral.worker.app.hooks`. When neither hook is set the plain `WsgiCycle` is used: nothing per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from corral.worker.app.hooks import (
    HookRequest,
    HookResponse,
    WorkerView,
    call_post_request,
    call_pre_request,
    hook_arity,
)
from corral.worker.edge.deadline import TIMEOUT_BODY, TIMEOUT_RESPONSE, StuckThreads
from corral.worker.wsgi.call import FAILED, STREAM
from corral.worker.wsgi.cycle import WsgiCycle

__all__ = ["WsgiDeadline", "WsgiHooks", "HookedWsgiCycle", "WsgiLayers", "wsgi_layers"]

logger = logging.getLogger("corral.error")

_TIMEOUT_HEADERS = tuple(TIMEOUT_RESPONSE[0]["headers"])  # the 504's headers, as the ASGI path sends them


class Expirable(Protocol):
    def expire(self, timeout: float) -> bool: ...


class WsgiDeadline(StuckThreads):
    """--request-timeout for native WSGI requests (see the module docstring)."""

    __slots__ = ("timeout", "pool")

    def __init__(self, timeout: float, threads: int, on_stuck: Callable[[], None]) -> None:
        super().__init__(threads, on_stuck)
        self.timeout = timeout
        self.pool: Any = None  # the worker's WorkerThreads (wsgi_setup): told how many of its threads are stuck

    def sweep(self, instances: dict[Any, Any]) -> None:
        """Expire the requests of `instances` (the server's pool: cycle -> ApplicationInstance, whose
        `last_used` is the request's start for a WSGI request) that started `timeout` seconds ago or more."""
        limit = time.monotonic() - self.timeout
        late: list[Expirable] = [
            cycle
            for cycle, instance in instances.items()
            if instance.last_used <= limit and isinstance(cycle, WsgiCycle)
        ]
        for cycle in late:
            if cycle.expire(self.timeout):
                self.thread_stuck()

    def thread_stuck(self) -> None:
        if self.pool is not None:
            self.pool.stuck = self.stuck + 1  # the next request wakes another thread rather than wait for it
        super().thread_stuck()

    def returned(self) -> None:
        """A stuck thread's application returned (on the loop, when its request completes)."""
        self.thread_returned()
        if self.pool is not None:
            self.pool.stuck = self.stuck


class WsgiHooks:
    """The worker's pre_request/post_request, for `HookedWsgiCycle`."""

    __slots__ = ("worker", "pre", "post", "post_arity")

    def __init__(self, worker: WorkerView, pre: Callable | None, post: Callable | None) -> None:
        self.worker = worker
        self.pre = pre
        self.post = post
        self.post_arity = hook_arity(post) if post is not None else 4


class HookedWsgiCycle(WsgiCycle):
    """A native WSGI request with the hooks around its application call (on its thread)."""

    __slots__ = ()

    def _respond(self, environ: dict) -> None:
        hooks: WsgiHooks = self.outbox.hooks
        request = HookRequest(self.scope)
        if hooks.pre is not None:
            call_pre_request(hooks.pre, hooks.worker, request)
        WsgiCycle._respond(self, environ)  # returns once the response is posted (or written)
        if hooks.post is not None:
            if self.outcome == STREAM:
                # Called on the loop's thread (--threads 1), the body to stream: post_request once it is sent.
                self.result = _Streamed(self.result, request, environ)
                return
            call_post_request(hooks.post, hooks.post_arity, hooks.worker, request, environ, self._hook_response())

    def stream_rest(self) -> None:
        streamed = self.result
        if type(streamed) is not _Streamed:
            WsgiCycle.stream_rest(self)
            return
        self.result = streamed.result
        WsgiCycle.stream_rest(self)
        hooks: WsgiHooks = self.outbox.hooks
        if hooks.post is not None:
            call_post_request(
                hooks.post, hooks.post_arity, hooks.worker, streamed.request, streamed.environ, self._hook_response()
            )

    def _hook_response(self) -> HookResponse:
        """What the client got: the app's response, the server's 500 for an app that failed before its head,
        or the 504 of --request-timeout."""
        response = HookResponse(None)  # type: ignore[arg-type]  # filled here, never sent through
        if getattr(self, "timed_out", False):
            response.status_code = 504
            response.raw_headers = _TIMEOUT_HEADERS
            response.sent = len(TIMEOUT_BODY)
        elif self.outcome == FAILED and not self.head_sent:
            response.status_code = 500
        else:
            response.status_code = self.status
            response.raw_headers = self.headers
            response.sent = self.nbytes
        return response


class _Streamed:
    """A response body to stream after its application call, with what post_request is then called with."""

    __slots__ = ("result", "request", "environ")

    def __init__(self, result: Any, request: HookRequest, environ: dict) -> None:
        self.result = result
        self.request = request
        self.environ = environ


class WsgiLayers:
    """What `wsgi_layers()` chose, handed to the server (`WorkerServer(wsgi_layers=...)`)."""

    __slots__ = ("deadline", "hooks")

    def __init__(self, deadline: WsgiDeadline | None, hooks: WsgiHooks | None) -> None:
        self.deadline = deadline
        self.hooks = hooks


def wsgi_layers(
    worker: WorkerView,
    pre: Callable | None,
    post: Callable | None,
    timeout: float,
    threads: int,
    on_stuck: Callable[[], None],
) -> WsgiLayers | None:
    """The layers that are set (a deadline when `timeout` > 0, the hooks when either is set), or None when
    none is: then nothing is installed and a request costs what it costs without them."""
    deadline = WsgiDeadline(timeout, threads, on_stuck) if timeout > 0 else None
    hooks = WsgiHooks(worker, pre, post) if pre is not None or post is not None else None
    return WsgiLayers(deadline, hooks) if deadline is not None or hooks is not None else None
