"""Boot one worker in this process: load and wrap the app, run lifespan, serve the sockets, exit with a code.

This is what the master runs in each forked child, and what tests and tools run directly. The outcome is
an exit code from `corral.shared.exitcodes`, so the master can tell "could not import the app" and "the
app refused to start" (lifespan startup failed) from a crash, and stop instead of fork-looping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import traceback
from typing import Any, Callable

from corral.shared import runtime
from corral.shared.exitcodes import APP_IMPORT_ERROR, OK, WORKER_BOOT_ERROR
from corral.shared.settings import Settings
from corral.worker.accesslog import make_access_log
from corral.worker.application import AppImportError, detect_interface, import_app, wrap_application
from corral.worker.lifespan import Lifespan, LifespanFailure
from corral.worker.proxy import make_proxy_headers
from corral.worker.server import WorkerServer
from corral.worker.stateless import new_event_loop

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
) -> int:
    """Wrap `app`, run lifespan startup, serve until stopped, run lifespan shutdown; returns an exit code.

    A WSGI application is served natively (`corral.worker.wsgi_cycle`), not through the ASGI adapter; it
    has no lifespan protocol."""
    interface = detect_interface(app) if settings.interface == "auto" else settings.interface
    # (BENCH_WSGI_DISPATCH=adapter: the ASGI adapter instead, for bench/wsgi_dispatch.py's comparison.)
    wsgi = interface == "wsgi" and os.environ.get("BENCH_WSGI_DISPATCH") != "adapter"
    if wsgi and settings.lifespan == "on":
        logger.error("Worker failed to boot: --lifespan on, but a WSGI application has no lifespan protocol")
        return WORKER_BOOT_ERROR
    asgi_app = app if wsgi else wrap_application(app, interface, executor=runtime.get_runtime().pool)
    lifespan = Lifespan(asgi_app, "off" if wsgi else settings.lifespan)
    try:
        await lifespan.startup()
    except LifespanFailure as exc:
        logger.error("Worker failed to boot: lifespan startup failed: %s", exc)
        return WORKER_BOOT_ERROR
    server = WorkerServer(
        asgi_app,
        settings,
        access_log=make_access_log(settings),
        proxy=make_proxy_headers(settings),
        lifespan_state=lifespan.state,
        notify=notify,
        wsgi=wsgi,
    )
    if on_ready is not None:
        on_ready(server)
    try:
        await server.serve(sockets)
    finally:
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
        return loop.run_until_complete(serve_application(app, settings, sockets, notify=notify, on_ready=ready))
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
