"""Load the application named on the command line, detect its interface and make it an ASGI 3 callable.

Spec syntax (gunicorn's and uvicorn's, combined):
    module:attribute          myproject.wsgi:application
    module:attr.sub           app:server.asgi
    module:factory()          app:create_app()  or  app:create_app('prod', debug=False)  (literal args)
    module                    gunicorn's shorthand for module:application
With `factory=True` the attribute is called with no arguments (uvicorn's --factory).

Interfaces: 'asgi3' (`await app(scope, receive, send)`), 'asgi2' (`app(scope)` returns `instance(receive,
send)`), 'wsgi' (`app(environ, start_response)`).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from corral.shared.compatibility import double_to_single_callable, is_double_callable
from corral.shared.coroutines import iscoroutinefunction

__all__ = ["AppImportError", "import_app", "detect_interface", "wrap_application", "INTERFACES"]

# The logger keeps the module's name from before worker/ had rooms: logging configs name it.
logger = logging.getLogger("corral.worker.application")

INTERFACES = ("asgi3", "asgi2", "wsgi")
DEFAULT_ATTRIBUTE = "application"  # gunicorn's default when the spec has no ':'


class AppImportError(Exception):
    """The application could not be loaded; `str()` is the one line a user sees (see __cause__ for more)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------- importing


def _parse_spec(spec: str) -> tuple[str, list[str], tuple[list[Any], dict[str, Any]] | None]:
    """Split a spec into (module, attribute path, call arguments or None)."""
    bad = AppImportError(
        f"invalid application spec {spec!r}: expected 'module:attribute', 'module:attr.sub' or 'module:factory()'"
    )
    module, colon, expression = spec.strip().partition(":")
    module, expression = module.strip(), expression.strip()
    if not colon:
        expression = DEFAULT_ATTRIBUTE
    if not module or not expression or not all(part.isidentifier() for part in module.split(".")):
        raise bad
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise bad from None

    call: tuple[list[Any], dict[str, Any]] | None = None
    if isinstance(node, ast.Call):
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except ValueError:
            raise AppImportError(f"invalid application spec {spec!r}: factory arguments must be literals") from None
        if len(kwargs) != len(node.keywords):  # **kwargs
            raise bad
        call = (args, kwargs)
        node = node.func

    path: list[str] = []
    while isinstance(node, ast.Attribute):
        path.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise bad
    path.append(node.id)
    path.reverse()
    return module, path, call


def _import_module(name: str) -> Any:
    # An app given on the command line is looked up from the current directory, as gunicorn and uvicorn do.
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only "the module itself (or its package) does not exist" is a lookup error; a missing import
        # *inside* the module is the app's own error, with its traceback kept as __cause__.
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise AppImportError(f"module {name!r} not found (searched from {cwd})") from None
        raise AppImportError(f"error while importing module {name!r}: {type(exc).__name__}: {exc}") from exc
    except (Exception, SystemExit) as exc:  # SystemExit: a module that exits while being imported
        raise AppImportError(f"error while importing module {name!r}: {type(exc).__name__}: {exc}") from exc


def _available(obj: Any, missing: str) -> str:
    names = [n for n in dir(obj) if not n.startswith("_") and not inspect.ismodule(getattr(obj, n, None))]
    close = difflib.get_close_matches(missing, names, n=1)
    callables = [n for n in names if callable(getattr(obj, n, None))]
    shown = (close + [n for n in callables if n not in close])[:8]
    if not shown:
        return ""
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (callables here: {', '.join(shown)})"


def import_app(spec: str, factory: bool = False) -> Any:
    """Import the application named by `spec`; raises AppImportError with a one-line message."""
    module_name, path, call = _parse_spec(spec)
    obj = _import_module(module_name)
    where = module_name
    for part in path:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"attribute {part!r} not found in {where!r}{_available(obj, part)}") from None
        where = f"{where}:{part}" if where == module_name else f"{where}.{part}"

    if call is not None or factory:
        if not callable(obj):
            raise AppImportError(f"factory {where!r} is not callable")
        args, kwargs = call if call is not None else ([], {})
        try:
            obj = obj(*args, **kwargs)
        except Exception as exc:
            raise AppImportError(f"error calling factory {where!r}: {type(exc).__name__}: {exc}") from exc
        if obj is None:
            raise AppImportError(f"factory {where!r} returned None; it must return the application")
    elif obj is None:
        raise AppImportError(f"{where!r} is None, not an application")
    if not callable(obj):
        raise AppImportError(f"{where!r} is a {type(obj).__name__}, not a callable application")
    return obj


# ---------------------------------------------------------------------------- interface detection


def _positional_arity(func: Callable[..., Any]) -> int | None:
    """Required positional parameters (or all positional ones if that is 0), None with *args or no signature."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()):
        return None
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    return len(required) or len(positional)


def detect_interface(app: Any) -> str:
    """'asgi3', 'asgi2' or 'wsgi' for a loaded application (override with an explicit interface if wrong)."""
    # Explicit markers (asgiref's convention) win.
    if getattr(app, "_asgi_single_callable", False):
        return "asgi3"
    if getattr(app, "_asgi_double_callable", False):
        return "asgi2"
    if inspect.isclass(app):
        # The class is instantiated per request: `Cls(scope)` is ASGI 2; `Cls(environ, start_response)` with
        # an iterable instance is PEP 3333's class-as-application form.
        return "wsgi" if _positional_arity(app) == 2 else "asgi2"
    if iscoroutinefunction(app) or iscoroutinefunction(getattr(app, "__call__", None)):  # noqa: B004 - the bound __call__ is inspected
        return "asgi3"
    arity = _positional_arity(app)
    if arity == 2:
        return "wsgi"  # environ, start_response: Flask, Django's WSGIHandler, any PEP 3333 callable
    if arity == 3:
        return "asgi3"  # a sync callable returning a coroutine (e.g. a middleware's `return self.app(...)`)
    if arity == 1:
        return "asgi2"
    # *args or no signature: asgiref's heuristic.
    return "asgi2" if is_double_callable(app) else "asgi3"


def wrap_application(app: Any, interface: str = "auto", *, executor: Executor | None = None) -> Callable:
    """The application as an ASGI 3 callable; `executor` runs WSGI requests (None: the worker's pool)."""
    if interface == "auto":
        interface = detect_interface(app)
    if interface == "asgi3":
        return app
    if interface == "asgi2":
        return double_to_single_callable(app)
    if interface == "wsgi":
        # Imported here: only WSGI applications pay for the bridge.
        from corral.shared.wsgi import WsgiToAsgi

        # coalesce: corral's message shape (a list response in one message: one write, Content-Length).
        return WsgiToAsgi(app, executor=executor, coalesce=True)
    raise ValueError(f"interface must be one of auto, {', '.join(INTERFACES)}; got {interface!r}")
