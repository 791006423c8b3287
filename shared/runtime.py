"""The bridging executors of one process: created lazily after fork, owned and shut down by the worker.

asgiref builds its single-thread executor at import time and keeps executors in class attributes, so a
forked child inherits executor objects whose threads do not exist in it. Here every executor hangs off one
`BridgeRuntime` per process, stamped with the pid that made it; `get_runtime()` makes a fresh one in a child.

A runtime also owns the persistent event loops `async_to_sync` runs coroutines on (`LoopThread`: a loop
running forever in a daemon thread): one per calling thread, made on first use, stopped when that thread
ends, and stopped by `shutdown()` along with the executors.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

__all__ = ["BridgeRuntime", "Closeable", "LoopThread", "get_runtime", "configure", "shutdown", "DEFAULT_THREADS"]

#: Default size of the worker's thread pool (sync_to_async(thread_sensitive=False) and WSGI requests).
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)


class Closeable(Protocol):
    """A resource a runtime stops on shutdown (e.g. a persistent event loop and its thread)."""

    def close(self, wait: bool = True) -> None: ...


class BridgeRuntime:
    """Owns the executors and loop threads of one process; each is created on first use."""

    __slots__ = (
        "pid", "threads", "_lock", "_pool", "_thread_sensitive", "_closed", "_resources", "_thread_loops",
        "loop_executors",
    )  # fmt: skip

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.pid = os.getpid()
        self.threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._thread_sensitive: ThreadPoolExecutor | None = None
        self._closed = False
        # Weak: a resource whose owner is gone (a dead thread's loop) is closed by its own finaliser.
        self._resources: weakref.WeakSet[Any] = weakref.WeakSet()
        # Each thread's LoopThread: released (and so stopped) when the thread ends, and with this runtime.
        self._thread_loops = threading.local()
        #: Event loop -> the executor of the `async_to_sync` call it is serving now, for thread-sensitive
        #: calls made by tasks that do not carry that call's context.
        self.loop_executors: dict[Any, Any] = {}

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The worker's thread pool: thread_sensitive=False calls and WSGI requests run here."""
        pool = self._pool
        if pool is None:
            with self._lock:
                self._check_open()
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="corral-pool")
                pool = self._pool
        return pool

    @property
    def thread_sensitive_executor(self) -> ThreadPoolExecutor:
        """The one thread that runs every thread-sensitive call made outside async_to_sync."""
        executor = self._thread_sensitive
        if executor is None:
            with self._lock:
                self._check_open()
                if self._thread_sensitive is None:
                    self._thread_sensitive = ThreadPoolExecutor(1, thread_name_prefix="corral-sync")
                executor = self._thread_sensitive
        return executor

    @property
    def thread_loop(self) -> LoopThread:
        """The calling thread's persistent loop thread (async_to_sync from a thread with no outer loop)."""
        holder = self._thread_loops
        loop_thread: LoopThread | None = getattr(holder, "loop_thread", None)
        if loop_thread is None or not loop_thread.gate.open:
            loop_thread = holder.loop_thread = LoopThread(self, f"corral-async-{threading.current_thread().name}")
        return loop_thread

    def track(self, resource: Closeable) -> None:
        """Have `shutdown()` close `resource` (held weakly); raises RuntimeError once shut down."""
        with self._lock:
            self._check_open()
            self._resources.add(resource)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the bridging runtime of this process has been shut down")

    def shutdown(self, wait: bool = True) -> None:
        """Stop every executor and loop this runtime made; later use raises RuntimeError."""
        with self._lock:
            self._closed = True
            executors = [e for e in (self._pool, self._thread_sensitive) if e is not None]
            self._pool = self._thread_sensitive = None
            resources = list(self._resources)
            self._resources.clear()
        # Loops first: their coroutines may still be waiting on work in the executors.
        for resource in resources:
            resource.close(wait=wait)
        for executor in executors:
            executor.shutdown(wait=wait, cancel_futures=not wait)


# --------------------------------------------------------------------------------------------------------
# Persistent event loops


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop: uvloop when installed, unless an event loop policy other than asyncio's is in force."""
    policy = asyncio.get_event_loop_policy()
    if type(policy) is asyncio.DefaultEventLoopPolicy:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            pass
        else:
            return uvloop.new_event_loop()
    return policy.new_event_loop()


class _Gate:
    """Whether a loop still accepts work; shared by its LoopThread and the thread running it."""

    __slots__ = ("lock", "open")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = True


def _stop_loop(loop: asyncio.AbstractEventLoop, gate: _Gate, pid: int) -> None:
    if pid != _pid:
        return  # made before a fork: its thread does not exist here, and its wake-up fd is the parent's
    with gate.lock:
        if not gate.open:
            return
        gate.open = False
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass  # already closed


def _serve_loop(loop: asyncio.AbstractEventLoop, gate: _Gate) -> None:
    """Body of a loop thread: run the loop until stopped, then cancel what is left and close it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        with gate.lock:
            gate.open = False  # from here on nothing new is scheduled; what was is run or cancelled below
        try:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _one_pass() -> None:
    pass


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    # As asyncio.run does, repeated: a callback queued before the stop may start one more task.
    for _ in range(100):
        loop.run_until_complete(_one_pass())
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception while stopping an async_to_sync event loop",
                        "exception": task.exception(),
                        "task": task,
                    }
                )


class LoopThread:
    """An event loop running forever in its own daemon thread, closed by its runtime's shutdown.

    It is also stopped once nothing refers to it any more (the thread it was made for has ended).
    """

    __slots__ = ("loop", "thread", "pid", "gate", "_finalizer", "__weakref__")

    def __init__(self, runtime: BridgeRuntime, name: str) -> None:
        self.pid = _pid
        self.loop = loop = new_event_loop()
        self.gate = gate = _Gate()
        # Neither the thread nor the finaliser refers to this object, so that dropping it stops the loop.
        self.thread = threading.Thread(target=_serve_loop, args=(loop, gate), name=name, daemon=True)
        self._finalizer = weakref.finalize(self, _stop_loop, loop, gate, self.pid)
        self._finalizer.atexit = False
        try:
            runtime.track(self)
        except BaseException:
            self._finalizer.detach()
            loop.close()
            raise
        self.thread.start()

    def schedule(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Run `callback(*args)` on the loop; False if the loop no longer accepts work."""
        gate = self.gate
        with gate.lock:
            if not gate.open:
                return False
            self.loop.call_soon_threadsafe(callback, *args)
            return True

    def close(self, wait: bool = True) -> None:
        """Stop the loop (tasks still running are cancelled) and, with `wait`, join its thread."""
        if self.pid != _pid:
            return
        self._finalizer()
        if wait and self.thread is not threading.current_thread() and self.thread.is_alive():
            self.thread.join()


# --------------------------------------------------------------------------------------------------------
# This process's runtime

_runtime: BridgeRuntime | None = None
_runtime_lock = threading.Lock()
_configured_threads = DEFAULT_THREADS
# The pid, kept up to date at fork: os.getpid() is a system call, and get_runtime() is on hot paths.
_pid = os.getpid()


def get_runtime() -> BridgeRuntime:
    """This process's runtime, made on first use (and anew in a forked child)."""
    runtime = _runtime
    if runtime is None or runtime.pid != _pid:
        runtime = _make_runtime()
    return runtime


def _make_runtime() -> BridgeRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid() or _runtime._closed:
            _runtime = BridgeRuntime(_configured_threads)
        return _runtime


def configure(threads: int) -> BridgeRuntime:
    """Size the pool of this process's runtime; replaces a runtime whose pool has not started yet."""
    global _configured_threads, _runtime
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    with _runtime_lock:
        _configured_threads = threads
        old = _runtime
        _runtime = BridgeRuntime(threads)
    if old is not None and old.pid == os.getpid():
        old.shutdown(wait=False)
    return _runtime


def shutdown(wait: bool = True) -> None:
    """Shut down this process's runtime (a worker calls this on exit); a later call makes a new one."""
    global _runtime
    with _runtime_lock:
        old, _runtime = _runtime, None
    if old is not None and old.pid == os.getpid():
        old.shutdown(wait=wait)


def _after_fork_in_child() -> None:
    # The parent's executor threads do not exist here: forget them without touching their locks.
    global _runtime, _runtime_lock, _pid
    _pid = os.getpid()
    _runtime = None
    _runtime_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
