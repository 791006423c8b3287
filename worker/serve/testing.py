"""Run a `WorkerServer` in-process, on a uvloop loop in a background thread (for tests and tools)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from corral.shared.settings import Settings
from corral.worker.app.pool import new_event_loop
from corral.worker.serve.server import WorkerServer

__all__ = ["run_server", "call_in_loop"]


@contextlib.contextmanager
def run_server(
    app: Any,
    settings: Settings | None = None,
    *,
    graceful_exit: bool = False,
    stop_timeout: float = 10.0,
    sock: socket.socket | None = None,
    **kwargs: Any,
) -> Iterator[tuple[str, Any, WorkerServer]]:
    """Bind 127.0.0.1:0, serve `app` in a thread; yields (host, port, server); stops it on exit.

    `sock`: serve this listening socket instead (a unix socket yields (path, None, server)); it is closed
    on exit like the one made here.

    Clients may connect at once: the socket listens before the server starts, so early connections wait
    in the backlog. On exit the server is stopped (gracefully if `graceful_exit`) and the thread joined
    within `stop_timeout` seconds; a server that does not stop in time is an error.
    """
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
    address = sock.getsockname()
    host, port = (address, None) if sock.family == socket.AF_UNIX else address[:2]
    server = WorkerServer(app, settings if settings is not None else Settings(), **kwargs)
    loop = new_event_loop()
    server.loop = loop  # for call_in_loop before serve() has started
    errors: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.call_soon(started.set)
            loop.run_until_complete(server.serve([sock]))
        except BaseException as exc:  # noqa: BLE001 - reported to the test on exit
            errors.append(exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    thread = threading.Thread(target=run, name="corral-test-server", daemon=True)
    thread.start()
    try:
        started.wait(stop_timeout)
        yield host, port, server
    finally:
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(server.request_stop, graceful_exit)
            except RuntimeError:  # the loop closed meanwhile
                pass
        thread.join(stop_timeout)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"the test server did not stop within {stop_timeout} s")
        if errors:
            raise errors[0]


def call_in_loop(server: WorkerServer, func: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Run `func()` on the server's loop thread and return its result (bounded wait)."""
    assert server.loop is not None

    async def call() -> Any:
        return func()

    future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(call(), server.loop)
    return future.result(timeout)
