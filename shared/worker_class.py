"""gunicorn's `-k/--worker-class`, resolved by what the class is.

gunicorn loads the class a path names; corral runs its own workers, so a path only says how to serve the
app: a uvicorn worker (or a project's own subclass of one, with its `CONFIG_KWARGS`) means ASGI, gunicorn's
sync and gthread workers mean WSGI. A class is recognised in this order:

1. gunicorn's and uvicorn's own names (`sync`, `gthread`, `uvicorn.workers.UvicornWorker`, ...);
2. a path to another class is imported and its bases looked at (uvicorn and gunicorn need not be installed
   for corral, but where they are, this is exact);
3. when the import fails (typically: the class subclasses uvicorn's, and uvicorn is not installed next to
   corral), its module's source is read instead: the class statement, its bases as the module imports them,
   and a `CONFIG_KWARGS` written as a literal dict (a warning says the class was read, not imported);
4. failing that too, a path whose class name says Uvicorn is taken as ASGI, with a warning that its
   `CONFIG_KWARGS` could not be known.

`CONFIG_KWARGS` are the keyword arguments a UvicornWorker gives uvicorn's `Config` (over gunicorn's own
settings: they win, as in uvicorn). Those with a meaning in corral become settings; the rest are named in
one warning with why they are ignored.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.machinery
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "WorkerClass",
    "WorkerClassError",
    "resolve",
    "check_refused",
    "kwargs_settings",
    "describe",
    "GUNICORN_SHORT_NAMES",
    "REFUSED",
]

ASGI, WSGI = "asgi", "wsgi"

_UVICORN_KWARGS = {"loop": "auto", "http": "auto"}
_H11_KWARGS = {"loop": "asyncio", "http": "h11"}

#: Classes known by path: (interface, CONFIG_KWARGS).
KNOWN: dict[str, tuple[str, dict[str, Any]]] = {
    "uvicorn.workers.UvicornWorker": (ASGI, _UVICORN_KWARGS),
    "uvicorn.workers.UvicornH11Worker": (ASGI, _H11_KWARGS),
    "uvicorn_worker.UvicornWorker": (ASGI, _UVICORN_KWARGS),
    "uvicorn_worker.UvicornH11Worker": (ASGI, _H11_KWARGS),
    "uvicorn_worker._workers.UvicornWorker": (ASGI, _UVICORN_KWARGS),
    "uvicorn_worker._workers.UvicornH11Worker": (ASGI, _H11_KWARGS),
    "gunicorn.workers.gasgi.ASGIWorker": (ASGI, {}),
    "gunicorn.workers.sync.SyncWorker": (WSGI, {}),
    "gunicorn.workers.gthread.ThreadWorker": (WSGI, {}),
}

#: gunicorn's short names (its SUPPORTED_WORKERS), and corral's `asgi`.
GUNICORN_SHORT_NAMES = {
    "sync": "gunicorn.workers.sync.SyncWorker",
    "gthread": "gunicorn.workers.gthread.ThreadWorker",
    "asgi": "gunicorn.workers.gasgi.ASGIWorker",
    "gevent": "gunicorn.workers.ggevent.GeventWorker",
    "gevent_wsgi": "gunicorn.workers.ggevent.GeventPyWSGIWorker",
    "gevent_pywsgi": "gunicorn.workers.ggevent.GeventPyWSGIWorker",
    "eventlet": "gunicorn.workers.geventlet.EventletWorker",
    "tornado": "gunicorn.workers.gtornado.TornadoWorker",
}

#: Classes corral cannot stand in for: the concurrency model they give the app is not one event loop.
REFUSED = {
    "gunicorn.workers.ggevent.GeventWorker": "monkey-patched greenlets",
    "gunicorn.workers.ggevent.GeventPyWSGIWorker": "monkey-patched greenlets",
    "gunicorn.workers.geventlet.EventletWorker": "monkey-patched green threads",
    "gunicorn.workers.gtornado.TornadoWorker": "tornado's own IOLoop and WSGI container",
}

_FIX = (
    "corral workers are one uvloop event loop serving ASGI, and WSGI on --threads threads: drop -k, or use "
    "uvicorn.workers.UvicornWorker (ASGI) or gthread (WSGI)"
)


class WorkerClassError(ValueError):
    """A worker class corral cannot run; `str()` says why and what to use."""


@dataclass(frozen=True)
class WorkerClass:
    """What a `-k` path means here."""

    path: str
    interface: str  # ASGI or WSGI
    config_kwargs: dict[str, Any] = field(default_factory=dict)  # a UvicornWorker's CONFIG_KWARGS, as found
    how: str = ""  # "" (known or imported), or how it was decided without importing it (for the warning)


# ---------------------------------------------------------------------------- resolution


def check_refused(text: str) -> None:
    """Raise WorkerClassError for gunicorn's own workers corral cannot stand in for (no import: a setting's
    converter calls this; what a path names is `resolve`d once the import path is set up)."""
    path = _canonical(text)
    if path in REFUSED:
        raise WorkerClassError(f"corral cannot run worker class {text!r} ({REFUSED[path]}); {_FIX}")


@functools.lru_cache(maxsize=64)
def resolve(text: str) -> WorkerClass:
    """The meaning of a `-k` value; raises WorkerClassError. Cached: a path is imported once per process."""
    check_refused(text)
    path = _canonical(text)
    if path in KNOWN:
        interface, kwargs = KNOWN[path]
        return WorkerClass(text, interface, dict(kwargs))
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise WorkerClassError(
            f"unknown worker class {text!r}: gunicorn's are sync, gthread, gevent, eventlet, "
            f"tornado, asgi, or a path module.Class; {_FIX}"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module falls back to reading it
        return _from_source(text, module_name, class_name, exc)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise WorkerClassError(f"worker class {text!r}: {module_name!r} has no class {class_name!r}")
    return _from_class(text, cls)


def _canonical(text: str) -> str:
    """gunicorn's spellings of one class as its dotted path: `gthread`, `egg:gunicorn#gthread`, `#gthread`."""
    text = text.strip()
    if text.startswith("egg:"):
        dist, _, name = text[4:].partition("#")
        if dist.strip() == "gunicorn":
            text = name or "sync"
    text = text.lstrip("#")
    return GUNICORN_SHORT_NAMES.get(text, text)


def _from_class(text: str, cls: type) -> WorkerClass:
    for base in cls.__mro__:
        path = f"{base.__module__}.{base.__qualname__}"
        if path in REFUSED:
            raise WorkerClassError(
                f"corral cannot run worker class {text!r}, a subclass of {path} ({REFUSED[path]}); {_FIX}"
            )
        if path in KNOWN or _is_uvicorn(base.__module__, base.__name__):
            interface = KNOWN.get(path, (ASGI, {}))[0]
            kwargs = getattr(cls, "CONFIG_KWARGS", {}) if interface == ASGI else {}
            return WorkerClass(text, interface, dict(kwargs) if isinstance(kwargs, dict) else {})
    raise WorkerClassError(
        f"worker class {text!r} is neither a uvicorn worker nor gunicorn's sync/gthread "
        f"(its bases: {', '.join(b.__name__ for b in cls.__mro__[1:-1]) or 'none'}); {_FIX}"
    )


def _is_uvicorn(module: str, name: str) -> bool:
    return module.partition(".")[0] in ("uvicorn", "uvicorn_worker") and name in ("UvicornWorker", "UvicornH11Worker")


def _from_source(text: str, module_name: str, class_name: str, error: Exception) -> WorkerClass:
    """The class read from its module's source, when importing the module failed."""
    why = _import_failure(error)
    try:
        found = _SourceReader().read(module_name, class_name, depth=0)
    except WorkerClassError:
        raise
    except Exception:  # noqa: BLE001 - unreadable source: the name is all there is
        found = None
    if found is not None:
        interface, kwargs = found
        return WorkerClass(text, interface, kwargs, f"read from its source ({why})")
    if "uvicorn" in class_name.lower() or "uvicorn" in module_name.lower():
        return WorkerClass(
            text,
            ASGI,
            {},
            f"taken as ASGI by its name ({why}; its source could not be read, so its CONFIG_KWARGS are not known)",
        )
    raise WorkerClassError(
        f"worker class {text!r} cannot be imported ({why}), and it is not a known worker class; {_FIX}"
    )


def _import_failure(error: Exception) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name:
        return (
            f"{error.name.split('.')[0]} is not installed here"
            if error.name.split(".")[0] in ("uvicorn", "uvicorn_worker", "gunicorn")
            else f"no module {error.name!r}"
        )
    return f"importing it failed: {type(error).__name__}: {error}"


class _SourceReader:
    """A worker class's bases and CONFIG_KWARGS from its module's source; no code runs (the module's file is
    found on the import path without importing it or its packages)."""

    def read(self, module_name: str, class_name: str, depth: int) -> tuple[str, dict[str, Any]] | None:
        if depth > 8:
            return None
        path = f"{module_name}.{class_name}"
        if path in REFUSED:
            raise WorkerClassError(f"corral cannot run a subclass of {path} ({REFUSED[path]}); {_FIX}")
        if path in KNOWN:
            interface, kwargs = KNOWN[path]
            return interface, dict(kwargs)
        if _is_uvicorn(module_name, class_name):
            return ASGI, dict(_UVICORN_KWARGS)
        found = self._tree(module_name)
        if found is None:
            return None
        tree, is_package = found
        names = _imported_names(tree, module_name, is_package)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                return self._class(node, module_name, names, depth)
        target = names.get(class_name)  # re-exported: `from ._workers import UvicornWorker`
        if target is not None and "." in target:
            module, _, name = target.rpartition(".")
            return self.read(module, name, depth=depth + 1)
        return None

    def _tree(self, module_name: str) -> tuple[ast.Module, bool] | None:
        """(the module's syntax tree, whether it is a package), or None when there is no source to read."""
        spec = None
        search: list[str] | None = None  # sys.path for the top-level name, then each package's folders
        for part in module_name.split("."):
            spec = importlib.machinery.PathFinder.find_spec(part, search)
            if spec is None:
                return None
            search = list(spec.submodule_search_locations or [])
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        with open(spec.origin, encoding="utf-8") as fh:
            return ast.parse(fh.read(), spec.origin), spec.submodule_search_locations is not None

    def _class(
        self, node: ast.ClassDef, module_name: str, names: dict[str, str], depth: int
    ) -> tuple[str, dict[str, Any]] | None:
        for base in node.bases:
            dotted = _dotted(base)
            if dotted is None:
                continue
            head, _, rest = dotted.partition(".")
            full = names.get(head, f"{module_name}.{head}") + (f".{rest}" if rest else "")
            module, _, name = full.rpartition(".")
            found = self.read(module, name, depth=depth + 1) if module else None
            if found is None:
                continue
            interface, inherited = found
            if interface != ASGI:
                return interface, {}
            own = _config_kwargs(node, inherited)
            return ASGI, inherited if own is None else own
        return None


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _imported_names(tree: ast.Module, module_name: str, is_package: bool = False) -> dict[str, str]:
    """Local name -> dotted path, for the module's top-level imports."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    names[head] = head
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package (a package's own __init__: itself) upwards
                parts = module_name.split(".")
                package = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


def _config_kwargs(node: ast.ClassDef, inherited: dict[str, Any]) -> dict[str, Any] | None:
    """The class's own CONFIG_KWARGS: a literal dict, `{**Base.CONFIG_KWARGS, ...}` or `dict(...)`."""
    for statement in node.body:
        value: ast.expr | None
        if isinstance(statement, ast.Assign):
            targets = [t.id for t in statement.targets if isinstance(t, ast.Name)]
            value = statement.value
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            targets, value = [statement.target.id], statement.value
        else:
            continue
        if "CONFIG_KWARGS" in targets and value is not None:
            return _literal_kwargs(value, inherited)
    return None


def _literal_kwargs(value: ast.expr, inherited: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(value, ast.Dict):
        for key, item in zip(value.keys, value.values):
            if key is None:  # **Base.CONFIG_KWARGS
                found.update(inherited)
                continue
            try:
                found[ast.literal_eval(key)] = ast.literal_eval(item)
            except ValueError:
                found[ast.literal_eval(key)] = _UNREADABLE
        return found
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
        for argument in value.args:
            found.update(_literal_kwargs(argument, inherited))
        for keyword in value.keywords:
            if keyword.arg is None:
                found.update(inherited)
                continue
            try:
                found[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                found[keyword.arg] = _UNREADABLE
        return found
    if isinstance(value, ast.Attribute) and value.attr == "CONFIG_KWARGS":
        return dict(inherited)
    return {"CONFIG_KWARGS": _UNREADABLE}


class _Unreadable:
    def __repr__(self) -> str:
        return "<not a literal>"


_UNREADABLE = _Unreadable()


# ---------------------------------------------------------------------------- CONFIG_KWARGS -> settings
# uvicorn's Config argument -> (corral setting, converter of its value) or why it is ignored. A converter
# returning _SAME means "what corral does anyway", so nothing is set and nothing is reported.

_SAME = object()


def _loop(value: Any) -> Any:
    if value in ("auto", "uvloop"):
        return _SAME
    raise _Ignored("corral always runs uvloop")


def _http(value: Any) -> Any:
    if value in ("auto", "httptools"):
        return _SAME
    raise _Ignored("corral always parses HTTP/1.1 with httptools")


def _ws(value: Any) -> Any:
    if value in ("auto", "websockets", "websockets-sansio", "wsproto"):
        return _SAME
    raise _Ignored("corral always accepts WebSockets (websockets' sans-I/O protocol)")


def _optional_seconds(value: Any) -> Any:
    return 0.0 if value is None else value


def _log_level(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = logging.getLevelName(value)
    text = str(value).lower()
    return "debug" if text == "trace" else text


def _access_log(value: Any) -> Any:
    return _SAME if value else None


def _proxy_headers(value: Any) -> Any:
    return _SAME if value else ()  # trust no peer's proxy headers


def _http2(value: Any) -> Any:
    return "auto" if value else "1"


def _not_none(value: Any) -> Any:
    return _SAME if value is None else value


class _Ignored(Exception):
    pass


_IDENTITY: Callable[[Any], Any] = lambda value: value  # noqa: E731 - a table entry

KWARGS: dict[str, tuple[str, Callable[[Any], Any]] | str] = {
    "loop": ("", _loop),
    "http": ("", _http),
    "ws": ("", _ws),
    "http2": ("http", _http2),
    "lifespan": ("lifespan", _IDENTITY),
    "interface": ("interface", _IDENTITY),
    "factory": ("factory", _IDENTITY),
    "root_path": ("root_path", _IDENTITY),
    "proxy_headers": ("forwarded_allow_ips", _proxy_headers),
    "forwarded_allow_ips": ("forwarded_allow_ips", _not_none),
    "server_header": ("server_header", _IDENTITY),
    "date_header": ("date_header", _IDENTITY),
    "ws_max_size": ("ws_max_size", _IDENTITY),
    "ws_max_queue": ("ws_max_queue", _IDENTITY),
    "ws_ping_interval": ("ws_ping_interval", _optional_seconds),
    "ws_ping_timeout": ("ws_ping_timeout", _optional_seconds),
    "ws_per_message_deflate": ("ws_per_message_deflate", _IDENTITY),
    "log_level": ("loglevel", _log_level),
    "access_log": ("accesslog", _access_log),
    "limit_max_requests": ("max_requests", _not_none),
    "limit_max_requests_jitter": ("max_requests_jitter", _IDENTITY),
    "backlog": ("backlog", _IDENTITY),
    "timeout_keep_alive": ("keepalive", _IDENTITY),
    "timeout_graceful_shutdown": ("graceful_timeout", _not_none),
    "ssl_context_factory": ("ssl_context", _not_none),
    # per worker in uvicorn: corral's limit is over all workers (see kwargs_settings)
    "limit_concurrency": ("max_applications", _not_none),
    "use_colors": "corral's logs are plain text",
    "log_config": "use --log-config (or logconfig_dict in the config file)",
    "headers": "corral adds no default response headers besides server and date",
    "h11_max_incomplete_event_size": "corral bounds a request head with --limit-request-line and "
    "--limit-request-field-size",
    "reset_contextvars": "each request already starts from the worker's context",
    "timeout_notify": "the master's watchdog is -t/--timeout",
    "callback_notify": "the master's watchdog is -t/--timeout",
    "timeout_worker_healthcheck": "the master's watchdog is -t/--timeout",
    "env_file": "use -e/--env KEY=VALUE or the service manager's environment",
    **dict.fromkeys(("app", "host", "port", "uds", "fd", "workers"), "set by the server (-b/--bind, -w/--workers)"),
    **dict.fromkeys(
        (
            "ssl_keyfile",
            "ssl_certfile",
            "ssl_keyfile_password",
            "ssl_version",
            "ssl_cert_reqs",
            "ssl_ca_certs",
            "ssl_ciphers",
        ),
        "TLS comes from --certfile, --keyfile, --ca-certs, --cert-reqs, --ciphers (or an ssl_context hook)",
    ),
    **dict.fromkeys(
        ("reload", "reload_dirs", "reload_delay", "reload_includes", "reload_excludes"), "use serve --reload"
    ),
}


def kwargs_settings(kwargs: dict[str, Any], workers: int) -> tuple[dict[str, Any], list[str]]:
    """(corral settings, "name=value (why)" for each ignored one) from a UvicornWorker's CONFIG_KWARGS."""
    found: dict[str, Any] = {}
    ignored: list[str] = []
    for name, value in kwargs.items():
        entry = KWARGS.get(name)
        if value is _UNREADABLE:
            ignored.append(f"{name} (its value is not a literal, so it could not be read without importing)")
            continue
        if entry is None:
            ignored.append(f"{name}={value!r} (not an argument of uvicorn's Config)")
            continue
        if isinstance(entry, str):
            ignored.append(f"{name}={value!r} ({entry})")
            continue
        setting, convert = entry
        try:
            converted = convert(value)
        except _Ignored as why:
            ignored.append(f"{name}={value!r} ({why})")
            continue
        if converted is _SAME:
            continue
        if name == "limit_concurrency":
            found["pool_full"] = "503"  # uvicorn answers 503 past its limit
            converted = converted * max(workers, 1)
        found[setting] = converted
    return found, ignored


def describe(worker: WorkerClass, ignored: list[str]) -> str | None:
    """The one warning line for a worker class, or None when it means exactly what it says."""
    parts = []
    if worker.how:
        parts.append(f"-k {worker.path}: {worker.how}; served as {worker.interface.upper()}")
    if ignored:
        head = "" if parts else f"-k {worker.path}: "
        parts.append(f"{head}CONFIG_KWARGS ignored: {', '.join(ignored)}")
    return "; ".join(parts) or None


def clear_cache() -> None:
    """Forget resolved classes (tests; a reload keeps them, as the modules stay imported)."""
    resolve.cache_clear()
