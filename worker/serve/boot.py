"""Boot one worker in this process: load and wrap the app, run lifespan, serve the sockets, exit with a code.

This is what the master runs in each forked child, and what tests and tools run directly. The outcome is
an exit code from `corral.shared.exitcodes`, so the master can tell "could not import the app" and "the
app refused to start" (lifespan startup failed) from a crash, and stop instead of fork-looping.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import traceback
from collections.abc import Callable
from typing import Any

from corral.shared import runtime
from corral.shared.exitcodes import APP_IMPORT_ERROR, OK, WORKER_BOOT_ERROR
from corral.shared.settings import Settings
from corral.worker.app.hooks import WorkerView, wrap_request_hooks
from corral.worker.app.lifespan import Lifespan, LifespanFailure
from corral.worker.app.load import AppImportError, detect_interface, import_app, wrap_application
from corral.worker.app.pool import new_event_loop
from corral.worker.edge.counters import LogCounter, collecting, meter
from corral.worker.edge.deadline import wrap_deadline
from corral.worker.edge.proxy_headers import make_proxy_headers
from corral.worker.edge.sessionlog import make_request_log
from corral.worker.serve.server import WorkerServer
from corral.worker.wsgi.layers import wsgi_layers

__all__ = ["load_application", "run_worker", "serve_application"]

logger = logging.getLogger("corral.error")


def load_application(spec: str, settings: Settings) -> Any:
    """Import the app named by `spec` (`module:attr`, `module:factory()`); raises AppImportError."""
    return import_app(spec, factory=settings.factory)


async def serve_application(
    app: Any,
    settings: Settings,
    sockets: list[socket.socket],
    *,
    notify: Callable[[], None] | None = None,
    on_ready: Callable[[WorkerServer], None] | None = None,
    worker: WorkerView | None = None,
    ssl_context: Any = None,
    max_applications: int | None = None,
) -> int:
    """Wrap `app`, run lifespan startup, serve until stopped, run lifespan shutdown; returns an exit code.

    A WSGI application is served natively (`corral.worker.wsgi.cycle`), not through the ASGI adapter; it
    has no lifespan protocol. The pre_request/post_request hooks and --request-timeout are middleware on
    the ASGI path and `corral.worker.wsgi.layers` on the native WSGI path; each is installed only when set."""
    interface = detect_interface(app) if settings.interface == "auto" else settings.interface
    # (BENCH_WSGI_DISPATCH=adapter: the ASGI adapter instead, for bench/wsgi_dispatch.py's comparison.)
    wsgi = interface == "wsgi" and os.environ.get("BENCH_WSGI_DISPATCH") != "adapter"
    if wsgi and settings.lifespan == "on":
        logger.error("Worker failed to boot: --lifespan on, but a WSGI application has no lifespan protocol")
        return WORKER_BOOT_ERROR
    asgi_app = app if wsgi else wrap_application(app, interface, executor=runtime.get_runtime().pool)
    # --request-timeout and the pre_request/post_request hooks: each a layer only when set.
    worker = worker if worker is not None else WorkerView(0, settings)
    worker.wsgi = app  # gunicorn's worker.wsgi: the loaded application
    worker.loop = asyncio.get_running_loop()  # gunicorn's ASGI worker's worker.loop
    servers: list[WorkerServer] = []

    def on_stuck() -> None:  # stuck WSGI threads fill --threads: a graceful replacement (new worker first)
        if worker.recycle is not None:
            worker.recycle()
        else:
            servers[0].request_stop(True)

    layers = None
    if wsgi:
        layers = wsgi_layers(
            worker, settings.pre_request, settings.post_request, settings.request_timeout, settings.threads, on_stuck
        )
    else:
        asgi_app = wrap_deadline(asgi_app, app, settings.request_timeout, settings.threads, on_stuck)
        asgi_app = wrap_request_hooks(asgi_app, worker, settings.pre_request, settings.post_request)
    lifespan = Lifespan(asgi_app, "off" if wsgi else settings.lifespan)
    try:
        await lifespan.startup()
    except LifespanFailure as exc:
        logger.error("Worker failed to boot: lifespan startup failed: %s", exc)
        return WORKER_BOOT_ERROR
    access_log = make_request_log(settings)
    server = WorkerServer(
        asgi_app,
        settings,
        access_log=access_log,
        proxy=make_proxy_headers(settings),
        lifespan_state=lifespan.state,
        notify=notify,
        ssl_context=ssl_context,
        wsgi=wsgi,
        max_applications=max_applications,
        wsgi_layers=layers,
    )
    servers.append(server)
    if collecting(settings):
        counters = server.counters
        server.access_log = meter(counters, access_log)  # counts each response, then logs it (when logging)
        LogCounter(counters.logs).install()  # the error log's records by level (statsd log.error, ...)
    if settings.gc_freeze:
        # The application, its imports and this server live as long as the worker: out of the cyclic
        # collector's way. Its full passes over them took ~10 ms each, the p99.9 of a hello-world
        # (docs/applications.md, "Garbage collection"); what requests create is still collected.
        gc.freeze()
    if on_ready is not None:
        on_ready(server)
    try:
        await server.serve(sockets)
    finally:
        if access_log is not None:
            access_log.flush()  # access lines held for the end of the loop's turn (accesslog.DirectLines)
        await lifespan.shutdown()
    return OK


def run_worker(
    app: Any,
    settings: Settings,
    sockets: list[socket.socket],
    *,
    notify: Callable[[], None] | None = None,
    on_ready: Callable[[WorkerServer], None] | None = None,
    handle_signals: bool = True,
    worker: WorkerView | None = None,
    ssl_context: Any = None,
    max_applications: int | None = None,
) -> int:
    """Run a worker to completion on a new uvloop loop; `app` may be an object or a spec string.

    With `handle_signals`, SIGTERM stops gracefully and SIGINT/SIGQUIT stop at once (the master sends
    these; the handlers only flag the server, on the loop).
    """
    runtime.configure(settings.threads)
    if isinstance(app, str):
        try:
            app = load_application(app, settings)
        except AppImportError as exc:
            cause = exc.__cause__
            if cause is not None:
                logger.error("%s\n%s", exc, "".join(traceback.format_exception(cause)).rstrip())
            else:
                logger.error("%s", exc)
            return APP_IMPORT_ERROR

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    servers: list[WorkerServer] = []

    def ready(server: WorkerServer) -> None:
        servers.append(server)
        if handle_signals:
            loop.add_signal_handler(signal.SIGTERM, server.request_stop, True)
            loop.add_signal_handler(signal.SIGINT, server.request_stop, False)
            loop.add_signal_handler(signal.SIGQUIT, server.request_stop, False)
        if on_ready is not None:
            on_ready(server)

    try:
        return loop.run_until_complete(
            serve_application(
                app,
                settings,
                sockets,
                notify=notify,
                on_ready=ready,
                worker=worker,
                ssl_context=ssl_context,
                max_applications=max_applications,
            )
        )
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                    loop.remove_signal_handler(sig)
            asyncio.set_event_loop(None)
            loop.close()
            runtime.shutdown(wait=False)
