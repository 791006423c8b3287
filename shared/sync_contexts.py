"""The context managers of asgiref's `sync` API - `ThreadSensitiveContext` (thread-sensitive calls inside it get
a thread of their own) and `AsyncSingleThreadContext` (every `async_to_sync` inside it runs on one loop
thread) - and the context variables `corral.shared.sync`'s bridges read them from. Re-exported by
`corral.shared.sync`, which is the public module.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from .current_thread_executor import CurrentThreadExecutor
from .runtime import LoopThread, get_runtime

__all__ = ["AsyncSingleThreadContext", "ThreadSensitiveContext"]

# Kept current at fork (os.getpid() is a system call): tells executors made before a fork from ours.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: The CurrentThreadExecutor of the innermost `async_to_sync` whose coroutine this context belongs to.
_current_executor: contextvars.ContextVar[CurrentThreadExecutor | None] = contextvars.ContextVar(
    "corral.sync.current_executor"
)
_thread_sensitive_context: contextvars.ContextVar[ThreadSensitiveContext] = contextvars.ContextVar(
    "corral.sync.thread_sensitive_context"
)
_single_thread_context: contextvars.ContextVar[AsyncSingleThreadContext] = contextvars.ContextVar(
    "corral.sync.async_single_thread_context"
)


def _set_result_if_pending(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


class AsyncSingleThreadContext:
    """Context manager making every `async_to_sync` inside it run on one event loop thread.

    Re-entrant: only the outermost block takes effect. Calls made from a `sync_to_async` function still run
    on that function's outer event loop.
    """

    def __init__(self) -> None:
        self.token: contextvars.Token[AsyncSingleThreadContext] | None = None
        self._lock = threading.Lock()
        self._loop_thread: LoopThread | None = None

    def __enter__(self) -> AsyncSingleThreadContext:
        if _single_thread_context.get(None) is None:
            self.token = _single_thread_context.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.token is None:
            return
        with self._lock:
            loop_thread, self._loop_thread = self._loop_thread, None
        if loop_thread is not None:
            loop_thread.close(wait=True)
        _single_thread_context.reset(self.token)
        self.token = None

    def _get_loop_thread(self) -> LoopThread:
        with self._lock:
            loop_thread = self._loop_thread
            if loop_thread is None or loop_thread.pid != _pid or not loop_thread.gate.open:
                loop_thread = self._loop_thread = LoopThread(get_runtime(), "corral-async-single-thread")
            return loop_thread


class ThreadSensitiveContext:
    """Async context manager giving thread-sensitive calls inside it a thread of their own.

    Without an executor, only the outermost block takes effect and its thread is made on first use and
    stopped on exit. With an executor (one worker, owned by the caller), the block uses it even inside
    another context or an `async_to_sync` call; it can be entered once, and its tasks must finish inside.
    """

    def __init__(self, *, executor: Executor | None = None) -> None:
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self._own_pid = 0
        self.token: contextvars.Token[ThreadSensitiveContext] | None = None
        self._executor_token: contextvars.Token[CurrentThreadExecutor | None] | None = None
        self._exited = False

    async def __aenter__(self) -> ThreadSensitiveContext:
        if self._executor is not None:
            if self.token is not None:
                raise RuntimeError("ThreadSensitiveContext is already entered")
            if self._exited:
                raise RuntimeError("ThreadSensitiveContext with an executor cannot be entered again")
            self.token = _thread_sensitive_context.set(self)
            # An enclosing async_to_sync's executor would win over this context: hide it inside the block.
            self._executor_token = _current_executor.set(None)
        elif _thread_sensitive_context.get(None) is None:
            self.token = _thread_sensitive_context.set(self)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.token is None:
            return
        _thread_sensitive_context.reset(self.token)
        self.token = None
        if self._executor is not None:
            if self._executor_token is not None:
                _current_executor.reset(self._executor_token)
                self._executor_token = None
            self._exited = True  # the caller owns the executor: not shut down
            return
        executor, self._own_executor = self._own_executor, None
        if executor is not None and self._own_pid == _pid:
            # Its thread may itself be waiting on this loop (parked in async_to_sync): join it from a
            # separate thread and await that, never blocking the loop.
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def join() -> None:
                executor.shutdown(wait=True)
                try:
                    loop.call_soon_threadsafe(_set_result_if_pending, done, None)
                except RuntimeError:
                    pass

            threading.Thread(target=join, name="corral-ts-context-join", daemon=True).start()
            await done

    def _get_executor(self) -> Executor:
        if self._executor is not None:
            if self._exited:
                raise RuntimeError(
                    "ThreadSensitiveContext has exited. Tasks created inside a context with an executor "
                    "must finish before it exits."
                )
            return self._executor
        executor = self._own_executor
        if executor is None or self._own_pid != _pid:  # none yet, or the parent's (no thread here)
            executor = self._own_executor = ThreadPoolExecutor(1, thread_name_prefix="corral-ts-context")
            self._own_pid = _pid
        return executor
