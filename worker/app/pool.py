"""StatelessServer: asgiref's application-instance pool, with its faults fixed and room for an HTTP worker.

The API is asgiref.server.StatelessServer's: `application`, `max_applications`, `application_instances`,
`get_or_create_application_instance`, `delete_oldest_application_instance`, `delete_application_instance`,
`application_checker`, `application_exception`, `run` / `arun` / `handle`, `application_send`.

Where it differs from asgiref, on purpose:
- The pool never holds more than `max_applications` (asgiref checks before inserting and admits max + 1).
- LRU bookkeeping is an OrderedDict: eviction and reuse are O(1) (asgiref scans with `min()`).
- An instance leaves the pool the moment it finishes (a done-callback), so its slot is free at once; the
  checker is woken by failures instead of polling, and a cancelled instance never reaches it (asgiref's
  checker dies on `future.exception()` of a cancelled future).
- Errors are logged through the `corral.worker.stateless` logger with the scope in the message.
- A subclass chooses what "full" means: `evict_when_full = True` (asgiref's behaviour, the default) shuts
  the least recently used instance down; `False` makes the pool backpressure: `start_instance` and
  `get_or_create_application_instance` raise `PoolFull`, `wait_for_slot()` waits for room, and
  `slot_freed()` is called whenever an instance leaves a pool that was full.
- `start_instance(scope_id, scope, receive, send)` is the cheap path of a protocol server (HTTP/2 streams):
  no input queue, just a task in the pool. `run_instance` (HTTP/1.1 requests and WebSockets) runs the
  application's first step at once and makes a task in the pool only when the instance does not finish in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any

from corral.worker.app import eager

__all__ = ["StatelessServer", "ApplicationInstance", "PoolFull"]

# The logger keeps the module's name from before worker/ had rooms: logging configs name it.
logger = logging.getLogger("corral.worker.stateless")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class PoolFull(RuntimeError):
    """The pool is at `max_applications` and the server backpressures instead of evicting."""


class ApplicationInstance:
    """One live application instance in the pool.

    asgiref keeps a dict per instance; item access with its keys (`input_queue`, `future`, `scope`,
    `last_used`) still works, so code that reads `application_instances[scope_id]["future"]` carries over.
    """

    __slots__ = ("server", "scope_id", "scope", "input_queue", "future", "last_used")

    _KEYS = frozenset(("input_queue", "future", "scope", "last_used"))

    def __init__(
        self,
        server: StatelessServer,
        scope_id: Hashable,
        scope: Scope,
        input_queue: asyncio.Queue[Message] | None,
        future: asyncio.Future[Any],
        last_used: float,
    ) -> None:
        self.server = server
        self.scope_id = scope_id
        self.scope = scope
        self.input_queue = input_queue
        self.future = future
        self.last_used = last_used

    def __getitem__(self, key: str) -> Any:
        if key in self._KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def keys(self) -> Iterator[str]:
        return iter(sorted(self._KEYS))

    def _done(self, future: asyncio.Future[Any]) -> None:
        self.server._instance_done(self, future)

    def __repr__(self) -> str:
        return f"<ApplicationInstance {self.scope_id!r} {describe_scope(self.scope)}>"


def describe_scope(scope: Scope) -> str:
    """A short description of a scope for log lines: type, method, path, client."""
    kind = scope.get("type", "?")
    parts = [str(kind)]
    if "method" in scope:
        parts.append(str(scope["method"]))
    if "path" in scope:
        parts.append(str(scope["path"]))
    client = scope.get("client")
    if client:
        parts.append("from %s:%s" % tuple(client[:2]) if len(client) >= 2 else f"from {client[0]}")
    return " ".join(parts)


class StatelessServer:
    """Base server: runs one application instance per scope_id, at most `max_applications` at once."""

    #: Kept for asgiref compatibility only: the checker here is woken by failures and never polls.
    application_checker_interval: float = 0.1

    #: True: at the limit, shut down the least recently used instance (asgiref). False: backpressure.
    evict_when_full: bool = True

    #: How long `arun()` waits for instances it cancels on exit before giving up on them.
    instance_shutdown_timeout: float = 5.0

    #: The loop serving the instances, where a subclass records it (None: asked of asyncio per instance).
    loop: asyncio.AbstractEventLoop | None = None

    def __init__(self, application: Any, max_applications: int = 1000) -> None:
        self.application = application
        self.application_instances: OrderedDict[Hashable, ApplicationInstance] = OrderedDict()
        self._max_applications = self._check_limit(max_applications)
        self._single_callable: Callable[..., Awaitable[None]] | None = None
        self._failures: deque[tuple[BaseException, ApplicationInstance]] = deque()
        self._checker_wakeup: asyncio.Event | None = None
        self._checker_task: asyncio.Task[None] | None = None
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._full = False

    # ---------------------------------------------------------------- the limit

    @staticmethod
    def _check_limit(value: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"max_applications must be an integer >= 1, got {value!r}")
        return value

    @property
    def max_applications(self) -> int:
        return self._max_applications

    @max_applications.setter
    def max_applications(self, value: int) -> None:
        """Change the limit live (the master re-spreads limits this way); never exceeded afterwards."""
        self._max_applications = self._check_limit(value)
        if self.evict_when_full:
            while len(self.application_instances) > self._max_applications:
                self.delete_oldest_application_instance()
        if len(self.application_instances) >= self._max_applications:
            self._full = True
        else:
            self._slot_released()

    @property
    def pool_full(self) -> bool:
        return len(self.application_instances) >= self._max_applications

    # ---------------------------------------------------------------- running

    def run(self) -> None:
        """Run the server in a new event loop (uvloop when installed) until `handle()` returns."""
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.arun())
        except KeyboardInterrupt:
            logger.info("Exiting due to Ctrl-C/interrupt")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def arun(self) -> None:
        """Start the application checker, run `handle()`, then stop the checker and any live instances."""
        self._checker_task = asyncio.ensure_future(self.application_checker())
        try:
            await self.handle()
        finally:
            checker, self._checker_task = self._checker_task, None
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)
            await self.shutdown_instances(self.instance_shutdown_timeout)
            await self._report_failures()

    async def handle(self) -> None:
        """The server's main coroutine: receive input and dispatch it to instances. Subclasses define it."""
        raise NotImplementedError("You must implement handle()")

    async def application_send(self, scope: Scope, message: Message) -> None:
        """Receive a message sent by an application instance. Subclasses define it."""
        raise NotImplementedError("You must implement application_send()")

    # ---------------------------------------------------------------- the pool

    def _application_callable(self) -> Callable[..., Awaitable[None]]:
        app = self._single_callable
        if app is None:
            from corral.shared.compatibility import guarantee_single_callable

            app = self._single_callable = guarantee_single_callable(self.application)
        return app

    def get_or_create_application_instance(self, scope_id: Hashable, scope: Scope) -> asyncio.Queue[Message]:
        """The input queue of the instance for `scope_id`, creating the instance if there is none.

        Creating one in a full pool evicts the least recently used instance, or raises `PoolFull`
        when the server backpressures (`evict_when_full = False`).
        """
        instance = self.application_instances.get(scope_id)
        if instance is not None:
            self.application_instances.move_to_end(scope_id)
            instance.last_used = time.monotonic()
            if instance.input_queue is None:
                raise ValueError(f"instance {scope_id!r} was started with start_instance() and has no queue")
            return instance.input_queue
        self._make_room()
        input_queue: asyncio.Queue[Message] = asyncio.Queue()
        app = self._application_callable()
        future = asyncio.ensure_future(app(scope=scope, receive=input_queue.get, send=_ScopedSend(self, scope)))
        self._register(scope_id, scope, input_queue, future)
        return input_queue

    def start_instance(self, scope_id: Hashable, scope: Scope, receive: Receive, send: Send) -> asyncio.Task[Any]:
        """Run `application(scope, receive, send)` as a task in the pool (the protocol servers' path).

        It runs once per HTTP request, so it is written flat: one size check, the callable cached.
        """
        instances = self.application_instances
        if scope_id in instances:
            raise KeyError(f"an application instance with scope_id {scope_id!r} is already running")
        if len(instances) >= self._max_applications:
            self._make_room()
        app = self._single_callable or self._application_callable()
        # The serving loop when a subclass keeps it (WorkerServer.loop): asyncio.get_running_loop() makes a
        # getpid() system call per call (its fork check), once per request here.
        loop = self.loop
        task: asyncio.Task[None] = (loop if loop is not None else asyncio.get_running_loop()).create_task(
            app(scope, receive, send)  # type: ignore[arg-type]  # an ASGI 3 call returns a coroutine
        )
        instance = ApplicationInstance(self, scope_id, scope, None, task, time.monotonic())
        instances[scope_id] = instance
        if len(instances) >= self._max_applications:
            self._full = True
        task.add_done_callback(instance._done)
        return task

    def run_instance(self, scope_id: Hashable, scope: Scope, receive: Receive, send: Send) -> asyncio.Future[Any]:
        """`start_instance`, with the application's first step run now (corral.worker.app.eager). Returns its task:
        done when the instance finished in that step (it never took a slot: nothing is registered, no
        done-callback runs), else in the pool like any other."""
        instances = self.application_instances
        if scope_id in instances:
            raise KeyError(f"an application instance with scope_id {scope_id!r} is already running")
        if len(instances) >= self._max_applications:
            self._make_room()
        app = self._single_callable or self._application_callable()
        loop = self.loop
        task = eager.start(
            loop if loop is not None else asyncio.get_running_loop(),
            app(scope, receive, send),  # type: ignore[arg-type]  # an ASGI 3 call returns a coroutine
        )
        if task.done():
            if eager.NATIVE and not task.cancelled() and (exception := task.exception()) is not None:
                # Python 3.12+: the first step raised and its task is done already (3.11's start by hand gives
                # it a scheduled task, which the pool reports as any failed instance): reported the same way.
                self._report_failure(
                    exception, ApplicationInstance(self, scope_id, scope, None, task, time.monotonic())
                )
            return task
        instance = ApplicationInstance(self, scope_id, scope, None, task, time.monotonic())
        instances[scope_id] = instance
        if len(instances) >= self._max_applications:
            self._full = True
        task.add_done_callback(instance._done)
        return task

    def _make_room(self) -> None:
        instances = self.application_instances
        if len(instances) < self._max_applications:
            return
        if not self.evict_when_full:
            self._full = True
            raise PoolFull(f"{len(instances)} application instances running, the limit is {self._max_applications}")
        while len(instances) >= self._max_applications:
            self.delete_oldest_application_instance()

    def _register(
        self,
        scope_id: Hashable,
        scope: Scope,
        input_queue: asyncio.Queue[Message] | None,
        future: asyncio.Future[Any],
    ) -> None:
        instance = ApplicationInstance(self, scope_id, scope, input_queue, future, time.monotonic())
        self.application_instances[scope_id] = instance
        if len(self.application_instances) >= self._max_applications:
            self._full = True
        future.add_done_callback(instance._done)

    def delete_oldest_application_instance(self) -> None:
        """Shut down the least recently used instance."""
        if self.application_instances:
            scope_id = next(iter(self.application_instances))
            logger.debug("Pool full: shutting down least recently used instance %r", scope_id)
            self.delete_application_instance(scope_id)

    def delete_application_instance(self, scope_id: Hashable) -> None:
        """Remove the instance for `scope_id` from the pool and cancel it if it is still running."""
        instance = self.application_instances.pop(scope_id)
        if not instance.future.done():
            instance.future.cancel()
        self._slot_released()

    def _instance_done(self, instance: ApplicationInstance, future: asyncio.Future[Any]) -> None:
        self._free_slot(instance)
        if future.cancelled():
            return
        exception = future.exception()
        if exception is None:
            return
        self._report_failure(exception, instance)

    def _report_failure(self, exception: BaseException, instance: ApplicationInstance) -> None:
        """A failed instance, reported by the application checker (`application_exception`)."""
        self._failures.append((exception, instance))
        if self._checker_wakeup is not None and self._checker_task is not None:
            self._checker_wakeup.set()
        else:
            # Nobody runs the checker (the pool is used without arun): report now rather than hold it.
            self._log_failure(exception, instance)
            self._failures.pop()

    def _free_slot(self, instance: ApplicationInstance) -> None:
        """Free the slot of a finished instance (a no-op if it already left the pool). An instance whose
        future never fails nor gets a done-callback (a WSGI request) calls this instead of `_instance_done`."""
        instances = self.application_instances
        if instances.get(instance.scope_id) is instance:
            del instances[instance.scope_id]
            if self._full or self._slot_waiters:
                self._slot_released()

    def _slot_released(self) -> None:
        if self._full and len(self.application_instances) < self._max_applications:
            self._full = False
            self._wake_slot_waiters()
            self.slot_freed()
        elif self._slot_waiters:
            self._wake_slot_waiters()

    def _wake_slot_waiters(self) -> None:
        waiters = self._slot_waiters
        free = self._max_applications - len(self.application_instances)
        while waiters and free > 0:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def slot_freed(self) -> None:
        """Called when an instance leaves a full pool. Protocol servers resume reading/accepting here."""

    async def wait_for_slot(self) -> None:
        """Wait until the pool has room for one more instance."""
        while len(self.application_instances) >= self._max_applications:
            self._full = True
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_slot_waiters()  # pass the wake-up on to the next waiter
                raise

    async def shutdown_instances(self, timeout: float | None = None) -> None:
        """Cancel every live instance and wait (up to `timeout` seconds) for them to finish."""
        if not self.application_instances:
            return
        futures = [instance.future for instance in self.application_instances.values()]
        for future in futures:
            future.cancel()
        _done, pending = await asyncio.wait(futures, timeout=timeout)
        for instance in list(self.application_instances.values()):
            if instance.future in pending:
                logger.warning("Application instance %r ignored cancellation; abandoning it", instance)

    # ---------------------------------------------------------------- failures

    async def application_checker(self) -> None:
        """Report instances that raised, as they finish (woken by their done-callbacks, not by polling)."""
        self._checker_wakeup = wakeup = asyncio.Event()
        try:
            while True:
                await self._report_failures()
                wakeup.clear()
                if not self._failures:
                    await wakeup.wait()
        finally:
            self._checker_wakeup = None

    async def _report_failures(self) -> None:
        failures = self._failures
        while failures:
            exception, instance = failures.popleft()
            try:
                await self.application_exception(exception, instance)
            except Exception:
                logger.exception("application_exception() failed for %r", instance)

    async def application_exception(self, exception: BaseException, application_details: Any) -> None:
        """Called for each application instance that raised. Override to report elsewhere."""
        self._log_failure(exception, application_details)

    @staticmethod
    def _log_failure(exception: BaseException, instance: Any) -> None:
        scope = instance["scope"] if instance is not None else {}
        scope_id = getattr(instance, "scope_id", None)
        logger.error(
            "Exception inside application (scope_id=%r, %s): %s",
            scope_id,
            describe_scope(scope),
            exception,
            exc_info=(type(exception), exception, exception.__traceback__),
        )


class _ScopedSend:
    """`send` for a queue-driven instance: forwards to `server.application_send(scope, message)`."""

    __slots__ = ("server", "scope")

    def __init__(self, server: StatelessServer, scope: Scope) -> None:
        self.server = server
        self.scope = scope

    def __call__(self, message: Message) -> Awaitable[None]:
        return self.server.application_send(self.scope, message)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop, or asyncio's when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for odd platforms
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
