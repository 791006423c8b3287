"""gunicorn-style access log, compiled once from the format string.

The format uses gunicorn's atoms (`%(h)s`, `%(r)s`, `%({user-agent}i)s`, ...), and its default is gunicorn's
line, byte for byte. At construction the format is scanned for the atoms it names and a list of extractor
functions is built, so each request computes only those atoms. When access logging is off the server holds
`access_log=None` and does nothing at all.

As in gunicorn, a line is logged as `logger.info(format, atoms)`: the record's `args` is the atoms mapping
(a formatter that reads `record.args["h"]` works), and an atom the format does not name is computed when a
formatter asks for it. String values have `"` escaped as `\\"` (gunicorn's SafeAtoms), so a quoted field
stays one field.

corral's own atoms, beside gunicorn's: `%(ws_close)s`, `%(ws_in)s`, `%(ws_out)s` (a WebSocket session's
close code and bytes received and sent, on its line at close; '-' on other lines).

Differences from gunicorn, on purpose:
* `%({VAR}e)s` reads the process environment (`os.environ`); there is no WSGI environ for ASGI requests.
* `%(h)s` is the client address after trusted proxy headers (--forwarded-allow-ips), and '-' for a
  unix-socket peer (gunicorn gives the socket peer's address, an empty one on a unix socket).
* an unknown atom renders as '-' (as gunicorn's SafeAtoms does).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import re
import sys
import time
from asyncio.events import _get_running_loop
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = [
    "AccessLog",
    "DirectLines",
    "PerSecond",
    "make_access_log",
    "ReopenableFileHandler",
    "reopen_file",
    "ACCESS_LOGGER_NAME",
    "access_logger_name",
    "GUNICORN_ACCESS_FORMAT",
]

#: The access logger with --naming corral; gunicorn's name, "gunicorn.access", is the default.
ACCESS_LOGGER_NAME = "corral.access"
GUNICORN_ACCESS_LOGGER = "gunicorn.access"

#: gunicorn's default access_log_format (the Apache combined log format).
GUNICORN_ACCESS_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def access_logger_name(naming: str) -> str:
    """The logger access lines go to: gunicorn's "gunicorn.access", or "corral.access" (--naming corral)."""
    return ACCESS_LOGGER_NAME if naming == "corral" else GUNICORN_ACCESS_LOGGER


Headers = list[tuple[bytes, bytes]]
# (scope, status, response_bytes, duration_s, response_headers, websocket_session) -> the atom's value
Extractor = Callable[[dict, int, int, float, Headers, Any], Any]

_ATOM = re.compile(r"%%|%\(([^)]*)\)")


class _Atoms(dict):
    """The atoms of one line, for `format % atoms` and as the log record's `args`: those the format names
    are computed up front; any other is computed when asked (a formatter reading `record.args`), and one
    that is no atom renders as '-' (gunicorn's SafeAtoms)."""

    __slots__ = ("request",)
    request: tuple[Any, ...]  # (scope, status, bytes, duration, response headers, session): for __missing__

    def __missing__(self, key: str) -> Any:
        if key.startswith("{"):
            lowered = key.lower()
            if lowered != key and lowered in self:
                return self[lowered]
        extractor = _extractor(key)
        request = getattr(self, "request", None)
        if extractor is None or request is None:
            return "-"
        try:
            value = _escaped(extractor(*request))
        except Exception:  # noqa: BLE001 - a log line must never break a response
            return "-"
        self[key] = value
        return value


def _escaped(value: Any) -> Any:
    """gunicorn's SafeAtoms: a `"` in a string value is written `\\"`."""
    if value.__class__ is str and '"' in value:
        return value.replace('"', '\\"')
    return value


class _Probe(dict):
    __slots__ = ()

    def __missing__(self, key: str) -> int:
        return 0


def _header(headers: Any, name: bytes) -> str:
    """A header's value (several joined with ', '), or '-'."""
    found = None
    for key, value in headers or ():
        if key.lower() == name:
            text = value.decode("latin-1")
            found = text if found is None else found + ", " + text
    return "-" if found is None else found


def _user(scope: dict, *_: Any) -> str:
    """The user name of HTTP Basic credentials (gunicorn's %(u)s), or '-'."""
    for key, value in scope.get("headers") or ():
        if key.lower() == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() != b"basic" or not credentials:
                return "-"
            try:
                return base64.b64decode(credentials.strip()).split(b":", 1)[0].decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return "-"
    return "-"


def _remote(scope: dict, *_: Any) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


def _method(scope: dict, *_: Any) -> str:
    # WebSocket scopes have no method; their handshake is a GET.
    return scope.get("method", "GET")


def _protocol(scope: dict, *_: Any) -> str:
    return "HTTP/" + scope.get("http_version", "1.1")


def _query(scope: dict, *_: Any) -> str:
    return scope.get("query_string", b"").decode("latin-1")


def _target(scope: dict) -> str:
    """The request target as sent: raw_path (still percent-encoded) plus the query string."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("path", "/")
    query = scope.get("query_string")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _request_line(scope: dict, *_: Any) -> str:
    return f"{_method(scope)} {_target(scope)} {_protocol(scope)}"


class PerSecond:
    """The local time as `time.strftime(format)` gives it, formatted at most once a second: a call (any
    arguments, as an extractor's) returns the text of the current second."""

    __slots__ = ("format", "stamp")

    def __init__(self, format: str) -> None:
        self.format = format
        # (second, formatted) swapped as one tuple, so a thread never pairs one second with another's text.
        self.stamp: tuple[int, str] = (-1, "")

    def __call__(self, *_: Any) -> str:
        second = int(time.time())
        cached = self.stamp
        if cached[0] == second:
            return cached[1]
        text = time.strftime(self.format, time.localtime(second))
        self.stamp = (second, text)
        return text


#: `[10/Oct/2000:13:55:36 -0700]`, gunicorn's %(t)s.
_now = PerSecond("[%d/%b/%Y:%H:%M:%S %z]")


def _dash(*_: Any) -> str:
    return "-"


def _micros(duration: float) -> int:
    return int(duration * 1_000_000)


_SIMPLE: dict[str, Extractor] = {
    "h": _remote,
    "l": lambda *_: "-",
    "u": _user,
    "t": _now,
    "r": _request_line,
    "m": _method,
    "U": lambda scope, *_: scope.get("path", "-"),
    "q": _query,
    "H": _protocol,
    "s": lambda scope, status, *_: status,
    "B": lambda scope, status, sent, *_: sent,
    "b": lambda scope, status, sent, *_: str(sent),  # gunicorn's: "0" for no body, not CLF's "-"
    "f": lambda scope, *_: _header(scope.get("headers"), b"referer"),
    "a": lambda scope, *_: _header(scope.get("headers"), b"user-agent"),
    "T": lambda scope, status, sent, duration, *_: _micros(duration) // 1_000_000,
    "M": lambda scope, status, sent, duration, *_: _micros(duration) // 1_000,
    "D": lambda scope, status, sent, duration, *_: _micros(duration),
    "L": lambda scope, status, sent, duration, *_: "%d.%06d" % divmod(_micros(duration), 1_000_000),
    "p": lambda *_: f"<{os.getpid()}>",  # gunicorn's rendering
    # corral's own: a WebSocket session's close code and bytes, on its line at close ('-' elsewhere)
    "ws_close": lambda scope, status, sent, duration, headers, session: "-" if session is None else session.code,
    "ws_in": lambda scope, status, sent, duration, headers, session: "-" if session is None else session.bytes_in,
    "ws_out": lambda scope, status, sent, duration, headers, session: "-" if session is None else session.bytes_out,
}


#: Atoms whose values never hold a '"' (numbers, the date, the pid): not scanned for one.
_NO_QUOTES = frozenset(("l", "t", "s", "B", "b", "T", "M", "D", "L", "p", "ws_close", "ws_in", "ws_out"))


def _extractor(atom: str) -> Extractor | None:
    if atom in _SIMPLE:
        return _SIMPLE[atom]
    if len(atom) >= 3 and atom[0] == "{" and atom[-2] == "}":
        name, kind = atom[1:-2], atom[-1]
        if kind == "i":
            wanted = name.lower().encode("latin-1")
            return lambda scope, *_: _header(scope.get("headers"), wanted)
        if kind == "o":
            wanted = name.lower().encode("latin-1")
            return lambda scope, status, sent, duration, headers, *_: _header(headers, wanted)
        if kind == "e":
            return lambda *_: os.environ.get(name, os.environ.get(name.upper(), "-"))
    return None


class DirectLines:
    """Access lines written straight to the stream of the handler corral installed, skipping `logging`'s
    record, caller lookup and per-line lock and flush (measured: 12.1 µs a line through `logger.info`, 3.3
    of them rendering). A loop turn's lines go out together at its end, one write and one flush, as
    `logging` would have written them one by one (the formatter is "%(message)s"): lines are never held past
    the turn that made them (`flush`, also at a reopen and when the worker stops); a worker killed mid-turn
    loses that turn's lines. `usable` says whether the logger is still as corral set it up; when a hook or a
    dictConfig gave it other handlers, filters or a formatter, lines go through `logging` again."""

    __slots__ = ("handler", "formatter", "only", "lines", "loop", "owner")

    #: Lines held at most before they are written, whatever the turn (a bound on memory, not a delay).
    MAX_LINES = 256

    def __init__(self, handler: logging.StreamHandler) -> None:
        self.handler = handler
        self.formatter = handler.formatter
        self.only = [handler]
        self.lines: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # the worker's loop, and its thread's ident (write)
        self.owner = -1

    def usable(self, logger: logging.Logger) -> bool:
        handler = self.handler
        return (
            logger.handlers == self.only
            and not logger.filters
            and not handler.filters
            and handler.formatter is self.formatter
            and handler.level <= logging.INFO
            and logger.isEnabledFor(logging.INFO)
        )

    def write(self, line: str) -> None:
        # The loop's thread is recognised by its ident, not by asking asyncio for the running loop: that costs a
        # getpid() system call on Python 3.11, and a WSGI application run on the loop's thread has it hidden.
        if get_ident() != self.owner:
            loop = _get_running_loop()
            if loop is None:  # not the worker's loop thread: written now, alone (the held lines are the loop's)
                self._write(line + "\n", 1)
                return
            self.loop, self.owner = loop, get_ident()  # the first line written on the loop's thread
        lines = self.lines
        lines.append(line)
        if len(lines) == 1:
            self.loop.call_soon(self.flush)  # type: ignore[union-attr]  # set with owner
        elif len(lines) >= self.MAX_LINES:
            self.flush()

    def flush(self) -> None:
        lines = self.lines
        if lines:
            self.lines = []
            self._write("\n".join(lines) + "\n", len(lines))

    def _write(self, text: str, count: int) -> None:
        handler = self.handler
        handler.acquire()
        try:
            stream = handler.stream
            if stream is not None:
                stream.write(text)
                stream.flush()
        except Exception:  # as logging.Handler.handleError: a log line must never break serving
            logging.getLogger("corral.worker.accesslog").exception("could not write %d access line(s)", count)
        finally:
            handler.release()


class AccessLog:
    """One access-log line per response, rendered from a gunicorn format string."""

    __slots__ = ("format", "logger", "_extractors", "direct", "_line_format", "_line_parts")

    def __init__(self, format: str, logger: logging.Logger, direct: DirectLines | None = None) -> None:
        self.format = format
        self.logger = logger
        self.direct = direct  # corral's own handler: lines written without logging's records (see DirectLines)
        extractors: dict[str, Extractor] = {}
        for match in _ATOM.finditer(format):
            atom = match.group(1)
            if atom is None or atom in extractors:
                continue
            extractor = _extractor(atom)
            if extractor is not None:  # unknown atoms are left to _Atoms ('-')
                extractors[atom] = extractor
        # (atom, extractor, whether its value may hold a '"' to escape: request data may, numbers and dates not)
        self._extractors = tuple((atom, extract, atom not in _NO_QUOTES) for atom, extract in extractors.items())
        # The line itself is rendered from a positional copy of the format (`%(h)s` -> `%s`) and a tuple of
        # values in the format's order: no mapping per line (the atoms mapping is made only for `logging`'s
        # record, whose formatters may read it). An unknown atom is '-', as in the mapping.
        order: list[str] = []

        def positional(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return "%%"
            order.append(match.group(1))
            return "%"

        self._line_format = _ATOM.sub(positional, format)
        self._line_parts = tuple((extractors.get(atom, _dash), atom not in _NO_QUOTES) for atom in order)
        # Fail at startup, not on the first request, if the format itself is broken (0 suits %s and %d).
        format % _Probe()
        self._line_format % ((0,) * len(order))

    def atoms(
        self,
        scope: dict,
        status: int,
        response_bytes: int,
        duration_s: float,
        response_headers: Headers,
        session: Any = None,
    ) -> _Atoms:
        """The format's atoms for one response (others computed on demand)."""
        atoms = _Atoms()
        atoms.request = (scope, status, response_bytes, duration_s, response_headers, session)
        for atom, extract, escape in self._extractors:
            value = extract(scope, status, response_bytes, duration_s, response_headers, session)
            atoms[atom] = _escaped(value) if escape else value
        return atoms

    def render(
        self,
        scope: dict,
        status: int,
        response_bytes: int,
        duration_s: float,
        response_headers: Headers,
        session: Any = None,
    ) -> str:
        """The log line for one response."""
        return self._line_format % tuple(
            [
                _escaped(value) if escape else value
                for extract, escape in self._line_parts
                for value in (extract(scope, status, response_bytes, duration_s, response_headers, session),)
            ]
        )

    def __call__(
        self,
        scope: dict,
        status: int,
        response_bytes: int,
        duration_s: float,
        response_headers: Headers,
        session: Any = None,
    ) -> None:
        direct = self.direct
        if direct is not None and direct.usable(self.logger):
            try:
                direct.write(self.render(scope, status, response_bytes, duration_s, response_headers, session))
            except Exception:  # a log line must never break a response
                logging.getLogger("corral.worker.accesslog").exception("failed to render the access log line")
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        try:
            atoms = self.atoms(scope, status, response_bytes, duration_s, response_headers, session)
            if atoms:
                self.logger.info(self.format, atoms)  # gunicorn's call: the record's args are the atoms
            else:  # no atom at all: logging would take an empty mapping for no arguments
                self.logger.info(self.format % atoms)  # noqa: G002 - formatted here: see the line above
        except Exception:  # a log line must never break a response
            logging.getLogger("corral.worker.accesslog").exception("failed to render the access log line")

    def emit(self, line: str) -> None:
        """A line rendered elsewhere (the JSON access log's), written the same way as this log's own."""
        direct = self.direct
        if direct is not None and direct.usable(self.logger):
            direct.write(line)
        else:
            self.logger.info(line)

    def flush(self) -> None:
        """Write the lines held for the end of this loop turn now (the worker stops, or a reopen)."""
        if self.direct is not None:
            self.direct.flush()

    def reopen(self) -> None:
        """Reopen log files (after logrotate moved them; the worker calls this on SIGUSR1)."""
        self.flush()
        for handler in self.logger.handlers:
            reopen = getattr(handler, "reopen", None)
            if reopen is not None:
                reopen()


def reopen_file(handler: logging.FileHandler) -> None:
    """Reopen a file handler's file in place (after log rotation moved it)."""
    handler.acquire()
    try:
        if handler.stream is not None:
            handler.stream.close()
        handler.stream = handler._open()
    finally:
        handler.release()


class ReopenableFileHandler(logging.FileHandler):
    """An append-mode file handler that can reopen its file in place (for log rotation)."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename, mode="a", encoding="utf-8", delay=False)

    def reopen(self) -> None:
        reopen_file(self)


def make_access_log(settings: Settings) -> AccessLog | None:
    """The access log configured by `settings.accesslog` / `settings.access_log_format`, or None when off.

    The lines go to the logger "gunicorn.access" ("corral.access" with --naming corral). '-' is stdout
    (gunicorn's). With --log-config and no --access-logfile, the log is on when the dictConfig gave that logger
    a handler (master/observe/logs.py hands it the other name's, when the config named that one), as in
    gunicorn; such a config's handlers are then the only ones (`-` does not bypass it)."""
    target = settings.accesslog
    logger = logging.getLogger(access_logger_name(getattr(settings, "naming", "gunicorn")))
    configured = [h for h in logger.handlers if not getattr(h, "_corral_access", False)]
    if (getattr(settings, "logconfig", None) or getattr(settings, "logconfig_dict", None)) and configured:
        # The dictConfig decides where access lines go (its handlers and formatter, for '-' too).
        return AccessLog(settings.access_log_format, logger)
    if not target:
        return None
    for name in (ACCESS_LOGGER_NAME, GUNICORN_ACCESS_LOGGER):  # rebuilding (a reload): drop what we installed
        other = logging.getLogger(name)
        for old in list(other.handlers):
            if getattr(old, "_corral_access", False):
                other.removeHandler(old)
                old.close()
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = ReopenableFileHandler(target)
    handler._corral_access = True  # type: ignore[union-attr]  # our mark, read back with getattr above
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # access lines go only where --access-logfile says
    return AccessLog(settings.access_log_format, logger, DirectLines(handler))
