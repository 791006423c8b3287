"""The bridging executors of one process: created lazily after fork, owned and shut down by the worker.

asgiref builds its single-thread executor at import time and keeps executors in class attributes, so a
forked child inherits executor objects whose threads do not exist in it. Here every executor hangs off one
`BridgeRuntime` per process, stamped with the pid that made it; `get_runtime()` makes a fresh one in a child.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["BridgeRuntime", "get_runtime", "configure", "shutdown", "DEFAULT_THREADS"]

#: Default size of the worker's thread pool (sync_to_async(thread_sensitive=False) and WSGI requests).
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)


class BridgeRuntime:
    """Owns the executors of one process; every executor is created on first use."""

    __slots__ = ("pid", "threads", "_lock", "_pool", "_thread_sensitive", "_closed")

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.pid = os.getpid()
        self.threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._thread_sensitive: ThreadPoolExecutor | None = None
        self._closed = False

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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the bridging runtime of this process has been shut down")

    def shutdown(self, wait: bool = True) -> None:
        """Stop every executor this runtime made; later use raises RuntimeError."""
        with self._lock:
            self._closed = True
            executors = [e for e in (self._pool, self._thread_sensitive) if e is not None]
            self._pool = self._thread_sensitive = None
        for executor in executors:
            executor.shutdown(wait=wait, cancel_futures=not wait)


_runtime: BridgeRuntime | None = None
_runtime_lock = threading.Lock()
_configured_threads = DEFAULT_THREADS


def get_runtime() -> BridgeRuntime:
    """This process's runtime, made on first use (and anew in a forked child)."""
    runtime = _runtime
    if runtime is None or runtime.pid != os.getpid():
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
    global _runtime, _runtime_lock
    _runtime = None
    _runtime_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
