"""Bridges between sync and async code: `sync_to_async` and `async_to_sync`, with asgiref 3.13's API.

Behaviour follows asgiref: thread-sensitive sync code runs on one thread (the runtime's thread-sensitive
thread, the thread of an enclosing `async_to_sync` call, or the thread of a `ThreadSensitiveContext`), so
sync -> async -> sync chains keep their thread; context variables (and `Local`) travel both ways; exceptions
keep their type and traceback; `async_to_sync` called inside a `sync_to_async` function runs the coroutine on
the outer event loop; a thread-sensitive call that would wait on its own blocked thread raises RuntimeError.

Cancellation is asgiref's: a cancelled `sync_to_async` whose function has not started does not run it; one
whose function has started passes the cancellation to the coroutine of an `async_to_sync` the function is
blocked in, and waits for the function only if that coroutine absorbs it (the function's result is then
returned); otherwise it raises CancelledError at once and the function runs on in its thread (a thread
cannot be interrupted; waiting for it would let a blocked function make `asyncio.timeout` never fire).

Executors belong to the process's `corral.shared.runtime.BridgeRuntime` and are made after fork, on use.

Where corral differs from asgiref (deliberately):

* `async_to_sync` called from a thread with no outer event loop runs the coroutine on an event loop kept
  per calling thread (uvloop unless an event loop policy has been installed), in a companion thread made on
  first use, instead of a new thread and a new loop per call. The loop is stopped when the calling thread
  ends, or by `corral.shared.runtime.shutdown()`. Consequences: objects bound to the loop (connections,
  locks) stay usable across calls; tasks the coroutine leaves running are not cancelled when the call
  returns but keep running on that loop (they are cancelled when the loop stops), and a thread-sensitive
  `sync_to_async` made by such a task after its call returned raises RuntimeError, as asgiref does for an
  executor that has quit. ``force_new_loop=True`` still gets a fresh loop, in a fresh thread, per call.
* ``executor=`` with ``thread_sensitive=True`` raises an error that is both a TypeError (as asgiref) and
  a ValueError.
* ``thread_sensitive=False`` without an executor runs on the runtime's pool, not the loop's default executor.
* Context variables of thread-critical `Local` objects are not copied back across a bridge.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import sys
import threading
import types
import warnings
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, Future
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .coroutines import iscoroutinefunction, markcoroutinefunction
from .current_thread_executor import CurrentThreadExecutor
from .local import _HOME, CRITICAL_VAR_NAME, _Storage
from .runtime import LoopThread, get_runtime
from .sync_contexts import (  # the context managers are this module's API, as asgiref's
    AsyncSingleThreadContext,
    ThreadSensitiveContext,
    _current_executor,
    _set_result_if_pending,
    _single_thread_context,
    _thread_sensitive_context,
)

__all__ = [
    "AsyncSingleThreadContext",
    "AsyncToSync",
    "SyncToAsync",
    "ThreadSensitiveContext",
    "async_to_sync",
    "iscoroutinefunction",
    "markcoroutinefunction",
    "sync_to_async",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_get_ident = threading.get_ident
_copy_context = contextvars.copy_context
_CancelledError = asyncio.CancelledError
_MISSING: Any = object()

# Kept current at fork (os.getpid() is a system call): tells objects made before a fork from ours.
_pid = os.getpid()

#: In the context a sync function runs in: its `sync_to_async` call (which loop to go back to).
_frame: contextvars.ContextVar[_S2ACall] = contextvars.ContextVar("corral.sync.frame")
#: In the context of a sync function running on the runtime's thread-sensitive thread: the pid (a forked
#: child inherits the context, not the blocked thread).
_deadlock: contextvars.ContextVar[int] = contextvars.ContextVar("corral.sync.deadlock")
# Bookkeeping of the bridges themselves: never copied back to a caller's context.
_PRIVATE = frozenset({_HOME, _frame, _deadlock, _current_executor})

#: `create_task(context=)` is Python 3.11+ (asyncio's and uvloop's alike). On 3.10 a task runs in a copy of
#: the context it was made in, so `_a2s_main` hands its final context back in `_A2SCall.ctx` instead.
_TASK_TAKES_CONTEXT = sys.version_info >= (3, 11)


def _restore_context(ctx: contextvars.Context) -> None:
    """Copy into the current context what differs in `ctx` (the context the far side of a bridge ran in)."""
    ident = 0
    for var, value in ctx.items():
        if var.get(_MISSING) is value or var in _PRIVATE or var.name == CRITICAL_VAR_NAME:
            continue
        if type(value) is _Storage:
            # Local data written on the far side is tagged with that thread: bring it home.
            ident = ident or _get_ident()
            if value.thread != ident:
                value = _Storage(ident, value.data)
        var.set(value)


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ArgumentError(TypeError, ValueError):
    """Bad combination of arguments (a TypeError as in asgiref, and a ValueError)."""


# --------------------------------------------------------------------------------------------------------
# sync_to_async


def _set_exception_if_pending(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        if isinstance(exc, StopIteration):  # a Future refuses it (it would end the awaiting coroutine)
            error = RuntimeError(f"sync function raised {type(exc).__name__}")
            error.__cause__ = exc
            exc = error
        future.set_exception(exc)


class _S2ACall:
    """One `sync_to_async` invocation, shared by the awaiting task and the thread running the function."""

    __slots__ = (
        "loop", "future", "func", "args", "kwargs", "exc", "pid", "thread", "deadlock",
        "task", "box", "cancelled", "inner_cancelled",
    )  # fmt: skip
    future: asyncio.Future[Any]  # set by the awaiting side before the thread can read it

    def __init__(
        self, loop: asyncio.AbstractEventLoop, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        exc: BaseException | None,
    ) -> None:  # fmt: skip
        self.loop = loop
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.exc = exc  # the exception the caller is handling, if any
        self.pid = _pid
        self.thread = 0
        self.deadlock = False
        self.task: asyncio.Task[Any] | None = None  # the latest async_to_sync task it started on `loop`
        self.box: _A2SCall | None = None  # and that call's outcome
        self.cancelled = False
        self.inner_cancelled = False


def _s2a_run(call: _S2ACall) -> Any:
    """Runs on the executor's thread, inside (a copy of) the caller's context."""
    ident = call.thread = _get_ident()
    _HOME.set(ident)  # Local data in this context is visible on this thread
    _frame.set(call)  # async_to_sync in here goes back to call.loop
    if call.deadlock:
        _deadlock.set(_pid)
    return _s2a_invoke(call)


def _s2a_run_in_given_context(call: _S2ACall) -> Any:
    """As `_s2a_run`, in a context the caller passed: our marks are taken out again afterwards."""
    ident = call.thread = _get_ident()
    tokens = [_HOME.set(ident), _frame.set(call)]
    if call.deadlock:
        tokens.append(_deadlock.set(_pid))
    try:
        return _s2a_invoke(call)
    finally:
        for var, token in zip((_HOME, _frame, _deadlock), tokens):
            var.reset(token)  # type: ignore[attr-defined]  # each is a ContextVar; zip over the tuple loses that


def _s2a_invoke(call: _S2ACall) -> Any:
    try:
        exc = call.exc
        if exc is None:
            result = call.func(*call.args, **call.kwargs)
        else:
            # The caller was handling an exception: so is the function (sys.exc_info() shows it).
            try:
                raise exc
            except BaseException:  # noqa: BLE001 - only the one raised above: the function runs while it is handled
                result = call.func(*call.args, **call.kwargs)
    except BaseException as error:
        try:
            call.loop.call_soon_threadsafe(_set_exception_if_pending, call.future, error)
        except RuntimeError:
            pass  # the loop has closed: nobody is waiting
        raise
    try:
        call.loop.call_soon_threadsafe(_set_result_if_pending, call.future, result)
    except RuntimeError:
        pass
    return result


async def _wait_after_cancel(call: _S2ACall, done: Future[Any]) -> bool:
    """After the awaiting task was cancelled, as asgiref: pass the cancellation on, and wait or not.

    If the function is blocked in an async_to_sync whose coroutine runs on our loop, that coroutine is
    cancelled and awaited; if it absorbs the cancellation, the function is waited for and True returned
    (its outcome is the call's). Otherwise False: the caller stops waiting at once and the function, which
    cannot be interrupted, runs on in its thread (its outcome is dropped).
    """
    call.cancelled = True
    task = call.task
    box = call.box
    if task is None or box is None or task.done() or not task.cancel():
        return False
    call.inner_cancelled = True
    await asyncio.wait((task,))  # _a2s_main never raises: the coroutine's outcome is in the box
    if isinstance(box.exc, _CancelledError):
        return False
    waiter = asyncio.wrap_future(done)
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except _CancelledError:
            pass  # cancelled again: the coroutine chose to finish, so its function's outcome is awaited
        except BaseException:  # noqa: BLE001 - any other outcome ends the wait (the result is read from `done`)
            break
    if not waiter.cancelled():
        waiter.exception()  # retrieved (the outcome is read from `done`): no "never retrieved" log
    return True


class SyncToAsync(Generic[_P, _R]):
    """Awaitable wrapper running a sync callable in a thread (see `sync_to_async`)."""

    def __init__(
        self,
        func: Callable[_P, _R],
        thread_sensitive: bool = True,
        executor: Executor | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        if type(func) is types.FunctionType:  # the common case; its __call__ needs no look
            refused = iscoroutinefunction(func)
        else:
            refused = not callable(func) or iscoroutinefunction(func) or iscoroutinefunction(func.__call__)  # type: ignore[operator]  # a callable's __call__
        if refused:
            raise TypeError("sync_to_async can only be applied to sync functions.")
        if thread_sensitive and executor is not None:
            raise _ArgumentError("executor must not be set when thread_sensitive is True")
        functools.update_wrapper(self, func)
        self.func = func
        self.context = context
        self._thread_sensitive = thread_sensitive
        self._executor = executor
        markcoroutinefunction(self)
        bound_to = getattr(func, "__self__", _MISSING)
        if bound_to is not _MISSING:
            self.__self__ = bound_to

    async def __call__(self, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        loop = _get_running_loop()
        if loop is None:
            loop = asyncio.get_running_loop()  # raises the usual RuntimeError
        call = _S2ACall(loop, self.func, args, kwargs, sys.exc_info()[1])
        if self._thread_sensitive:
            executor: Any = _current_executor.get(None)
            if executor is None or executor._pid != _pid:
                executor = _sensitive_executor(loop, call)
        else:
            executor = self._executor
            if executor is None:
                executor = get_runtime().pool
        ctx = self.context
        if ctx is None:
            ctx = _copy_context()
            run = _s2a_run
        else:
            run = _s2a_run_in_given_context
        future: asyncio.Future[_R] = loop.create_future()
        call.future = future
        done = executor.submit(ctx.run, run, call)
        try:
            return await future
        except _CancelledError:
            # Only a cancelled wait can leave the function running: cancel it if it has not started,
            # else wait for it to end (and pass the cancellation to the coroutine it may be blocked in).
            if not future.cancelled() or done.cancel():
                raise
            if await _wait_after_cancel(call, done):
                return done.result()  # type: ignore[no-any-return]  # the result of the call itself
            raise
        finally:
            if self.context is None:
                _restore_context(ctx)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        """Bind like a function, so that a decorated method gets its instance."""
        if instance is None:
            return self
        return types.MethodType(self, instance)


def _sensitive_executor(loop: asyncio.AbstractEventLoop, call: _S2ACall) -> Executor:
    """The executor of a thread-sensitive call made outside any async_to_sync coroutine context."""
    context = _thread_sensitive_context.get(None)
    if context is not None:
        return context._get_executor()
    runtime = get_runtime()
    loop_executors = runtime.loop_executors
    if loop_executors:
        executor: Executor | None = loop_executors.get(loop)
        if executor is not None:
            return executor
    if _deadlock.get(0) == _pid:
        # We are in a task the sync function on the thread-sensitive thread is waiting for: queuing
        # behind it would never run.
        raise RuntimeError("Single thread executor already being used, would deadlock")
    call.deadlock = True
    return runtime.thread_sensitive_executor


# --------------------------------------------------------------------------------------------------------
# async_to_sync


class _A2SCall:
    """One `async_to_sync` invocation: what the loop side needs, and the outcome it fills in."""

    __slots__ = ("executor", "awaitable", "result", "exc", "task", "started", "ctx")

    def __init__(self, executor: CurrentThreadExecutor, awaitable: Awaitable[Any]) -> None:
        self.executor = executor
        self.awaitable = awaitable
        self.result: Any = None
        self.exc: BaseException | None = None
        self.task: asyncio.Task[Any] | None = None  # a strong reference while it runs
        self.started = False
        self.ctx: contextvars.Context | None = None  # Python 3.10: the context the coroutine ended in

    def task_done(self, task: asyncio.Task[Any]) -> None:
        # A task cancelled before its first step never runs _a2s_main's body: report and wake up here.
        if not self.started:
            self.exc = _CancelledError()
            close = getattr(self.awaitable, "close", None)
            if close is not None:
                close()
            self.executor._finish()


async def _a2s_main(box: _A2SCall, exc: BaseException | None) -> None:
    box.started = True
    executor = box.executor
    token = _current_executor.set(executor)  # thread-sensitive calls in here go to the calling thread
    _HOME.set(_get_ident())
    try:
        if exc is None:
            box.result = await box.awaitable
        else:
            try:
                raise exc
            except BaseException:  # noqa: BLE001 - only the one raised above: the awaitable runs while it is handled
                box.result = await box.awaitable
    except BaseException as error:  # noqa: BLE001 - every outcome of the awaitable goes back to the calling thread
        box.exc = error
    finally:
        _current_executor.reset(token)
        if not _TASK_TAKES_CONTEXT:
            box.ctx = _copy_context()  # before _finish(): the caller reads it as soon as it wakes
        executor._finish()


def _start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], ctx: contextvars.Context,
                box: _A2SCall, call: _S2ACall | None) -> None:  # fmt: skip
    try:
        # The task runs in `ctx` itself (not a copy), so the caller can read back what the coroutine set.
        if _TASK_TAKES_CONTEXT:
            task = box.task = loop.create_task(coro, context=ctx)  # type: ignore[call-arg]  # 3.11+: the flag above
        else:
            # 3.10: the task copies the context current here; what it sets comes back in box.ctx.
            task = box.task = ctx.run(loop.create_task, coro)
    except BaseException as error:
        # No task (a task factory refused, say): the caller, parked in _serve_until_done, gets the error
        # instead of waiting forever for a coroutine that will never run.
        box.exc = error
        coro.close()
        close = getattr(box.awaitable, "close", None)
        if close is not None:
            close()
        box.executor._finish()
        if not isinstance(error, Exception):
            raise  # KeyboardInterrupt, SystemExit: the loop's business too
        return
    task.add_done_callback(box.task_done)
    if call is not None:
        call.task = task
        call.box = box
        if call.cancelled:  # the awaiting task was cancelled before this started
            task.cancel()
            call.inner_cancelled = True


def _cancel_task_of(box: _A2SCall) -> None:
    if box.task is not None:
        box.task.cancel()


def _serve_until_done(executor: CurrentThreadExecutor, loop: asyncio.AbstractEventLoop, box: _A2SCall) -> None:
    """Serve thread-sensitive work on the calling thread until the coroutine is done."""
    try:
        executor._run()
    except BaseException:
        # Interrupted (KeyboardInterrupt): refuse further work, and cancel the coroutine we stop waiting for.
        executor._finish()
        try:
            loop.call_soon_threadsafe(_cancel_task_of, box)
        except RuntimeError:
            pass
        raise


class AsyncToSync(Generic[_P, _R]):
    """Sync wrapper running an async callable to completion (see `async_to_sync`)."""

    def __init__(self, awaitable: Callable[_P, Awaitable[_R]], force_new_loop: bool = False) -> None:
        if not iscoroutinefunction(awaitable) and (
            type(awaitable) is types.FunctionType
            or not callable(awaitable)
            or not iscoroutinefunction(awaitable.__call__)  # type: ignore[operator]  # a callable's __call__
        ):
            # Detection has false negatives (callables returning awaitables), hence a warning as asgiref;
            # something not callable at all fails when called (TypeError), as in asgiref.
            warnings.warn("async_to_sync was passed a non-async-marked callable", stacklevel=2)
        functools.update_wrapper(self, awaitable)
        # This wrapper is sync: do not inherit the wrapped function's coroutine markers.
        self.__dict__.pop("_is_coroutine", None)
        self.__dict__.pop("_is_coroutine_marker", None)
        self.awaitable = awaitable
        self.force_new_loop = force_new_loop
        bound_to = getattr(awaitable, "__self__", _MISSING)
        if bound_to is not _MISSING:
            self.__self__ = bound_to

    def __call__(self, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if _get_running_loop() is not None:
            raise RuntimeError(
                "You cannot use AsyncToSync in the same thread as an async event loop - "
                "just await the async function directly."
            )
        call: _S2ACall | None = None
        if not self.force_new_loop:
            # Inside a sync_to_async function: run on its event loop, as asgiref does.
            call = _frame.get(None)
            if call is not None and (call.thread != _get_ident() or call.pid != _pid or not call.loop.is_running()):
                call = None
        executor = CurrentThreadExecutor(_current_executor.get(None))
        ctx = _copy_context()
        awaitable = self.awaitable(*args, **kwargs)
        if not hasattr(awaitable, "__await__"):
            raise TypeError(f"async_to_sync: {self.awaitable!r} returned {type(awaitable).__name__}, not an awaitable")
        box = _A2SCall(executor, awaitable)
        coro = _a2s_main(box, sys.exc_info()[1])
        try:
            scheduled = False
            if call is not None:
                try:
                    call.loop.call_soon_threadsafe(_start_task, call.loop, coro, ctx, box, call)
                    scheduled = True
                except RuntimeError:
                    pass  # that loop has closed meanwhile
            if scheduled:
                _serve_until_done(executor, call.loop, box)  # type: ignore[union-attr]  # a thread-sensitive call has its loop
            else:
                self._run_on_own_loop(coro, ctx, box, executor)
        except BaseException:
            if not executor._broken:  # never scheduled: no "never awaited" warnings
                coro.close()
                if hasattr(awaitable, "close"):
                    awaitable.close()
            raise
        finally:
            _restore_context(ctx if box.ctx is None else box.ctx)
        exc = box.exc
        if exc is not None:
            try:
                raise exc
            finally:
                box.exc = exc = None
        return box.result  # type: ignore[no-any-return]  # the awaitable's result, of type _R

    def _run_on_own_loop(
        self, coro: Any, ctx: contextvars.Context, box: _A2SCall, executor: CurrentThreadExecutor
    ) -> None:
        """Run on the calling thread's persistent loop (or the single-thread context's, or a new one)."""
        transient = None
        try:
            for _attempt in range(2):  # again if the loop was stopped (runtime shutdown) since we looked
                runtime = get_runtime()
                if self.force_new_loop:
                    loop_thread = transient = LoopThread(runtime, "corral-async-new-loop")
                else:
                    single = _single_thread_context.get(None)
                    loop_thread = single._get_loop_thread() if single is not None else runtime.thread_loop
                loop = loop_thread.loop
                # For thread-sensitive calls from tasks that do not carry the coroutine's context.
                loop_executors = runtime.loop_executors
                previous = loop_executors.get(loop)
                loop_executors[loop] = executor
                try:
                    if loop_thread.schedule(_start_task, loop, coro, ctx, box, None):
                        _serve_until_done(executor, loop, box)
                        return
                finally:
                    if previous is None:
                        loop_executors.pop(loop, None)
                    else:
                        loop_executors[loop] = previous
            raise RuntimeError("async_to_sync could not start an event loop")
        finally:
            if transient is not None:
                transient.close(wait=True)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        """Bind like a function, so that a decorated method gets its instance."""
        if instance is None:
            return self
        return types.MethodType(self, instance)


# --------------------------------------------------------------------------------------------------------
# Decorator / function forms


@overload
def async_to_sync(*, force_new_loop: bool = False) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, _R]]: ...
@overload
def async_to_sync(awaitable: Callable[_P, Awaitable[_R]], *, force_new_loop: bool = False) -> Callable[_P, _R]: ...
def async_to_sync(awaitable: Any = None, *, force_new_loop: bool = False) -> Any:
    """Wrap an async callable so that sync code can call it and get its result."""
    if awaitable is None:
        return lambda f: AsyncToSync(f, force_new_loop=force_new_loop)
    return AsyncToSync(awaitable, force_new_loop=force_new_loop)


@overload
def sync_to_async(
    *, thread_sensitive: bool = True, executor: Executor | None = None, context: contextvars.Context | None = None
) -> Callable[[Callable[_P, _R]], Callable[_P, Coroutine[Any, Any, _R]]]: ...
@overload
def sync_to_async(
    func: Callable[_P, _R], *, thread_sensitive: bool = True, executor: Executor | None = None,
    context: contextvars.Context | None = None,
) -> Callable[_P, Coroutine[Any, Any, _R]]: ...  # fmt: skip
def sync_to_async(
    func: Any = None, *, thread_sensitive: bool = True, executor: Executor | None = None,
    context: contextvars.Context | None = None,
) -> Any:  # fmt: skip
    """Wrap a sync callable so that async code can await it; it runs in a thread (see module docstring)."""
    if func is None:
        return lambda f: SyncToAsync(f, thread_sensitive=thread_sensitive, executor=executor, context=context)
    return SyncToAsync(func, thread_sensitive=thread_sensitive, executor=executor, context=context)
