"""Settings for gunicorn users: server hooks, carried-over options, request deadlines, --reload.

Declared in `corral.shared.settings.registry`'s `REGISTRY` after `core`'s (the package's `__init__` imports
this module, so `REGISTRY` holds them all); kept apart because they are one concern: what a gunicorn user's
config file and command line need.

Server hooks are typed callable settings with gunicorn's names and arities: a config file sets them to a
function, or to a dotted path ("mypkg.hooks.post_fork" or "mypkg.hooks:post_fork") that is imported when
the settings are read. They have no command-line flag (gunicorn has none either).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from corral.shared.settings.registry import (
    _declare,
    non_negative_float,
    optional_str,
    str_list,
    to_bool,
    to_str,
)
from corral.shared.worker_class import check_refused

__all__ = ["HOOK_ARITY", "worker_class", "describe_callable"]

# gunicorn's hook names, in the order they run in a server's life, with the arguments they are called with.
HOOK_ARITY: dict[str, tuple[int, ...]] = {
    "on_starting": (1,),  # (server)
    "when_ready": (1,),  # (server)
    "pre_fork": (2,),  # (server, worker)
    "post_fork": (2,),  # (server, worker)
    "post_worker_init": (1,),  # (worker)
    "pre_request": (2,),  # (worker, req)
    "post_request": (2, 3, 4),  # (worker, req[, environ[, resp]]): gunicorn accepts all three
    "worker_int": (1,),  # (worker)
    "worker_abort": (1,),  # (worker)
    "worker_exit": (2,),  # (server, worker)
    "child_exit": (2,),  # (server, worker)
    "on_reload": (1,),  # (server)
    "nworkers_changed": (3,),  # (server, new_value, old_value)
    "pre_exec": (1,),  # (server)
    "on_exit": (1,),  # (server)
}

_HOOK_HELP = {
    "on_starting": "Called in the master just before it starts (before the app check and the sockets).",
    "when_ready": "Called in the master once the sockets are bound, just before the first workers start.",
    "pre_fork": "Called in the master just before a worker is forked.",
    "post_fork": "Called in the worker just after the fork, before it loads the app; if it raises, the worker "
    "fails to boot (exit 3) and the master's boot retries and backoff apply.",
    "post_worker_init": "Called in the worker once the app is loaded and lifespan startup is done, before it "
    "accepts connections.",
    "pre_request": "Called in the worker before each HTTP request reaches the app (WSGI: on the request's "
    "thread; ASGI: on the event loop).",
    "post_request": "Called in the worker after each HTTP response (WSGI: on the request's thread, with the "
    "app's environ; ASGI: on the event loop).",
    "worker_int": "Called in the worker when it gets SIGINT or SIGQUIT (quick stop).",
    "worker_abort": "Called in the worker when the master's --timeout watchdog aborts it (it is killed right "
    "after: keep it short).",
    "worker_exit": "Called in the worker just before its process exits, and in the short-lived child that "
    "checks the app imports, once it has (prometheus_client's mark_process_dead may go here).",
    "child_exit": "Called in the master after a worker exited, and after the short-lived child that checks "
    "the app imports (prometheus_client's mark_process_dead goes here).",
    "on_reload": "Called in the master on a reload (HUP, or a --reload change).",
    "nworkers_changed": "Called in the master when the number of workers changes (TTIN, TTOU, reload), with "
    "the new and the old number.",
    "pre_exec": "Called in the master just before a new master is started (USR2).",
    "on_exit": "Called in the master just before it exits.",
}


def describe_callable(func: Callable[..., Any]) -> str:
    """`module.qualname`: how a hook is shown (and how it can be given back as a dotted path)."""
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _import_dotted(path: str) -> Any:
    module_name, colon, attribute = path.partition(":")
    if not colon:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"expected a callable or a dotted path such as 'mypkg.hooks.post_fork', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for {path!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{path!r}: {part!r} not found") from None
    return obj


def _arity(func: Callable[..., Any]) -> int | None:
    """Positional parameters the callable takes, None when it takes any number (*args) or cannot tell."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def hook(name: str, accepted: tuple[int, ...] | None = None) -> Callable[[Any], Any]:
    accepted = accepted or HOOK_ARITY[name]

    def convert(value: Any) -> Callable[..., Any] | None:
        if value is None or value == "":
            return None
        func: Callable[..., Any] = _import_dotted(value.strip()) if isinstance(value, str) else value
        if not callable(func):
            raise ValueError(f"expected a callable, got {type(func).__name__}")
        arity = _arity(func)
        if arity is not None and arity not in accepted:
            wanted = " or ".join(str(n) for n in accepted)
            raise ValueError(
                f"{describe_callable(func)} takes {arity} positional argument(s); {name} is called with {wanted}"
            )
        return func

    convert.__name__ = f"hook:{name}"
    return convert


# ---------------------------------------------------------------------------- worker classes
def worker_class(value: Any) -> str | None:
    """gunicorn's worker class, kept as given; gevent, eventlet and tornado are refused here. What another
    path names (a uvicorn worker or a subclass: ASGI; gunicorn's sync/gthread or a subclass: WSGI) is
    decided by `corral.shared.worker_class.resolve` once the import path is set (--pythonpath, the working
    folder): see `corral.master.config.carryover.effective`."""
    if value is None or value == "":
        return None
    text = to_str(value).strip()
    check_refused(text)  # WorkerClassError is a ValueError: "invalid value for --worker-class: ..."
    return text


def env_pair(value: Any) -> str:
    text = to_str(value)
    key, equals, _ = text.partition("=")
    if not equals or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return text


# ---------------------------------------------------------------------------- server hooks
for _name, _help in _HOOK_HELP.items():
    _declare(
        _name,
        "hooks",
        hook(_name),
        None,
        _help + " gunicorn's hook, same name and arguments.",
        cli=False,
        render=describe_callable,
    )

# gunicorn's TLS hook: called (config, default_ssl_context_factory) only when TLS is on (corral.master.listen.tls).
_declare(
    "ssl_context",
    "tls",
    hook("ssl_context", (2,)),
    None,
    "Called in the master as ssl_context(config, default_ssl_context_factory) when TLS is on (--certfile), "
    "at start and on each HUP; returns the SSLContext to serve with. gunicorn's hook, same name and "
    "arguments: `config` is the effective settings, the factory builds corral's context from --certfile "
    "and friends (ALPN for HTTP/2 included).",
    cli=False,
    render=describe_callable,
)

# ---------------------------------------------------------------------------- gunicorn carry-over
_declare(
    "raw_env",
    "compat",
    env_pair,
    (),
    "Set an environment variable (KEY=VALUE) in the master and so in every worker; repeat for several.",
    ("-e", "--env"),
    metavar="KEY=VALUE",
    multiple=True,
)
_declare(
    "pythonpath",
    "compat",
    str_list,
    (),
    "Folders (comma-separated) put at the front of sys.path before the app is imported.",
    ("--pythonpath",),
    metavar="DIRS",
)
_declare(
    "worker_class",
    "compat",
    worker_class,
    None,
    "gunicorn's worker class, resolved by what the class is: a uvicorn worker, or a project's subclass of "
    "one, means ASGI (its CONFIG_KWARGS applied where they mean something here); sync and gthread (and "
    "their subclasses) mean WSGI (--interface wsgi); gevent, eventlet and tornado are refused.",
    ("-k", "--worker-class"),
    metavar="CLASS",
)
_declare(
    "wsgi_app",
    "compat",
    optional_str,
    None,
    "The application (module:attribute) when none is given on the command line (gunicorn's config-file key).",
    cli=False,
)

# ---------------------------------------------------------------------------- request deadline
_declare(
    "request_timeout",
    "timeouts",
    non_negative_float,
    0.0,
    "Seconds an HTTP request may run; past that the client gets 504 at once. ASGI: the task is cancelled "
    "(the app's receive() gives http.disconnect). WSGI: the thread cannot be stopped; its response is "
    "dropped, and once stuck threads fill --threads the worker is replaced gracefully. 0 is off.",
    ("--request-timeout",),
    metavar="SECONDS",
)


# ---------------------------------------------------------------------------- logging (gunicorn's)
def dict_config(value: Any) -> dict[str, Any] | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"expected a logging.config.dictConfig dict, got {type(value).__name__}")
    return value


_declare(
    "logconfig_dict",
    "logging",
    dict_config,
    None,
    "A logging.config.dictConfig dict given in the config file (gunicorn's key); wins over --log-config.",
    cli=False,
    render=lambda value: f"<dictConfig: {', '.join(sorted(value.get('loggers', {})))}>",
)
_declare(
    "capture_output",
    "logging",
    to_bool,
    False,
    "Send the stdout and stderr of the master and workers (print(), C extensions) to --error-logfile.",
    ("--capture-output",),
    is_flag=True,
)

# ---------------------------------------------------------------------------- development reload
_declare(
    "reload",
    "reload",
    to_bool,
    False,
    "Development: restart the workers (new before old, as HUP) when a watched file changes; needs the "
    "'reload' extra (pip install 'corral[reload]', watchfiles).",
    ("--reload",),
    is_flag=True,
)
_declare(
    "reload_dirs",
    "reload",
    to_str,
    (),
    "Folder to watch with --reload (default: the working folder); repeat for several.",
    ("--reload-dir",),
    metavar="DIR",
    multiple=True,
)
_declare(
    "reload_includes",
    "reload",
    to_str,
    ("*.py",),
    "Glob of the file names that trigger a reload (default *.py); repeat for several.",
    ("--reload-include",),
    metavar="GLOB",
    multiple=True,
)
_declare(
    "reload_excludes",
    "reload",
    to_str,
    (".*", "*~", "__pycache__", "*.pyc", ".venv", "venv", "node_modules"),
    "Glob of file or folder names that never trigger a reload; repeat for several (replaces the default).",
    ("--reload-exclude",),
    metavar="GLOB",
    multiple=True,
)
