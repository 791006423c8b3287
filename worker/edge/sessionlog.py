"""Access-log decisions beyond gunicorn's line format: WebSocket sessions logged at close, and JSON lines.

* A WebSocket is one log line when it *ends*, not at its handshake: the handshake's `101` says nothing an
  operator needs, the session's duration, close code and bytes do. The line is the configured format with
  status 101, `%(b)s`/`%(B)s` the bytes sent, the duration atoms the session's length, and corral's atoms
  `%(ws_close)s`, `%(ws_in)s`, `%(ws_out)s` the close code and the bytes received and sent (nothing is
  appended to the format: a parser of gunicorn's line reads it too). A refused handshake (403, a denial
  response) is an ordinary HTTP line.
* `--access-log-format json`: one JSON object per line (`ts`, `remote`, `method`, `path`, `query`,
  `protocol`, `status`, `bytes`, `duration_ms`, `referer`, `user_agent`, `pid`; WebSocket sessions add
  `websocket: true`, `close_code`, `bytes_in`, `bytes_out`, `messages_in`, `messages_out`).

The access log stays off by default: at tens of thousands of requests per second per core a log line costs
about two thirds of a hello-world response (rendering and writing, see accesslog.DirectLines), and the
metrics (`--metrics-bind`, `--statsd-host`) answer "how many, how slow, which statuses" without it. Turn it
on with `--access-logfile -`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from corral.worker.edge.accesslog import AccessLog, PerSecond, make_access_log

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = ["make_request_log", "JsonAccessLog", "SessionLog", "WebSocketSession"]


class WebSocketSession:
    """What a WebSocket's close line reports (filled in by the WebSocket cycle)."""

    __slots__ = ("code", "bytes_in", "bytes_out", "messages_in", "messages_out")

    def __init__(self, code: int, bytes_in: int, bytes_out: int, messages_in: int, messages_out: int) -> None:
        self.code = code
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.messages_in = messages_in
        self.messages_out = messages_out


#: The JSON line's `ts`, formatted at most once a second.
_iso_now = PerSecond("%Y-%m-%dT%H:%M:%S%z")


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class SessionLog:
    """The text access log, with WebSocket sessions logged at close (and their 101 not at all)."""

    __slots__ = ("access", "logger")

    def __init__(self, access: Any) -> None:
        self.access = access
        self.logger = access.logger

    def __call__(self, scope: dict, status: int, nbytes: int, duration: float, headers: Any) -> None:
        if status == 101 and scope["type"] == "websocket":
            return  # logged when the session ends
        self.access(scope, status, nbytes, duration, headers)

    def websocket_closed(self, scope: dict, duration: float, session: WebSocketSession) -> None:
        self.access(scope, 101, session.bytes_out, duration, (), session)

    def flush(self) -> None:
        self.access.flush()

    def reopen(self) -> None:
        self.access.reopen()


class JsonAccessLog:
    """One JSON object per response (and per WebSocket session, at its close)."""

    __slots__ = ("logger", "access")

    def __init__(self, access: AccessLog) -> None:
        # The text log's object holds the handler and writes the lines (AccessLog.emit, accesslog.DirectLines).
        self.access = access
        self.logger = access.logger

    def flush(self) -> None:
        self.access.flush()

    @staticmethod
    def record(scope: dict, status: int, nbytes: int, duration: float) -> dict[str, Any]:
        client = scope.get("client")
        headers = scope.get("headers")
        return {
            "ts": _iso_now(),
            "remote": client[0] if client else None,
            "method": scope.get("method", "GET"),
            "path": scope.get("path"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "protocol": "HTTP/" + scope.get("http_version", "1.1"),
            "status": status,
            "bytes": nbytes,
            "duration_ms": round(duration * 1000, 3),
            "referer": _header(headers, b"referer"),
            "user_agent": _header(headers, b"user-agent"),
            "pid": os.getpid(),
        }

    def __call__(self, scope: dict, status: int, nbytes: int, duration: float, headers: Any) -> None:
        if status == 101 and scope["type"] == "websocket":
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        try:
            self.access.emit(json.dumps(self.record(scope, status, nbytes, duration), separators=(",", ":")))
        except Exception:
            logging.getLogger("corral.worker.sessionlog").exception("failed to render the access log line")

    def websocket_closed(self, scope: dict, duration: float, session: WebSocketSession) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        record = self.record(scope, 101, session.bytes_out, duration)
        record.update(
            websocket=True,
            close_code=session.code,
            bytes_in=session.bytes_in,
            bytes_out=session.bytes_out,
            messages_in=session.messages_in,
            messages_out=session.messages_out,
        )
        try:
            self.access.emit(json.dumps(record, separators=(",", ":")))
        except Exception:
            logging.getLogger("corral.worker.sessionlog").exception("failed to render the access log line")

    def reopen(self) -> None:
        self.access.reopen()


def make_request_log(settings: Settings) -> Any:
    """The access-log hook for `settings` (None when there is no access log): text or JSON lines."""
    access = make_access_log(settings)  # the handler (file / stream), and the text format's renderer
    if access is None:
        return None
    if settings.access_log_format.strip().lower() == "json":
        return JsonAccessLog(access)
    return SessionLog(access)
