"""What the server reports: the error and access logs, metrics (the Prometheus page, statsd) and health checks.
Where gunicorn has the same setting, the name and flag are gunicorn's.

Declared after `core` (the package's `__init__` imports them in the order the settings page and
`serve --help` list them).
"""

from __future__ import annotations

from typing import Any

from corral.shared.settings.registry import (
    _declare,
    choice,
    optional_str,
    to_str,
)

__all__ = ["url_path", "statsd_address"]


# -- logging
_declare(
    "loglevel",
    "logging",
    choice("debug", "info", "warning", "error", "critical"),
    "info",
    "The error log's level.",
    ("--log-level",),
)
_declare(
    "errorlog",
    "logging",
    to_str,
    "-",
    "Error log file; '-' is stderr.",
    ("--error-logfile", "--log-file"),
    metavar="FILE",
)
_declare(
    "logconfig",
    "logging",
    optional_str,
    None,
    "A logging.config.dictConfig file: JSON, or Python defining a dict named LOGGING (replaces the error log setup).",
    ("--log-config",),
    metavar="FILE",
)
_declare(
    "accesslog",
    "logging",
    optional_str,
    None,
    "Access log file ('-' is stdout, as in gunicorn); no access log when unset (unless --log-config "
    "configures the access logger).",
    ("--access-logfile",),
)
_declare(
    "access_log_format",
    "logging",
    to_str,
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
    "Access log format with gunicorn's atoms (the default is gunicorn's line; the duration is %(M)s in ms, "
    "%(D)s in microseconds, %(L)s in seconds; a WebSocket's close line has %(ws_close)s, %(ws_in)s, "
    "%(ws_out)s), or 'json' for one JSON object per line.",
    ("--access-logformat", "--access-log-format"),
)
_declare(
    "naming",
    "logging",
    choice("gunicorn", "corral"),
    "gunicorn",
    "Names of the loggers and statsd metrics. 'gunicorn' (the default): the error log is the logger "
    "gunicorn.error, the access log gunicorn.access, statsd sends gunicorn.requests, "
    "gunicorn.request.duration, gunicorn.workers, ..., so gunicorn's log configs and dashboards carry over. "
    "'corral': corral.error (corral.* loggers), corral.access, corral.requests, .... corral's own statsd "
    "metrics (pool, WebSockets, restarts) are corral.* either way. A HUP keeps the one the master started "
    "with.",
    metavar="gunicorn|corral",
)


# -- observability: metrics, statsd, health checks (corral.master.observe; worker/edge/health.py)


def url_path(value: Any) -> str | None:
    """An absolute URL path such as /healthz; None (unset) is off."""
    text = optional_str(value)
    if text is None:
        return None
    if not text.startswith("/") or any(c in text for c in " ?#\r\n"):
        raise ValueError(f"expected an absolute path such as /healthz (no query), got {value!r}")
    return text


def statsd_address(value: Any) -> str | None:
    """HOST:PORT (UDP) or unix:PATH (a unix datagram socket); None (unset) is off."""
    text = optional_str(value)
    if text is None:
        return None
    if text.startswith("unix:"):
        if not text[5:].removeprefix("//"):
            raise ValueError("unix: needs a path, e.g. unix:/var/run/datadog/dsd.socket")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"expected HOST:PORT (e.g. localhost:8125) or unix:PATH, got {value!r}")
    return text


_declare(
    "metrics_bind",
    "observability",
    optional_str,
    None,
    "Serve Prometheus metrics, aggregated over all workers, from the master on this address "
    "(HOST:PORT or unix:PATH; GET /metrics); off when unset.",
    ("--metrics-bind",),
    metavar="ADDRESS",
)
_declare(
    "statsd_host",
    "observability",
    statsd_address,
    None,
    "Send metrics to this statsd / DogStatsD server (HOST:PORT over UDP, or unix:PATH), from the master, "
    "once a second; off when unset.",
    ("--statsd-host",),
    metavar="ADDRESS",
)
_declare(
    "statsd_prefix",
    "observability",
    to_str,
    "",
    "Put in front of every statsd metric name, as gunicorn does (a '.' is added): --statsd-prefix app1 "
    "sends app1.gunicorn.requests. Empty by default.",
    ("--statsd-prefix",),
    metavar="PREFIX",
)
_declare(
    "dogstatsd_tags",
    "observability",
    to_str,
    "",
    "DogStatsD tags added to every statsd metric, comma-separated (e.g. env:prod,app:shop).",
    ("--dogstatsd-tags",),
    metavar="TAGS",
)
_declare(
    "health_path",
    "observability",
    url_path,
    None,
    "A path (e.g. /healthz) the worker answers itself, without the application and outside the pool: "
    "200 while it serves, 503 once it drains (stopping, replaced by a HUP); off when unset.",
    ("--health-path",),
    metavar="PATH",
)
