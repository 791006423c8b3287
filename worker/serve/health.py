"""`--health-path` on HTTP/1.1: the protocol class that answers the health path itself.

Only connections of a server with a health path get this protocol (the class is chosen once, by the
server): without `--health-path` nothing is added to a request's path. The answer, 200 while the worker
serves and 503 once it drains, is `corral.worker.edge.health`'s, run beside the pool like `--pool-full
503`'s.
"""

from __future__ import annotations

from typing import Any

from corral.worker.edge.health import health_app
from corral.worker.http1.cycle import RequestCycle
from corral.worker.http1.protocol import HttpProtocol

__all__ = ["health_protocol"]


def health_protocol(path: str, base: type[HttpProtocol] = HttpProtocol) -> type[HttpProtocol]:
    """An HttpProtocol subclass that answers `path` itself (any method; HEAD gets no body)."""

    class HealthProtocol(base):  # type: ignore[valid-type, misc]  # a class per base: mypy takes no variable for one
        __slots__ = ()

        def on_request(
            self,
            method: bytes,
            http_version: str,
            target: bytes,
            headers: list,
            keep_alive: bool,
            expect_continue: bool,
            has_body: bool,
            forwarded: bool = True,
        ) -> Any:
            cycle = base.on_request(
                self, method, http_version, target, headers, keep_alive, expect_continue, has_body, forwarded
            )
            if type(cycle) is not RequestCycle and cycle.scope["type"] == "http" and cycle.scope["path"] == path:
                # A native WSGI server makes WsgiCycles: the probe gets an ASGI request object of its own.
                cycle = RequestCycle(
                    self, cycle.scope, cycle.keep_alive, False, cycle.is_head, cycle.http11, cycle.t0 is not None
                )
            return cycle

        def begin_request(self, cycle: RequestCycle) -> None:
            if type(cycle) is RequestCycle and cycle.scope["path"] == path:
                self.run_beside(cycle, health_app(self.server))  # a probe every few seconds: no need to keep one
                return
            base.begin_request(self, cycle)

    HealthProtocol.__name__ = HealthProtocol.__qualname__ = "HealthProtocol"
    return HealthProtocol
