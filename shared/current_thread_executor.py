"""An executor that runs submitted work on the thread that created it, while that thread waits.

`async_to_sync` parks its calling thread in `run_until_future`; thread-sensitive `sync_to_async` calls made
by the async code are submitted here and so run on that calling thread, one after the other.

API as asgiref's `CurrentThreadExecutor`; the queue is a C `SimpleQueue` rather than a Condition plus deque,
which makes both the wake-up of the parked thread and `submit` cheaper.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import SimpleQueue
from typing import Any, TypeVar

__all__ = ["CurrentThreadExecutor"]

_R = TypeVar("_R")

# Kept current at fork (os.getpid() is a system call), to tell executors made in a parent process.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: Queued after the last work item once the awaited future is done: tells the parked thread to return.
_STOP: Any = object()


class _WorkItem:
    """A call waiting to run on the executor's thread, and the future that receives its outcome."""

    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(
        self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        future = self.future
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - as concurrent.futures: every outcome of the call goes to its future
            future.set_exception(exc)
            del exc  # the exception references this frame: break the cycle now
        else:
            future.set_result(result)


class CurrentThreadExecutor(Executor):
    """Runs submitted callables on the thread that made it, while that thread is in `run_until_future`."""

    __slots__ = ("_work_thread", "_queue", "_lock", "_broken", "_old_executor", "_pid")

    def __init__(self, old_executor: CurrentThreadExecutor | None = None) -> None:
        self._pid = _pid  # after a fork, an executor of the parent has no thread serving it
        self._work_thread = threading.get_ident()
        self._queue: SimpleQueue[Any] = SimpleQueue()
        # Guards _broken against submit: an item is either queued before _STOP or sent up the chain.
        self._lock = threading.Lock()
        self._broken = False
        # Outer executor of the same thread; work arriving after this one finished goes there.
        self._old_executor = old_executor

    def run_until_future(self, future: Future[Any]) -> None:
        """Run queued work on this thread until `future` is done and the queue is drained."""
        if threading.get_ident() != self._work_thread:
            raise RuntimeError("You cannot run CurrentThreadExecutor from a different thread")
        future.add_done_callback(self._finish_callback)
        self._run()

    def _run(self) -> None:
        # Callers in this package stop the executor with _finish() rather than through a future.
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            item.run()
            del item

    def _finish_callback(self, _future: Future[Any]) -> None:
        self._finish()

    def _finish(self) -> None:
        """Refuse further work and wake the parked thread once the queued work has run."""
        with self._lock:
            self._broken = True
            self._queue.put(_STOP)

    def submit(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> Future[_R]:
        """Queue `fn(*args, **kwargs)` for the executor's thread (or the closest outer one still running)."""
        if threading.get_ident() == self._work_thread:
            raise RuntimeError("You cannot submit onto CurrentThreadExecutor from its own thread")
        future: Future[_R] = Future()
        item = _WorkItem(future, fn, args, kwargs)
        executor: CurrentThreadExecutor | None = self
        while executor is not None:
            with executor._lock:
                if not executor._broken:
                    executor._queue.put(item)
                    return future
            executor = executor._old_executor
        raise RuntimeError("CurrentThreadExecutor already quit or is broken")
