"""An application instance's first step run at once: a scheduled task only for one that does not finish in it.

A hello-world ASGI application never waits: `await send(start)` and `await send(body)` return at once (the
transport takes the bytes), and its coroutine ends in its first step. A task for it costs more than that
step: made, named, registered in asyncio's WeakSet, scheduled, stepped, its done callback scheduled and run,
unregistered - about 10,000 instructions on CPython 3.11, an eighth of a keep-alive request. Python 3.12
can start a task eagerly (`eager_start`); `start()` uses that there, and does the same by hand on 3.11,
keeping what the application sees the same as in a task:

- `asyncio.current_task()` is the instance's Task during the first step too (sniffio, anyio's cancel scopes
  and task groups, `asyncio.timeout()` read it). That Task is initialised for `_NOT_YET`, a stand-in loop
  whose `call_soon` schedules nothing (its name is formatted and it is registered as usual).
- The step runs in a copy of the caller's context, as `create_task` copies it; the task keeps that copy.
- A step that suspends: the same Task object is initialised again, for the real loop, so it is registered
  and scheduled, and its first step sends None to the coroutine, which goes on from where it stopped: a C
  future it awaits (asyncio's Future and Task) yields itself again, as on a fresh await, and a bare `yield`
  (`asyncio.sleep(0)`) was one loop iteration anyway. Any other yielded object is handed to the task first
  (`_Continuation`). Done callbacks and a cancellation given to the Task during the step are given again.
- A step that raises, or that leaves done callbacks or a pending cancellation: the Task is initialised for
  the real loop with a coroutine that raises that exception (returns that value), so the instance ends as
  a task always did: the pool logs its exception, its callbacks run, it ends cancelled.
- A step that returns: the Task is marked done with its value. Nothing was scheduled or registered.

A start from inside a running task (the next pipelined request, started by the response before it) gets a
plain task, as does one on a loop with a task factory (the factory decides how tasks are made).
"""

from __future__ import annotations

import asyncio
import sys
import weakref

# asyncio's own bookkeeping of the running task (private, present since 3.7; used only on 3.11, see the end)
from asyncio.tasks import _current_tasks, _enter_task, _leave_task  # type: ignore[attr-defined]  # private: not in typeshed
from collections.abc import Coroutine, Generator
from contextvars import copy_context
from typing import Any

__all__ = ["start"]

Task = asyncio.Task


def start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    """Run `coro`'s first step now. Returns its Task: done when the coroutine finished in that step (nothing was
    scheduled), else scheduled on `loop` to go on (see the module docstring)."""
    return loop.create_task(coro)  # replaced below where the interpreter allows an eager start


# ---------------------------------------------------------------------------- Python 3.12 and later


def _start_native(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    # As by hand below: from inside a running task (the next pipelined request, begun by the response before
    # it) a plain task, so that requests never nest one inside another's first step.
    if asyncio.current_task(loop) is not None or loop.get_task_factory() is not None:
        return loop.create_task(coro)
    return Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------- Python 3.11, by hand

_Future = asyncio.Future
_new = Task.__new__
_init: Any = Task.__init__  # (Any: called with the stand-in loop, which is no AbstractEventLoop)
_set_result = _Future.set_result  # Task.set_result refuses; the future's own method marks it done


def _schedule_nothing(callback: Any, *args: Any, context: Any = None) -> None:
    """`_NotYet.call_soon`: the task's step is not scheduled (a keyword-only `context`: the C Task passes it by
    name, and a function taking it so binds it without making a dict)."""


class _NotYet:
    """The loop a first step's Task is initialised for: asked whether it debugs (no) and to schedule the task's
    step (nothing is scheduled). `start()` initialises the Task again for the real loop when it is to go on.
    (Refusing by raising costs more: the exception, its traceback and the unwinding took about 3,800
    instructions. A `functools.partial` of the step, as this used to make, cost about 1,400: the partial and
    the dict of its keyword.)"""

    __slots__ = ()
    get_debug = bool  # bool() is False: no source traceback is taken
    call_soon = staticmethod(_schedule_nothing)


_NOT_YET = _NotYet()


class _Continuation:
    """The rest of a coroutine whose first step yielded something other than a C future or None: the task
    gets that first, then every send and throw goes on to the coroutine."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value = self.yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task (a cancellation): the coroutine's to handle
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _continue(continuation: _Continuation) -> Any:
    return await continuation


async def _return(value: Any) -> Any:
    return value


async def _raise(exc: BaseException) -> Any:
    raise exc


def _reschedule(
    task: asyncio.Task[Any], coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop, context: Any
) -> asyncio.Task[Any]:
    """Initialise `task` again, for `loop`, to run `coro`: registered and scheduled like any task, with the
    done callbacks and the cancellation the first step gave it."""
    callbacks = task._callbacks
    must_cancel = task._must_cancel  # type: ignore[attr-defined]
    cancelling = task.cancelling() if must_cancel else 0  # type: ignore[attr-defined]  # 3.11+, where this runs
    message = task._cancel_message if must_cancel else None  # type: ignore[attr-defined]
    _init(task, coro, loop=loop, context=context, name=task.get_name())
    if callbacks:
        for callback, callback_context in callbacks:
            task.add_done_callback(callback, context=callback_context)
    if must_cancel:
        task.cancel(message)
        while task.cancelling() < cancelling:  # type: ignore[attr-defined]  # (as above)
            task.cancel(message)
    return task


def _start_by_hand(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    if _current_tasks.get(loop) is not None or loop.get_task_factory() is not None:
        return loop.create_task(coro)
    context = copy_context()
    task = _new(Task)
    _init(task, coro, loop=_NOT_YET, context=context)  # (not added to all tasks: _skip_first_step_registration)
    _enter_task(loop, task)
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        _leave_task(loop, task)
        if task._callbacks is None and not task._must_cancel:
            _set_result(task, stop.value)
            return task
        return _reschedule(task, _return(stop.value), loop, context)
    except BaseException as exc:  # noqa: BLE001 - any outcome of the first step is the task's, re-raised there
        _leave_task(loop, task)
        return _reschedule(task, _raise(exc), loop, context)
    _leave_task(loop, task)
    if yielded is not None:
        ytype = type(yielded)
        if (
            ytype is _Future or ytype is Task or getattr(ytype, "__await__", None) is _Future.__await__
        ) and yielded._asyncio_future_blocking:
            yielded._asyncio_future_blocking = False  # as the task does with a future it takes: see above
        else:
            return _reschedule(task, _continue(_Continuation(coro, yielded)), loop, context)
    return _reschedule(task, coro, loop, context)


def _skip_first_step_registration() -> None:
    """asyncio's set of all tasks without the Tasks initialised for `_NOT_YET`. 3.11's C Task adds itself to
    the set (`asyncio.tasks._all_tasks`, a WeakSet) from its `__init__`; `asyncio.all_tasks()` lists only the
    running loop's pending tasks, which a first step's Task never is one of, and most first steps finish their
    task. Each registration cost about 2,500 instructions: the `add` and a weak reference whose callback
    removes the Task again when it is freed. A Task that goes on is initialised again for the real loop and
    added then, as any. The set becomes a subclass whose `add` leaves those Tasks out and adds every other as
    WeakSet.add does, the set's storage and callback bound once (changing an object's class makes the
    interpreter read its attributes the slow way from then on: WeakSet's own `add` then cost an HTTP/2 stream
    2 % more)."""
    tasks = getattr(asyncio.tasks, "_all_tasks", None)
    if type(tasks) is not weakref.WeakSet:
        return  # not the set this was written for: every Task registers as before
    fields: Any = tasks  # (WeakSet's private fields, which typeshed does not list)
    data, remove, pending, commit = fields.data, fields._remove, fields._pending_removals, fields._commit_removals
    ref = weakref.ref

    class AllTasks(weakref.WeakSet[Any]):  # (a WeakSet of Tasks, as asyncio's own)
        def add(self, item: Any) -> None:
            if item._loop is not _NOT_YET:
                if pending:  # WeakSet.add's steps
                    commit()
                data.add(ref(item, remove))

    tasks.__class__ = AllTasks


#: The interpreter's own eager start: a first step that raises (or is cancelled) leaves its task done at once,
#: where the start by hand hands it to a scheduled task (the caller reports it: StatelessServer.run_instance).
NATIVE = sys.version_info >= (3, 12)

if NATIVE:
    start = _start_native
elif sys.version_info >= (3, 11) and getattr(Task, "__module__", "") == "_asyncio":
    # The C Task: initialised again in place (its __init__ clears what it set before), `_callbacks`,
    # `_must_cancel` and `cancelling()` readable, `_enter_task`/`_leave_task` on the C module's table.
    start = _start_by_hand
    _skip_first_step_registration()
