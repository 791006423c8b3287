"""`--health-path`: a health check the worker answers itself, without the application and outside the pool.

A load balancer's probe must tell "this worker takes work" from "this worker is going away", and must not
queue behind the application: so the answer comes from the worker (no application call, no pool slot,
also while the pool is full) - `200 OK` while the worker serves, `503` once it drains (a graceful stop or
a HUP retirement: the balancer stops sending before the connections are closed). Like `--pool-full 503`'s
answer, it is a tiny ASGI application run beside the pool.

Only connections of a server with a health path get this protocol (the class is chosen once, by the
server): without `--health-path` nothing is added to a request's path.
"""

from __future__ import annotations

from typing import Any

from corral.worker.http1.cycle import RequestCycle
from corral.worker.http1.protocol import HttpProtocol

__all__ = ["health_protocol", "health_app"]

_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
_DRAINING_HEADERS = _HEADERS + [(b"retry-after", b"1")]


def health_app(server: Any) -> Any:
    """The application answering the health path for `server`: 200 while serving, 503 while draining or
    stopping."""

    async def health(scope: dict, receive: Any, send: Any) -> None:
        if server.stopping or server.draining:  # draining: --drain-delay, the first part of a TERM
            await send({"type": "http.response.start", "status": 503, "headers": _DRAINING_HEADERS})
            await send({"type": "http.response.body", "body": b"draining\n"})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": b"OK\n"})

    return health


def health_protocol(path: str, base: type[HttpProtocol] = HttpProtocol) -> type[HttpProtocol]:
    """An HttpProtocol subclass that answers `path` itself (any method; HEAD gets no body)."""

    class HealthProtocol(base):  # type: ignore[valid-type, misc]
        __slots__ = ()

        def on_request(self, method: bytes, http_version: str, target: bytes, headers: list, keep_alive: bool,
                       expect_continue: bool, has_body: bool) -> Any:
            cycle = base.on_request(self, method, http_version, target, headers, keep_alive, expect_continue,
                                    has_body)
            if type(cycle) is not RequestCycle and cycle.scope["type"] == "http" and cycle.scope["path"] == path:
                # A native WSGI server makes WsgiCycles: the probe gets an ASGI request object of its own.
                cycle = RequestCycle(self, cycle.scope, cycle.keep_alive, False, cycle.is_head, cycle.http11,
                                     cycle.t0 is not None)
            return cycle

        def start_request(self, cycle: RequestCycle) -> None:
            if type(cycle) is RequestCycle and cycle.scope["path"] == path:
                self.run_beside(cycle, health_app(self.server))  # a probe every few seconds: no need to keep one
                return
            base.start_request(self, cycle)

    HealthProtocol.__name__ = HealthProtocol.__qualname__ = "HealthProtocol"
    return HealthProtocol
