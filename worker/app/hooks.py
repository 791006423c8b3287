"""What gunicorn's server hooks receive in a corral worker, and the pre_request/post_request middleware.

gunicorn hooks are written against gunicorn's objects; these give them the attributes hooks commonly touch:

- `WorkerView` (the `worker` argument), gunicorn's Worker attributes: `pid` ("[booting]" in pre_fork, as
  gunicorn's), `ppid`, `age` (the worker's number: 1, 2, ... in spawn order), `log` (a `logging.Logger`),
  `cfg` (gunicorn's Config view of the settings, corral.master.hooks.cfg: `worker.cfg.workers`,
  `worker.cfg.worker_connections`, ...), `booted`, `alive`, `aborted`, `nr` (requests served), `nr_conns`
  (open connections: HTTP/1.1, HTTP/2 and WebSocket; read from any thread, it is len() of the server's
  connection set, so it costs nothing per request), `max_requests` (with its jitter; sys.maxsize when off),
  `timeout` (gunicorn's: half of --timeout), `sockets` (the listening sockets), `wsgi` and `asgi` (the loaded
  application; gunicorn's thread workers name it the one way, its ASGI worker the other), `loop` (the
  worker's event loop once it runs, as gunicorn's ASGI worker's), `worker_connections` (the setting, as
  gunicorn's workers copy it: corral enforces no connection limit), `tmp` and `notify()` (a heartbeat to the
  master's watchdog: `tmp.notify()`, `tmp.last_update()`). Setting `worker.alive = False` (gunicorn's way
  for a hook to end its worker) asks the master to replace the worker: the new one starts, then this one
  stops gracefully. Not there: `app` (gunicorn's Application object), the worker's methods, and the
  internals of gunicorn's own loops (`tpool`, `poller`, `keepalived_conns`, `servers`, `reloader`, ...).
- `HookRequest` (`req` of pre_request/post_request): `method`, `path`, `uri`, `query`, `version` (a tuple),
  `scheme`, `headers` (gunicorn's form: a list of (NAME, value) str pairs, names upper-case),
  `remote_addr`, and `scope` (the ASGI scope). Not there: `body` (the app reads the body).
- `HookResponse` (`resp` of post_request): `status` ("200 OK"-style str), `status_code`, `headers` (list of
  (name, value) str pairs), `sent` (body bytes sent). `environ` (third argument): for a WSGI app (served
  natively) the very environ the app got; for an ASGI app a CGI-style dict built from the scope
  (REQUEST_METHOD, PATH_INFO, QUERY_STRING, SERVER_PROTOCOL, REMOTE_ADDR, HTTP_*) on first use.

For ASGI apps the hooks run on the worker's event loop (they must not block): `RequestHooks` wraps the app
only when one of the two is set, so an unset hook costs nothing per request. For WSGI apps they run on the
request's thread around the app call, as in gunicorn (`corral.worker.wsgi.layers.HookedWsgiCycle`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

__all__ = [
    "WorkerView",
    "WorkerTmp",
    "HookRequest",
    "HookResponse",
    "RequestHooks",
    "wrap_request_hooks",
    "call_pre_request",
    "call_post_request",
    "hook_arity",
]

logger = logging.getLogger("corral.error")


class WorkerTmp:
    """gunicorn's `worker.tmp`: `notify()` is a heartbeat to the master's watchdog (a hook doing long work
    on the event loop, such as a slow post_worker_init, keeps its worker from being killed as hung), and
    `last_update()` the monotonic time of the last one."""

    __slots__ = ("beat", "last")

    def __init__(self) -> None:
        self.beat: Callable[[], Any] | None = None  # set by the worker process (corral.master.arbiter.workerproc)
        self.last = time.monotonic()

    def notify(self) -> None:
        self.last = time.monotonic()
        if self.beat is not None:
            self.beat()

    def last_update(self) -> float:
        return self.last


class WorkerView:
    """The `worker` a gunicorn hook gets (see the module docstring for what is there)."""

    __slots__ = (
        "pid",
        "ppid",
        "age",
        "log",
        "cfg",
        "booted",
        "aborted",
        "started",
        "recycle",
        "sockets",
        "wsgi",
        "loop",
        "timeout",
        "max_requests",
        "tmp",
        "server",
        "requests",
        "connections",
        "_alive",
    )

    def __init__(
        self,
        age: int,
        cfg: Any,
        pid: int | str | None = None,
        ppid: int | None = None,
        *,
        sockets: Sequence[Any] = (),
        timeout: float = 0.0,
        max_requests: int = 0,
    ) -> None:
        self.pid = pid if pid is not None else os.getpid()
        self.ppid = ppid if ppid is not None else os.getppid()
        self.age = age
        self.log = logging.getLogger("corral.error")
        self.cfg = cfg
        self.booted = False
        self.aborted = False
        self.started = time.time()
        #: Asks the master for a graceful replacement (set by the worker process; None when standalone).
        self.recycle: Callable[..., None] | None = None  # recycle(why)
        self.sockets = list(sockets)
        self.wsgi: Any = None  # the application, once loaded
        self.loop: Any = None  # the worker's event loop, once it runs (gunicorn's ASGI worker's worker.loop)
        self.timeout = timeout
        self.max_requests = max_requests or sys.maxsize  # gunicorn's "no limit"
        self.tmp = WorkerTmp()
        self.server: Any = None  # the serving WorkerServer, once it serves (nr and alive read it)
        # nr and nr_conns where there is no server (a master-side view: the last heartbeat's counts)
        self.requests = 0
        self.connections = 0
        self._alive = True

    @property
    def nr(self) -> int:
        """Requests served (gunicorn's counter)."""
        server = self.server
        return server.requests_served if server is not None else self.requests

    @property
    def nr_conns(self) -> int:
        """Open connections (gunicorn's thread and ASGI workers' counter): HTTP/1.1, HTTP/2 and WebSocket.
        Safe to read from another thread (a monitoring thread started in post_fork): len() of a set is
        atomic, and the set is the one the server keeps anyway, so counting costs nothing per connection."""
        server = self.server
        return len(server.connections) if server is not None else self.connections

    @property
    def asgi(self) -> Any:
        """The loaded application, under the name gunicorn's ASGI worker gives it (its thread workers say wsgi)."""
        return self.wsgi

    @property
    def worker_connections(self) -> int:
        """gunicorn's workers copy the setting here; so does this (corral enforces no connection limit: its
        limit is --max-applications, requests and WebSockets)."""
        return self.cfg.worker_connections

    @property
    def alive(self) -> bool:
        server = self.server
        return self._alive and not (server is not None and server.stopping)

    @alive.setter
    def alive(self, value: bool) -> None:
        server = self.server
        if not value and self._alive and server is not None and not server.stopping and self.recycle is not None:
            self.recycle("a hook set worker.alive = False")
        self._alive = bool(value)

    def notify(self) -> None:
        """gunicorn's `worker.notify()`: a heartbeat to the master (see WorkerTmp)."""
        self.tmp.notify()

    def __repr__(self) -> str:
        return f"<Worker {self.age} pid={self.pid}>"


def _status_text(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


class HookRequest:
    """gunicorn's request attributes, read from the ASGI scope when asked."""

    __slots__ = ("scope",)

    def __init__(self, scope: dict) -> None:
        self.scope = scope

    @property
    def method(self) -> str:
        return self.scope.get("method", "GET")

    @property
    def path(self) -> str:
        return self.scope.get("path", "/")

    @property
    def query(self) -> str:
        return self.scope.get("query_string", b"").decode("latin-1")

    @property
    def uri(self) -> str:
        raw = self.scope.get("raw_path") or self.path.encode("latin-1", "replace")
        query = self.scope.get("query_string")
        return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")

    @property
    def version(self) -> tuple[int, int]:
        major, _, minor = self.scope.get("http_version", "1.1").partition(".")
        return int(major), int(minor or 0)

    @property
    def scheme(self) -> str:
        return self.scope.get("scheme", "http")

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1").upper(), v.decode("latin-1")) for k, v in self.scope.get("headers", ())]

    @property
    def remote_addr(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class HookResponse:
    """What post_request learns of the response; its `send` records it on the way to the real one."""

    __slots__ = ("status_code", "raw_headers", "sent", "_send")

    def __init__(self, send: Callable[[dict], Any]) -> None:
        self.status_code = 0
        self.raw_headers: Any = ()
        self.sent = 0
        self._send = send

    @property
    def status(self) -> str:
        return _status_text(self.status_code) if self.status_code else ""

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status_code = message["status"]
            self.raw_headers = message.get("headers", ())
        elif kind == "http.response.body":
            self.sent += len(message.get("body", b""))
        await self._send(message)


def cgi_environ(scope: dict) -> dict[str, Any]:
    """A CGI-style view of the scope for post_request's `environ` argument."""
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "SCRIPT_NAME": scope.get("root_path", ""),
        "PATH_INFO": scope.get("path", "/"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "REMOTE_ADDR": client[0] if client else "",
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "asgi.scope": scope,
    }
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = "HTTP_" + name
        environ[name] = value.decode("latin-1")
    return environ


def _materialized(name: str) -> Callable:
    method = getattr(dict, name)

    def call(self: LazyEnviron, *args: Any, **kwargs: Any) -> Any:
        if self._scope is not None:
            scope, self._scope = self._scope, None
            dict.update(self, cgi_environ(scope))
        return method(self, *args, **kwargs)

    call.__name__ = name
    return call


class LazyEnviron(dict):
    """post_request's `environ`: a dict filled from the scope on first use (most hooks never read it)."""

    __slots__ = ("_scope",)

    def __init__(self, scope: dict) -> None:
        super().__init__()
        self._scope: dict | None = scope

    for _name in (
        "__getitem__",
        "__contains__",
        "__iter__",
        "__len__",
        "__repr__",
        "__eq__",
        "__setitem__",
        "__delitem__",
        "get",
        "keys",
        "items",
        "values",
        "copy",
        "pop",
        "popitem",
        "setdefault",
        "update",
        "clear",
    ):
        locals()[_name] = _materialized(_name)
    del _name
    __hash__ = None


class RequestHooks:
    """ASGI middleware calling pre_request before the app and post_request after it, for HTTP requests."""

    __slots__ = ("app", "worker", "pre", "post", "post_arity")

    def __init__(
        self, app: Callable, worker: WorkerView, pre: Callable | None, post: Callable | None, post_arity: int = 4
    ) -> None:
        self.app = app
        self.worker = worker
        self.pre = pre
        self.post = post
        self.post_arity = post_arity

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = HookRequest(scope)
        if self.pre is not None:
            call_pre_request(self.pre, self.worker, request)
        if self.post is None:
            await self.app(scope, receive, send)
            return
        response = HookResponse(send)
        try:
            await self.app(scope, receive, response.send)
        finally:
            call_post_request(self.post, self.post_arity, self.worker, request, LazyEnviron(scope), response)


def call_pre_request(pre: Callable, worker: WorkerView, request: HookRequest) -> None:
    """Run pre_request; one that raises is logged with its traceback and the request goes on."""
    try:
        pre(worker, request)
    except Exception:
        logger.exception("pre_request hook raised (the request goes on)")


def call_post_request(
    post: Callable, arity: int, worker: WorkerView, request: HookRequest, environ: dict, response: HookResponse
) -> None:
    """Run post_request with as many arguments as it takes (gunicorn accepts 2, 3 or 4); logged if it raises."""
    try:
        if arity >= 4:
            post(worker, request, environ, response)
        elif arity == 3:
            post(worker, request, environ)
        else:
            post(worker, request)
    except Exception:
        logger.exception("post_request hook raised")


def hook_arity(func: Callable) -> int:
    """How many positional arguments `func` takes (4 when it takes *args or cannot be inspected)."""
    import inspect

    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 4
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return 4
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def wrap_request_hooks(app: Callable, worker: WorkerView, pre: Callable | None, post: Callable | None) -> Callable:
    """`app` itself when neither hook is set (no per-request work at all), else the middleware."""
    if pre is None and post is None:
        return app
    return RequestHooks(app, worker, pre, post, hook_arity(post) if post is not None else 4)
