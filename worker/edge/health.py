"""`--health-path`: a health check the worker answers itself, without the application and outside the pool.

A load balancer's probe must tell "this worker takes work" from "this worker is going away", and must not
queue behind the application: so the answer comes from the worker (no application call, no pool slot,
also while the pool is full) - `200 OK` while the worker serves, `503` once it drains (a graceful stop or
a HUP retirement: the balancer stops sending before the connections are closed). Like `--pool-full 503`'s
answer, it is a tiny ASGI application run beside the pool.

This is the answer; who routes the path to it is the protocol: HTTP/1.1's class with a health path
(`corral.worker.serve.health`, chosen once by the server: without `--health-path` nothing is added to a
request's path) and every HTTP/2 connection (`corral.worker.http2.protocol`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["health_app"]

_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
_DRAINING_HEADERS = [*_HEADERS, (b"retry-after", b"1")]


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
