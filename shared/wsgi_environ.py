"""The PEP 3333 environ of an HTTP request, built from its ASGI scope.

One builder for both WSGI paths: `corral.shared.wsgi.WsgiToAsgi` (asgiref's API, any ASGI server) and the
worker's native WSGI path (`corral.worker.wsgi.cycle`), which builds the scope with the proxy headers
applied and hands it here, so both see the same SCRIPT_NAME, REMOTE_ADDR, wsgi.url_scheme and headers.

* Headers are decoded as latin-1 (PEP 3333); repeated `Cookie` headers are joined with "; ", other repeats
  with ","; request headers whose names contain "_" are dropped (they would alias the "-" spelling in the
  environ: the header-smuggling hole gunicorn also closes).
* `SCRIPT_NAME` is stripped from the path only at a segment boundary; `REMOTE_PORT` and
  `wsgi.input_terminated` are set.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable
from typing import Any

from corral.shared import native

__all__ = [
    "build_environ",
    "build_environ_python",
    "fill_headers",
    "environ_template",
    "native_string",
    "TooManyHeaders",
    "ERRORS_STREAM",
    "NATIVE_BUILD",
    "NATIVE_BUILD_PARSED",
    "NATIVE_BUILD_ARGS",
]

logger = logging.getLogger("corral.shared.wsgi")


class TooManyHeaders(ValueError):
    """More repeats of one request header than the limit allows (answered with 400)."""


# Header name -> environ key, cached (bounded: names come from clients). None means "drop the header".
_MISSING: Any = object()  # a sentinel (Any: past it, a key is a str or None to mypy)
_HEADER_KEYS: dict[bytes, str | None] = {b"content-length": "CONTENT_LENGTH", b"content-type": "CONTENT_TYPE"}
_HEADER_KEYS_MAX = 1024

# The compiled loop over the header fields (shared/_environ.c), where it was built and is not turned off.
_fill_headers: (
    Callable[[dict[str, Any], Any, dict[bytes, str | None], Callable[[bytes], str | None], int, type], bool] | None
) = None
# The whole of `build_environ` for a scope of the common shape, compiled (None: not of that shape).
_build: Callable[..., dict[str, Any] | None] | None = None
# The same from the compiled request parser's tuple, for a request whose scope is not made (None: from the scope).
_build_parsed: Callable[..., dict[str, Any] | None] | None = None
if native.enabled():
    try:
        from corral.shared._environ import build as _build
        from corral.shared._environ import build_parsed as _build_parsed
        from corral.shared._environ import fill_headers as _fill_headers
    except ImportError:  # not built (no compiler at install): the loop in Python
        _fill_headers = _build = _build_parsed = None


def _header_key(name: bytes) -> str | None:
    text = name.decode("latin-1").lower()
    if text == "content-length" or text == "content-type":
        key: str | None = text.upper().replace("-", "_")
    elif "_" in text:
        key = None
    else:
        key = "HTTP_" + text.upper().replace("-", "_")
    if len(_HEADER_KEYS) < _HEADER_KEYS_MAX:
        _HEADER_KEYS[name] = key
    return key


def native_string(text: str) -> str:
    """A PEP 3333 "native string": the UTF-8 bytes of `text` seen as latin-1."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


class _LogStream(io.TextIOBase):
    """`wsgi.errors` when the process has no stderr: lines go to the logger."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        text_ = text.rstrip("\n")
        if text_:
            logger.error("%s", text_)
        return len(text)


_LOG_STREAM = _LogStream()
ERRORS_STREAM: Any = sys.stderr if sys.stderr is not None else _LOG_STREAM


def environ_template(root_path: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every environ of requests with this `root_path` starts from (`build_environ` copies it): every key
    in the order an environ has them, with the values no request changes (`extra`: server-specific keys such
    as wsgi.file_wrapper); the request's own keys hold None until it sets them."""
    root_path = root_path.rstrip("/") if root_path else ""
    template: dict[str, Any] = {
        "REQUEST_METHOD": None,
        "SCRIPT_NAME": native_string(root_path) if root_path else "",
        "PATH_INFO": None,
        "QUERY_STRING": None,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.input_terminated": True,
        "wsgi.errors": ERRORS_STREAM,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if extra is not None:
        template.update(extra)
    template["SERVER_NAME"] = "localhost"
    template["SERVER_PORT"] = "80"
    return template


_PLAIN = environ_template()
_PORTS: dict[int, str] = {}  # port numbers as environ strings (bounded: client ports vary)
_PORTS_MAX = 4096


#: The compiled builder and the arguments it takes after (template, scope, body, duplicate_header_limit), for a
#: server's hot path to call it without `build_environ` in between (None: not compiled or turned off). Same
#: contract as in `build_environ`: an environ, or None for a scope of another shape; raises TooManyHeaders.
NATIVE_BUILD = _build
#: The compiled builder of the environ of a request the compiled parser took, from the parser's tuple and the
#: connection's addresses and scheme (see shared/_environ.c's build_parsed; its arguments after the body and
#: the limit: NATIVE_BUILD_ARGS, then the methods' texts). None where it is not there; it returns None where the
#: environ is made from the scope.
NATIVE_BUILD_PARSED = _build_parsed
NATIVE_BUILD_ARGS: tuple[Any, ...] = (_HEADER_KEYS, _header_key, TooManyHeaders, _PORTS)


def _port(port: int) -> str:
    text = _PORTS.get(port)
    if text is None:
        text = str(port)
        if len(_PORTS) < _PORTS_MAX:
            _PORTS[port] = text
    return text


def build_environ(
    scope: dict[str, Any],
    body: Any,
    duplicate_header_limit: int = 100,
    extra: dict[str, Any] | None = None,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The environ of an http `scope` with `body` as wsgi.input; `extra` entries are added (server-specific
    keys such as wsgi.file_wrapper). Raises TooManyHeaders past `duplicate_header_limit` repeats (0: no limit).

    `template`: `environ_template(scope's root_path, extra)`, made once by a server that builds many environs
    (the copy of a prepared dict is cheaper than building its entries one by one); without it one is made."""
    if _build is not None and template is not None:
        # Compiled: the same environ in one call, or None for a scope of another shape (a root path, a path
        # that is not ASCII, a replaced stderr, odd types: the lines below then say what is wrong).
        environ = _build(
            template, scope, body, duplicate_header_limit or 0, _HEADER_KEYS, _header_key, TooManyHeaders, _PORTS
        )
        if environ is not None:
            return environ
    return build_environ_python(scope, body, duplicate_header_limit, extra, template)


def build_environ_python(
    scope: dict[str, Any],
    body: Any,
    duplicate_header_limit: int = 100,
    extra: dict[str, Any] | None = None,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`build_environ` without the compiled builder: for a caller whose own call of it (NATIVE_BUILD) declined
    the scope, and the reference the differential tests compare the compiled builder with."""
    root_path = scope.get("root_path", "")
    if template is None:
        template = environ_template(root_path, extra) if root_path or extra is not None else _PLAIN
    path = scope["path"]
    if root_path:
        root_path = root_path.rstrip("/")
        if path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("", "/"):
            path = path[len(root_path) :]
    environ = template.copy()
    environ["REQUEST_METHOD"] = scope["method"]
    environ["PATH_INFO"] = path if path.isascii() else native_string(path)
    environ["QUERY_STRING"] = scope.get("query_string", b"").decode("latin-1")
    version = scope.get("http_version", "1.1")
    if version != "1.1":
        environ["SERVER_PROTOCOL"] = "HTTP/" + version
    scheme = scope.get("scheme", "http")
    if scheme != "http":
        environ["wsgi.url_scheme"] = scheme
    environ["wsgi.input"] = body
    if ERRORS_STREAM is not sys.stderr:  # stderr replaced since the template was made (a test, a daemon)
        environ["wsgi.errors"] = sys.stderr if sys.stderr is not None else _LOG_STREAM
    server = scope.get("server")
    if server is not None:
        environ["SERVER_NAME"] = server[0]
        port = server[1]
        environ["SERVER_PORT"] = (_PORTS.get(port) or _port(port)) if port is not None else "0"
    client = scope.get("client")
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        port = client[1]
        if port is not None:
            environ["REMOTE_PORT"] = _PORTS.get(port) or _port(port)
    headers = scope.get("headers", ())
    # The compiled loop takes a limit that is an int (0 for none: asgiref's callers pass None).
    limit = duplicate_header_limit or 0
    if _fill_headers is None or not _fill_headers(environ, headers, _HEADER_KEYS, _header_key, limit, TooManyHeaders):
        fill_headers(environ, headers, duplicate_header_limit)
    return environ


def fill_headers(environ: dict[str, Any], headers: Any, duplicate_header_limit: int) -> None:
    """The request's header fields into `environ` (see the module's docstring); the compiled
    `corral.shared._environ.fill_headers` does the same for a list or tuple of (bytes, bytes) tuples."""
    repeats: dict[str, int] | None = None
    header_keys = _HEADER_KEYS
    for name, value in headers:
        key = header_keys.get(name, _MISSING)
        if key is _MISSING:
            key = _header_key(name)
        if key is None:
            continue
        value = value.decode("latin-1")
        if key in environ:
            if repeats is None:
                repeats = {}
            count = repeats[key] = repeats.get(key, 1) + 1
            if duplicate_header_limit and count > duplicate_header_limit:
                raise TooManyHeaders(f"Too many duplicate headers: {key} exceeds limit of {duplicate_header_limit}")
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            environ[key] = value
