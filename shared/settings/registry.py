"""One declarative registry of settings: each is declared once, with its type, default, validation and help.

The CLI flags, the config-file keys and the `CORRAL_*` environment variables are all generated from these
declarations (the master builds its click options from `REGISTRY`). Where gunicorn has the same setting, the
name and flag are gunicorn's, so a gunicorn command line or config file carries over.

Precedence, resolved in one place (`resolve`): command line > environment > config file > default.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

__all__ = [
    "Setting",
    "SettingError",
    "Settings",
    "REGISTRY",
    "resolve",
    "env_var_name",
    "from_env",
    "unknown_env",
]


class SettingError(ValueError):
    """A bad setting name or value; `str()` is the one line a user sees."""


# ---------------------------------------------------------------------------- converters
# Each takes a value from the CLI/env (a string) or from a config file (any Python value) and returns the
# typed value, raising ValueError with a message that says what is expected.


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false (or 1/0, yes/no, on/off)")


def _number(kind: type, minimum: float | None) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got a boolean")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"must be >= {minimum:g}, got {value!r}")
        return number

    convert.__name__ = f"{kind.__name__}>={minimum}"
    return convert


positive_int = _number(int, 1)
non_negative_int = _number(int, 0)
non_negative_float = _number(float, 0)
positive_float = _number(float, 1e-9)


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def optional_str(value: Any) -> str | None:
    if value is None:
        return None
    return to_str(value) or None


def choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text

    return convert




def str_list(value: Any) -> tuple[str, ...]:
    """A comma-separated string, or a list/tuple of strings."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = [to_str(v) for v in value]
    else:
        raise ValueError(f"expected a comma-separated string or a list, got {type(value).__name__}")
    return tuple(item.strip() for item in items if item.strip())


def size(value: Any) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024); 0 means off."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes (e.g. 1048576, 512K, 10M), got a boolean")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        factor = 1
        if text and text[-1] in "KMG":
            factor = 1024 ** ("KMG".index(text[-1]) + 1)
            text = text[:-1]
        try:
            number = int(float(text) * factor)
        except ValueError:
            raise ValueError(f"expected a size in bytes (e.g. 1048576, 512K, 10M), got {value!r}") from None
    if number < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return number


def umask(value: Any) -> int:
    """A file-mode creation mask, read as gunicorn reads it: an int, or a string where a leading 0 or 0o means
    octal ('007', '0o22'), 0x hexadecimal, anything else decimal ('18' is 0o22)."""
    if isinstance(value, bool):
        raise ValueError("expected an octal umask such as 007 or 0o22, got a boolean")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if len(text) > 1 and text[0] == "0" and text[1].isdigit():
            text = "0o" + text[1:]
        try:
            number = int(text, 0)
        except ValueError:
            raise ValueError(f"expected an octal umask such as 007 or 0o22, got {value!r}") from None
    if not 0 <= number <= 0o777:
        raise ValueError(f"must be between 0 and 0o777, got {value!r}")
    return number


def user_id(value: Any) -> int | None:
    """A user name or numeric uid; None (unset) keeps the current user."""
    if value is None or value == "":
        return None
    import pwd

    if isinstance(value, int) and not isinstance(value, bool) or str(value).isdigit():
        return int(value)
    try:
        return pwd.getpwnam(str(value)).pw_uid
    except KeyError:
        raise ValueError(f"no such user {value!r}") from None


def group_id(value: Any) -> int | None:
    """A group name or numeric gid; None (unset) keeps the current group."""
    if value is None or value == "":
        return None
    import grp

    if isinstance(value, int) and not isinstance(value, bool) or str(value).isdigit():
        return int(value)
    try:
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise ValueError(f"no such group {value!r}") from None


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Setting:
    """One setting: the single place its name, type, default, flags and help are declared."""

    name: str
    section: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    multiple: bool = False  # a repeatable CLI flag collecting a list (e.g. --bind)
    is_flag: bool = False  # a CLI switch taking no value
    render: Callable[[Any], str] | None = None  # how a value is written back (e.g. a umask in octal)
    cli: bool = True  # False: config file and environment only (gunicorn's server hooks have no flag)

    def show(self, value: Any) -> str:
        """`value` as a user would write it on the command line or in CORRAL_* (it parses back)."""
        if self.render is not None and value is not None:
            return self.render(value)
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        if value is None:
            return ""
        return str(value)

    @property
    def env(self) -> str:
        return env_var_name(self.name)

    def parse(self, value: Any, source: str = "") -> Any:
        """Convert and validate; raises SettingError naming the setting and the source."""
        try:
            if self.multiple:
                values = value if isinstance(value, (list, tuple)) else str_list(value)
                return tuple(self.convert(v) for v in values)
            return self.convert(value)
        except ValueError as exc:
            where = f" (from {source})" if source else ""
            raise SettingError(f"invalid value for {self.cli_name}{where}: {exc}") from None

    @property
    def cli_name(self) -> str:
        long_flags = [f for f in self.flags if f.startswith("--")]
        return long_flags[0] if long_flags else self.name


REGISTRY: dict[str, Setting] = {}


def env_var_name(name: str) -> str:
    return "CORRAL_" + name.upper()


def _declare(
    name: str,
    section: str,
    convert: Callable[[Any], Any],
    default: Any,
    help: str,
    flags: Iterable[str] = (),
    **extra: Any,
) -> None:
    if name in REGISTRY:
        raise RuntimeError(f"setting {name!r} declared twice")
    flags = tuple(flags) or ("--" + name.replace("_", "-"),)
    REGISTRY[name] = Setting(name, section, convert, default, help, flags, **extra)


# -- server sockets (read by the master)
_declare("bind", "server", to_str, ("127.0.0.1:8000",),
         "Address to listen on: HOST:PORT, [::1]:PORT, unix:PATH or fd://N; repeat for several. [::]:PORT is "
         "dual-stack (IPv4 clients too), as gunicorn's, unless an IPv4 address on the same port is also bound.",
         ("-b", "--bind"), metavar="ADDRESS", multiple=True)
_declare("backlog", "server", positive_int, 2048, "Maximum number of pending connections per socket.")
_declare("reuse_port", "server", to_bool, False,
         "Each worker binds its own SO_REUSEPORT socket instead of sharing the master's.", is_flag=True)

# -- workers and the pool
_declare("workers", "worker", positive_int, 1, "Number of worker processes.", ("-w", "--workers"))
_declare("threads", "worker", positive_int, 10,
         "Threads in each worker's pool (WSGI requests and sync_to_async(thread_sensitive=False)).")
_declare("max_applications", "worker", positive_int, 1000,
         "Total application instances (requests + WebSockets) across all workers; each worker gets its share.")
_declare("pool_full", "worker", choice("wait", "503"), "wait",
         "When a worker's pool is full: 'wait' stops accepting and reading until a slot frees "
         "(backpressure); '503' answers new requests with 503 at once.")
_declare("interface", "worker", choice("auto", "asgi3", "asgi2", "wsgi"), "auto",
         "Application interface; auto detects ASGI 3, ASGI 2 (double callable) and WSGI.")
_declare("factory", "worker", to_bool, False,
         "Treat the application attribute as a factory: call it with no arguments to get the app "
         "(uvicorn's --factory; 'module:create_app()' does the same).", is_flag=True)
_declare("lifespan", "worker", choice("auto", "on", "off"), "auto",
         "ASGI lifespan protocol: auto runs it if the app supports it, on requires it, off skips it.")
_declare("wsgi_body_buffer", "worker", size, 65536,
         "WSGI request bodies up to this size are read whole before the app gets a thread (a stalled "
         "upload then holds no thread); larger ones are streamed to wsgi.input. 0 streams every body.")
_declare("root_path", "worker", to_str, "", "ASGI root_path (WSGI SCRIPT_NAME) when mounted below a prefix.")
_declare("graceful_timeout", "worker", non_negative_float, 30.0,
         "Seconds a stopping worker lets in-flight requests finish before it closes them.")

_declare("drain_delay", "worker", non_negative_float, 0.0,
         "Seconds a stopping server (TERM) keeps serving and accepting while its health path (--health-path) "
         "answers 503, before it stops accepting: load balancers take the host out of rotation first (the "
         "Kubernetes preStop pattern, inside the server); 0 is off. HUP does not drain: new workers take "
         "new connections at once.")
_declare("max_requests", "worker", non_negative_int, 0,
         "Requests a worker serves before the master replaces it (new worker first); 0 is off.")
_declare("max_requests_jitter", "worker", non_negative_int, 0,
         "Random 0..N added to --max-requests per worker, so workers do not all restart at once.")
_declare("max_worker_memory", "worker", size, 0,
         "Worker resident memory (K/M/G suffixes allowed) above which the master replaces it (new worker "
         "first); checked every few seconds; 0 is off.")
_declare("timeout", "worker", non_negative_float, 30.0,
         "Seconds a worker's event loop may go without a heartbeat before the master dumps its stack and "
         "kills it; 0 disables the watchdog.", ("-t", "--timeout"))
_declare("preload_app", "worker", to_bool, False,
         "Import the application in the master before forking: workers start in milliseconds and share "
         "memory; HUP then reloads settings but not the code (use USR2).", ("--preload",), is_flag=True)
_declare("gc_freeze", "worker", to_bool, True,
         "Once the application is loaded (and its lifespan started), move what the worker holds into the "
         "garbage collector's permanent generation (gc.freeze()): collections then scan what requests "
         "create, not the application and its imports, whose full passes were the long tail of response "
         "times. With --preload the master does it before forking, which also keeps the pages shared.")
_declare("worker_boot_retries", "worker", positive_int, 3,
         "Consecutive worker boot failures (app import error, lifespan startup failed), with no worker "
         "serving, after which the master stops with exit code 5 instead of forking again.")

# -- the master process
_declare("pidfile", "master", optional_str, None,
         "Write the master's pid to this file (refused while a live process owns it); removed at exit. "
         "`serve status --pid FILE` reads it.", ("-p", "--pid"), metavar="FILE")
_declare("proc_name", "master", optional_str, None,
         "Name shown in process titles (`corral: master [NAME]`); defaults to the application spec.",
         ("-n", "--name"), metavar="NAME")
_declare("user", "master", user_id, None, "Workers switch to this user (name or uid) after binding.",
         ("-u", "--user"), metavar="USER")
_declare("group", "master", group_id, None, "Workers switch to this group (name or gid) after binding.",
         ("-g", "--group"), metavar="GROUP")
_declare("umask", "master", umask, 0,
         "Mode mask of the unix socket files the master binds, as gunicorn's: 0 (the default) makes them 0777, "
         "so a proxy running as another user can connect; 007 keeps them to the owner and the group (0770). "
         "A leading 0 or 0o means octal. Log files follow the process's own umask; the pid file is 0644.",
         ("-m", "--umask"), metavar="UMASK", render=lambda mask: f"0o{mask:03o}")
_declare("chdir", "master", optional_str, None,
         "Change to this folder before loading the application.", ("--chdir",), metavar="DIR")

# -- HTTP limits and timeouts (the worker's defence against bad or slow clients)
_declare("keepalive", "http", non_negative_float, 5.0,
         "Seconds an idle keep-alive connection is kept open; 0 closes after each response.",
         ("--keep-alive",))
_declare("header_timeout", "http", positive_float, 10.0,
         "Seconds a client gets to send a complete request head (slowloris guard): 408 then close.")
_declare("limit_request_line", "http", non_negative_int, 8190,
         "Maximum size of the request line in bytes (414 when exceeded); 0 is gunicorn's 'unlimited': up to "
         "1 MiB, a bound on the memory one request head takes.")
_declare("limit_request_fields", "http", non_negative_int, 100,
         "Maximum number of request header fields (431); 0 is gunicorn's maximum, 32768.")
_declare("limit_request_field_size", "http", non_negative_int, 8190,
         "Maximum size of the request head's header block in bytes (431 when exceeded); 0 is gunicorn's "
         "'unlimited': up to 1 MiB.")
_declare("limit_request_body", "http", size, 0,
         "Maximum request body size in bytes (K/M/G suffixes allowed); 413 when exceeded; 0 is off.")
_declare("body_timeout", "http", positive_float, 30.0,
         "Seconds a request body may go without a byte while the server is reading it (a client that "
         "stalls in its upload holds an application slot): 408 then close. Time the application spends "
         "not reading does not count.")
_declare("min_request_body_rate", "http", non_negative_int, 240,
         "Bytes per second a request body must average while the application waits for it, once it has "
         "waited --min-rate-grace (Kestrel's MinRequestBodyDataRate): slower, the client gets 408 and the "
         "connection closes. While the worker's pool is full the grace is one second. 0 is off.")
_declare("min_response_rate", "http", non_negative_int, 240,
         "Bytes per second a client must take a response at while the server has bytes waiting for it, once "
         "it has waited --min-rate-grace (Kestrel's MinResponseDataRate): slower, the connection is reset. "
         "While the worker's pool is full the grace is one second. TCP connections only; 0 is off.")
_declare("min_rate_grace", "http", positive_float, 5.0,
         "Seconds a request body or a response may wait on its client before its minimum rate "
         "(--min-request-body-rate, --min-response-rate) applies; the rate is then its average over the time "
         "it waited.")
_declare("min_chunk_size", "http", non_negative_int, 64,
         "Smallest average chunk size in bytes a chunked request body must keep once past its first 1024 "
         "chunks (each chunk costs CPU whatever its size): 400 then close; 0 is off.")
_declare("max_pipelined_requests", "http", positive_int, 16,
         "Requests parsed ahead of the one being answered on a connection (HTTP/1.1 pipelining); beyond "
         "it the connection's further bytes wait unparsed and it stops reading until answers go out.")
_declare("write_buffer_limit", "http", size, 64 * 1024,
         "Per-connection write buffer high-water mark in bytes: a response `send` above it waits until the "
         "client reads (backpressure). A worker buffers at most its share of --max-applications times this, "
         "plus what single messages exceed it by.")
_declare("max_requests_per_connection", "http", non_negative_int, 1000,
         "Requests served on one keep-alive connection before it is closed; 0 is unlimited.")
_declare("server_header", "http", to_bool, True, "Send a 'server: corral' header.")
_declare("date_header", "http", to_bool, True, "Send a 'date' header.")
_declare("forwarded_allow_ips", "http", str_list, ("127.0.0.1", "::1"),
         "Peers whose X-Forwarded-* and Forwarded headers are trusted: IPs or networks, 'unix' for "
         "unix-socket peers, '*' for all.")

_declare("proxy_protocol", "http", to_bool, False,
         "Read a PROXY protocol header (v1 or v2, HAProxy's send-proxy / send-proxy-v2, AWS NLB) at the start "
         "of connections from --proxy-allow-ips peers: the client address (and TLS details) come from it.",
         is_flag=True)
_declare("proxy_allow_ips", "http", str_list, ("127.0.0.1", "::1"),
         "Peers that may send a PROXY protocol header: IPs or networks, 'unix', '*'. A header from any other "
         "peer closes the connection.", ("--proxy-allow-from", "--proxy-allow-ips"))
_declare("forwarded_headers", "http", choice("auto", "forwarded", "x-forwarded"), "auto",
         "Which proxy headers a trusted peer may use: 'forwarded' (RFC 7239 only), 'x-forwarded' "
         "(X-Forwarded-For/-Proto/-Host only) or 'auto' (X-Forwarded-* when present, else Forwarded).")

# -- WebSocket (RFC 6455): safe defaults - every limit is on, and every open socket is pinged
_declare("ws_max_size", "websocket", size, 16 * 1024 * 1024,
         "Largest incoming WebSocket message in bytes (K/M/G suffixes allowed), after decompression; a "
         "bigger one closes the socket with 1009 (0: no limit, not advised). Memory per socket stays bounded: "
         "reading stops while the queued messages pass this size (or --ws-max-queue messages).")
_declare("ws_ping_interval", "websocket", non_negative_float, 20.0,
         "Seconds between the keepalive pings the server sends on each open WebSocket; 0 sends none.")
_declare("ws_ping_timeout", "websocket", non_negative_float, 20.0,
         "Seconds a peer gets to answer a ping (and to answer a close frame) before the socket is closed "
         "(1011); 0 waits forever for pongs (a close is still given up on after 10 s).")
_declare("ws_per_message_deflate", "websocket", to_bool, True,
         "Offer permessage-deflate compression (RFC 7692) to WebSocket clients that ask for it.")
_declare("ws_max_queue", "websocket", positive_int, 32,
         "Incoming WebSocket messages queued for an application that lags; at this many the server stops "
         "reading the socket until the application catches up (backpressure).")
_declare("ws_write_limit", "websocket", size, 64 * 1024,
         "Per-socket write buffer high-water mark in bytes: a `websocket.send` above it waits until the "
         "peer has read enough (backpressure).")

# -- logging
_declare("loglevel", "logging", choice("debug", "info", "warning", "error", "critical"), "info",
         "The error log's level.", ("--log-level",))
_declare("errorlog", "logging", to_str, "-", "Error log file; '-' is stderr.", ("--error-logfile", "--log-file"),
         metavar="FILE")
_declare("logconfig", "logging", optional_str, None,
         "A logging.config.dictConfig file: JSON, or Python defining a dict named LOGGING (replaces the "
         "error log setup).", ("--log-config",), metavar="FILE")
_declare("accesslog", "logging", optional_str, None,
         "Access log file ('-' is stdout, as in gunicorn); no access log when unset (unless --log-config "
         "configures the access logger).", ("--access-logfile",))
_declare("access_log_format", "logging", to_str,
         '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
         "Access log format with gunicorn's atoms (the default is gunicorn's line; the duration is %(M)s in ms, "
         "%(D)s in microseconds, %(L)s in seconds; a WebSocket's close line has %(ws_close)s, %(ws_in)s, "
         "%(ws_out)s), or 'json' for one JSON object per line.",
         ("--access-logformat", "--access-log-format"))
_declare("naming", "logging", choice("gunicorn", "corral"), "gunicorn",
         "Names of the loggers and statsd metrics. 'gunicorn' (the default): the error log is the logger "
         "gunicorn.error, the access log gunicorn.access, statsd sends gunicorn.requests, "
         "gunicorn.request.duration, gunicorn.workers, ..., so gunicorn's log configs and dashboards carry over. "
         "'corral': corral.error (corral.* loggers), corral.access, corral.requests, .... corral's own statsd "
         "metrics (pool, WebSockets, restarts) are corral.* either way. A HUP keeps the one the master started "
         "with.", metavar="gunicorn|corral")


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


_declare("metrics_bind", "observability", optional_str, None,
         "Serve Prometheus metrics, aggregated over all workers, from the master on this address "
         "(HOST:PORT or unix:PATH; GET /metrics); off when unset.", ("--metrics-bind",), metavar="ADDRESS")
_declare("statsd_host", "observability", statsd_address, None,
         "Send metrics to this statsd / DogStatsD server (HOST:PORT over UDP, or unix:PATH), from the master, "
         "once a second; off when unset.", ("--statsd-host",), metavar="ADDRESS")
_declare("statsd_prefix", "observability", to_str, "",
         "Put in front of every statsd metric name, as gunicorn does (a '.' is added): --statsd-prefix app1 "
         "sends app1.gunicorn.requests. Empty by default.", ("--statsd-prefix",), metavar="PREFIX")
_declare("dogstatsd_tags", "observability", to_str, "",
         "DogStatsD tags added to every statsd metric, comma-separated (e.g. env:prod,app:shop).",
         ("--dogstatsd-tags",), metavar="TAGS")
_declare("health_path", "observability", url_path, None,
         "A path (e.g. /healthz) the worker answers itself, without the application and outside the pool: "
         "200 while it serves, 503 once it drains (stopping, replaced by a HUP); off when unset.",
         ("--health-path",), metavar="PATH")

# Hooks, gunicorn carry-over, request deadlines and --reload; TLS and HTTP/2: declared in modules of their
# own (same registry), which import this one; the package's __init__ imports them after it.


# ---------------------------------------------------------------------------- resolved settings


class Settings:
    """The effective value of every setting; attribute access by setting name."""

    def __init__(self, **values: Any) -> None:
        for name, value in values.items():
            if name not in REGISTRY:
                raise SettingError(unknown_setting_message(name))
        for name, declared in REGISTRY.items():
            value = values.get(name, declared.default)
            if name in values:
                value = declared.parse(value)
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in REGISTRY:
            raise SettingError(unknown_setting_message(name))
        object.__setattr__(self, name, REGISTRY[name].parse(value))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated)."""
        values = self.as_dict()
        values.update(changes)
        return Settings(**values)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REGISTRY}

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.as_dict().items())

    def __repr__(self) -> str:
        changed = {k: v for k, v in self if v != REGISTRY[k].default}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def unknown_setting_message(name: str, source: str = "") -> str:
    where = f" in {source}" if source else ""
    message = f"unknown setting {name!r}{where}"
    close = difflib.get_close_matches(name.replace("-", "_"), list(REGISTRY), n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message


def from_env(environ: Mapping[str, str] = os.environ, problems: list[str] | None = None) -> dict[str, Any]:
    """Settings given as CORRAL_* environment variables.

    A CORRAL_* name that is no setting is not one of ours to refuse (an environment is shared with deploy
    scripts and other tools): it is skipped here, and `unknown_env` names it. A bad value raises, or is
    appended to `problems` when a list is given (every bad value of a run reported at once)."""
    found: dict[str, Any] = {}
    known = {declared.env: declared for declared in REGISTRY.values()}
    for key, raw in environ.items():
        declared = known.get(key)
        if declared is None:
            continue
        try:
            found[declared.name] = declared.parse(raw, f"environment variable {key}")
        except SettingError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return found


def unknown_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The CORRAL_* variables that are no setting (CORRAL_CMD_ARGS, a command line, is one of ours)."""
    known = {declared.env for declared in REGISTRY.values()} | {"CORRAL_CMD_ARGS"}
    return sorted(key for key in environ if key.startswith("CORRAL_") and key not in known)


@dataclass
class Sources:
    """Where each layer of settings came from, lowest precedence first."""

    file: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    cli: dict[str, Any] = field(default_factory=dict)


def resolve(sources: Sources) -> Settings:
    """The one precedence rule: command line > environment > config file > default."""
    merged: dict[str, Any] = {}
    for layer in (sources.file, sources.env, sources.cli):
        merged.update(layer)
    return Settings(**merged)
