"""The one test app that stands in for a real deployment's app module (bench/replay.py writes a shim module
under the project's own name that imports from here): WSGI and ASGI, answering every path.

`GET /...` answers 200 with JSON: the serving pid, the path and the query, and the environment variables
named in REPLAY_SHOW_ENV (what a config's raw_env or the deployment's environment gave the app).
`GET /metrics`, with PROMETHEUS_MULTIPROC_DIR set, answers prometheus_client's multiprocess exposition (the
recipe of its docs): `replay_requests_total` counts the other requests, `replay_worker_up` (livesum) the live
processes that loaded the app.
"""

from __future__ import annotations

import json
import os

_COUNTER = None

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # One per live process that imported the app, as prometheus_client's docs recipe counts them: a process
    # that exited and was not marked dead by the config's child_exit (mark_process_dead) still counts.
    from prometheus_client import Gauge

    Gauge("replay_worker_up", "1 per live process that loaded the app", multiprocess_mode="livesum").set(1)


def _counter():
    global _COUNTER
    if _COUNTER is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import Counter

        _COUNTER = Counter("replay_requests", "requests the replay app answered")
    return _COUNTER


def _metrics() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _answer(path: str, query: str) -> tuple[bytes, str]:
    if path == "/metrics" and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return _metrics()
    counter = _counter()
    if counter is not None:
        counter.inc()
    names = [n for n in os.environ.get("REPLAY_SHOW_ENV", "").split(",") if n]
    body = {"pid": os.getpid(), "path": path, "query": query, "env": {n: os.environ.get(n) for n in names}}
    return json.dumps(body).encode(), "application/json"


def wsgi_app(environ, start_response):
    body, kind = _answer(environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body, kind = _answer(scope["path"], scope["query_string"].decode("latin-1"))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_wsgi_app():
    """An app factory, for deployments started as `'module:create_app()'`."""
    return wsgi_app
