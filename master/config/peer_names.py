"""What the peers' setting names mean in corral: every gunicorn setting, and uvicorn's, hypercorn's and
granian's command-line flags.

This table is what "did you mean" may propose: a name is only ever answered with a corral setting of the
same meaning, or with why there is none. (A spelling match would answer `--reload` with `--preload`, or
`--certfile` with `--error-logfile`.) The migration page (docs/migrating-from-gunicorn.md) is generated from `GUNICORN`
(`corral.master.config.migration`; a test keeps them equal).

Kinds, for a gunicorn config-file key (and flag) that corral does not declare under the same name:
  alias   same meaning, another corral name: the value is carried over to it
  noop    accepted and ignored, with one warning saying what corral does instead (its job is done another
          way, or always, or corral stays stricter); silent at gunicorn's default, which asks for nothing
  refuse  corral cannot do what it asks and running anyway would break the deployment: an error, unless
          it is set to gunicorn's default (then it asks for nothing and is accepted silently)
  same    corral declares the same name (kept here for the tables); the note says what differs, if anything
"""

from __future__ import annotations

from typing import Any, NamedTuple

from corral.shared.settings.compat import HOOK_ARITY

__all__ = ["Entry", "GUNICORN", "PEER_FLAGS", "gunicorn_flags"]


class Entry(NamedTuple):
    kind: str  # alias, noop, refuse, same
    corral: str  # corral's equivalent as a user writes it ("" when there is none)
    note: str
    flags: tuple[str, ...] = ()  # gunicorn's flags for it
    default: Any = None  # gunicorn's default (a refused key at this value asks for nothing)
    takes_value: bool = True  # its flag takes a value


_DIRTY = (
    "gunicorn's dirty arbiters (separate worker pools for long tasks) have no corral equivalent: run such "
    "tasks in a task queue (Celery, RQ, arq) or on threads (sync_to_async)"
)
_DIRTY_PART = "no dirty arbiters, so nothing uses it (dirty_apps and dirty_workers are refused)"
_H2 = "no HTTP/3: it ends at the proxy in front"
_SYSLOG = "no syslog handler: use --log-config with a logging.handlers.SysLogHandler, or journald via stderr"


def _same(note: str = "", flags: tuple[str, ...] = (), corral: str = "") -> Entry:
    return Entry("same", corral, note, flags)


GUNICORN: dict[str, Entry] = {
    # Config File
    "config": _same(
        "`-c FILE`, `-c file:FILE` or `-c python:package.module`, also from GUNICORN_CMD_ARGS; without "
        "it `./corral.conf.py`, else `./gunicorn.conf.py`, is loaded. Only names that are settings "
        "are read",
        ("-c", "--config"),
        "-c/--config",
    ),
    "wsgi_app": _same("the APP when none is given on the command line", (), "wsgi_app"),
    # Control
    "control_socket": Entry(
        "noop",
        "serve status --pid FILE",
        "corral's status socket lives next to --pid; `serve status` reads it",
        ("--control-socket",),
    ),
    "control_socket_disable": Entry(
        "noop", "", "the status socket exists only with --pid", ("--no-control-socket",), False, False
    ),
    "control_socket_mode": Entry(
        "noop", "", "the status socket is only the master's user's (0600)", ("--control-socket-mode",)
    ),
    # Debugging
    "check_config": _same(
        "imports the app in a short-lived child; exit 4 when it fails", ("--check-config",), "--check-config"
    ),
    "print_config": _same("prints every effective setting and exits", ("--print-config",), "--print-config"),
    "reload": _same(
        "watchfiles (the `reload` extra); new workers start before the old ones stop", ("--reload",), "--reload"
    ),
    "reload_engine": Entry(
        "noop", "", "corral always uses watchfiles (inotify on Linux)", ("--reload-engine",), "auto"
    ),
    "reload_extra_files": Entry(
        "noop",
        "--reload-dir and --reload-include",
        "corral watches folders filtered by globs",
        ("--reload-extra-file",),
        [],
    ),
    "spew": Entry("noop", "", "no line tracing; use a debugger or `python -X importtime`", ("--spew",), False, False),
    # Dirty arbiters
    **{
        name: Entry("refuse", "", _DIRTY, flags, default)
        for name, flags, default in (("dirty_apps", ("--dirty-app",), []), ("dirty_workers", ("--dirty-workers",), 0))
    },
    **{
        name: Entry("noop", "", _DIRTY_PART, flags, default)
        for name, flags, default in (
            ("dirty_post_fork", (), None),
            ("dirty_worker_exit", (), None),
            ("dirty_worker_init", (), None),
            ("on_dirty_starting", (), None),
            ("dirty_graceful_timeout", ("--dirty-graceful-timeout",), 30),
            ("dirty_threads", ("--dirty-threads",), 1),
            ("dirty_timeout", ("--dirty-timeout",), 300),
        )
    },
    # HTTP/2
    "http2_cleartext": Entry(
        "noop",
        "",
        "corral serves h2c (prior knowledge) on cleartext binds with --http auto (the default); no Upgrade: h2c",
        ("--http2-cleartext",),
        "off",
    ),
    "http2_initial_window_size": _same(
        "per stream; acknowledged as the app reads", ("--http2-initial-window-size",), "--http2-initial-window-size"
    ),
    "http2_max_concurrent_streams": _same(
        "at most the pool's free room", ("--http2-max-concurrent-streams",), "--http2-max-concurrent-streams"
    ),
    "http2_max_frame_size": _same("", ("--http2-max-frame-size",), "--http2-max-frame-size"),
    "http2_max_header_list_size": _same("", ("--http2-max-header-list-size",), "--http2-max-header-list-size"),
    "http_protocols": Entry(
        "noop",
        "--http auto|1|2",
        "corral's --http chooses the versions (HTTP/2 on by default)",
        ("--http-protocols",),
        "h1",
    ),
    # Logging
    "access_log_format": _same(
        "gunicorn's atoms and default line; WebSocket close lines have %(ws_close)s, %(ws_in)s, %(ws_out)s",
        ("--access-logformat",),
        "--access-logformat",
    ),
    "accesslog": _same("`-` is stdout", ("--access-logfile",), "--access-logfile"),
    "capture_output": _same("", ("--capture-output",), "--capture-output"),
    "disable_redirect_access_to_syslog": Entry(
        "noop", "", "no syslog handler, so nothing to redirect", ("--disable-redirect-access-to-syslog",), False, False
    ),
    "dogstatsd_tags": _same(
        "comma-separated key:value tags on every metric", ("--dogstatsd-tags",), "--dogstatsd-tags"
    ),
    "enable_backlog_metric": Entry(
        "noop",
        "--metrics-bind",
        "no socket-backlog gauge: corral reports the requests parked by a full pool (corral_pool_parked)",
        ("--enable-backlog-metric",),
        False,
        False,
    ),
    "enable_stdio_inheritance": Entry(
        "noop",
        "",
        "corral workers always inherit the master's stdio",
        ("-R", "--enable-stdio-inheritance"),
        False,
        False,
    ),
    "errorlog": _same("", ("--error-logfile", "--log-file"), "--error-logfile"),
    "logconfig": _same(
        "a dictConfig file (JSON, or Python defining LOGGING), not fileConfig's INI format",
        ("--log-config",),
        "--log-config",
    ),
    "logconfig_dict": _same("config file only; a dictConfig dict, wins over --log-config", (), "logconfig_dict"),
    "logconfig_json": Entry("alias", "logconfig", "--log-config reads JSON files too", ("--log-config-json",)),
    "logger_class": Entry(
        "noop",
        "--log-config",
        "configure the gunicorn.error/gunicorn.access (or "
        "corral.error/corral.access) loggers with a dictConfig instead",
        ("--logger-class",),
        "gunicorn.glogging.Logger",
    ),
    "loglevel": _same("", ("--log-level",), "--log-level"),
    "statsd_host": _same(
        "UDP HOST:PORT or unix:PATH; sent by the master for all workers", ("--statsd-host",), "--statsd-host"
    ),
    "statsd_prefix": _same(
        "in front of gunicorn's names, as in gunicorn (app1.gunicorn.requests)", ("--statsd-prefix",), "--statsd-prefix"
    ),
    "syslog": Entry("noop", "--log-config", _SYSLOG, ("--log-syslog",), False, False),
    "syslog_addr": Entry("noop", "--log-config", _SYSLOG, ("--log-syslog-to",), "udp://localhost:514"),
    "syslog_facility": Entry("noop", "--log-config", _SYSLOG, ("--log-syslog-facility",), "user"),
    "syslog_prefix": Entry("noop", "--log-config", _SYSLOG, ("--log-syslog-prefix",)),
    # Process naming
    "default_proc_name": Entry("noop", "-n/--name", "without --name, titles show the app spec", (), "gunicorn"),
    "proc_name": _same("titles read `corral: master [NAME]`", ("-n", "--name"), "-n/--name"),
    # SSL
    "ca_certs": _same("checks client certificates with --cert-reqs 1 or 2", ("--ca-certs",), "--ca-certs"),
    "cert_reqs": _same("0, 1, 2 (or none, optional, required)", ("--cert-reqs",), "--cert-reqs"),
    "certfile": _same("HTTPS and WSS on every bind; the context is built again on HUP", ("--certfile",), "--certfile"),
    "ciphers": _same("", ("--ciphers",), "--ciphers"),
    "do_handshake_on_connect": _same(
        "accepted; the handshake always completes before the first request",
        ("--do-handshake-on-connect",),
        "--do-handshake-on-connect",
    ),
    "keyfile": _same("its password from CORRAL_KEYFILE_PASSWORD", ("--keyfile",), "--keyfile"),
    "ssl_version": _same(
        "the lowest version accepted: TLSv1.2 or TLSv1.3; gunicorn's protocol numbers and "
        "names mean TLSv1.2 (gunicorn 27 ignores the setting)",
        ("--ssl-version",),
        "--ssl-version",
    ),
    "suppress_ragged_eofs": Entry(
        "noop",
        "",
        "asyncio treats a TLS EOF without close_notify as the end of the connection",
        ("--suppress-ragged-eofs",),
        True,
        False,
    ),
    "ssl_context": _same(
        "called (config, default_ssl_context_factory) when TLS is on, at start and on each HUP; "
        "`config` is corral's settings",
        (),
        "ssl_context",
    ),
    # Security
    "limit_request_field_size": _same(
        "corral's bounds the whole header block; 0 (unlimited) allows up to 1 MiB",
        ("--limit-request-field_size", "--limit-request-field-size"),
        "--limit-request-field-size",
    ),
    "limit_request_fields": _same(
        "0 is gunicorn's maximum, 32768", ("--limit-request-fields",), "--limit-request-fields"
    ),
    "limit_request_line": _same(
        "default 8190 (gunicorn 4094); 0 (unlimited) allows up to 1 MiB, as gunicorn's C "
        "parser; above 8190 is honoured (gunicorn caps there)",
        ("--limit-request-line",),
        "--limit-request-line",
    ),
    # Server hooks
    **{name: _same('server hook: config file only (see the "Server hooks" page)', (), name) for name in HOOK_ARITY},
    # Server mechanics
    "casefold_http_method": Entry(
        "noop",
        "",
        "corral passes the method as sent (RFC 9110: case-sensitive)",
        ("--casefold-http-method",),
        False,
        False,
    ),
    "chdir": _same("", ("--chdir",), "--chdir"),
    "daemon": Entry(
        "refuse",
        "",
        'corral does not daemonize: run it under systemd (see the "Deployment" page)',
        ("-D", "--daemon"),
        False,
        False,
    ),
    "forwarded_allow_ips": _same(
        "also `unix` for unix-socket peers", ("--forwarded-allow-ips",), "--forwarded-allow-ips"
    ),
    "forwarder_headers": Entry(
        "noop",
        "--root-path",
        "corral does not take SCRIPT_NAME/PATH_INFO from headers",
        ("--forwarder-headers",),
        "SCRIPT_NAME,PATH_INFO",
    ),
    "group": _same("", ("-g", "--group"), "-g/--group"),
    "header_map": Entry(
        "noop",
        "",
        "headers with an underscore never reach a WSGI app (gunicorn's `drop`, its "
        "default); ASGI apps get every header as sent",
        ("--header-map",),
        "drop",
    ),
    "initgroups": Entry(
        "noop", "", "corral always calls initgroups() when it switches user", ("--initgroups",), False, False
    ),
    "paste": Entry("refuse", "", "no PasteDeploy loader: give the app as module:attribute", ("--paste", "--paster")),
    "permit_obsolete_folding": Entry(
        "noop",
        "",
        "obsolete line folding is always rejected (RFC 9112 §5.2)",
        ("--permit-obsolete-folding",),
        False,
        False,
    ),
    "permit_unconventional_http_method": Entry(
        "noop",
        "",
        "gunicorn's default rule: any token of 3 to 20 "
        "characters without a lowercase letter reaches the app; others are a 400",
        ("--permit-unconventional-http-method",),
        False,
        False,
    ),
    "permit_unconventional_http_version": Entry(
        "noop", "", "only HTTP/1.0 and HTTP/1.1 are served", ("--permit-unconventional-http-version",), False, False
    ),
    "pidfile": _same("", ("-p", "--pid"), "-p/--pid"),
    "preload_app": _same("", ("--preload",), "--preload"),
    "protocol": Entry("refuse", "", "corral speaks HTTP only (no uwsgi protocol)", ("--protocol",), "http"),
    "proxy_allow_ips": _same(
        "peers whose PROXY header is believed; a header from others closes",
        ("--proxy-allow-from",),
        "--proxy-allow-from",
    ),
    "proxy_protocol": _same("v1 and v2 (TLVs, TLS details into the scope)", ("--proxy-protocol",), "--proxy-protocol"),
    "pythonpath": _same("", ("--pythonpath",), "--pythonpath"),
    "raw_env": _same("", ("-e", "--env"), "-e/--env"),
    "raw_paste_global_conf": Entry(
        "refuse", "", "no PasteDeploy loader: give the app as module:attribute", ("--paste-global",), []
    ),
    "reuse_port": _same("each worker binds its own SO_REUSEPORT socket", ("--reuse-port",), "--reuse-port"),
    "root_path": _same("", ("--root-path",), "--root-path"),
    "secure_scheme_headers": Entry(
        "noop", "--forwarded-allow-ips", "corral reads X-Forwarded-Proto and RFC 7239 Forwarded from trusted peers", ()
    ),
    "sendfile": Entry(
        "noop", "", "responses are written from the event loop; no sendfile path", ("--no-sendfile",), None, False
    ),
    "strip_header_spaces": Entry(
        "noop",
        "",
        "a space before the colon is a 400 (RFC 9112 §5.1), never stripped",
        ("--strip-header-spaces",),
        False,
        False,
    ),
    "tmp_upload_dir": Entry("noop", "", "request bodies stream to the app; nothing is spooled to disk", ()),
    "umask": _same("gunicorn's: the unix socket's mask, default 0 (a 0777 socket)", ("-m", "--umask"), "-m/--umask"),
    "user": _same("", ("-u", "--user"), "-u/--user"),
    "uwsgi_allow_ips": Entry("noop", "", "no uwsgi protocol", ("--uwsgi-allow-from",), "127.0.0.1,::1"),
    "worker_tmp_dir": Entry(
        "noop", "", "liveness is a heartbeat over a socket pair, not a temp file's mtime", ("--worker-tmp-dir",)
    ),
    # Server socket
    "backlog": _same("", ("--backlog",), "--backlog"),
    "bind": _same(
        "`[::]:PORT` is dual-stack, as gunicorn's, except next to an IPv4 address on the same port "
        "(`-b 0.0.0.0:8000 -b [::]:8000`): then it takes IPv6 only, so both bind, where gunicorn fails "
        'with "Address already in use"; also fd://N; systemd socket activation is automatic',
        ("-b", "--bind"),
        "-b/--bind",
    ),
    # Worker processes
    "asgi_disconnect_grace_period": Entry(
        "noop", "", "a disconnect is delivered to the ASGI app at once", ("--asgi-disconnect-grace-period",), 3
    ),
    "asgi_lifespan": Entry("alias", "lifespan", "same values: auto, on, off", ("--asgi-lifespan",)),
    "asgi_loop": Entry("noop", "", "corral always runs uvloop", ("--asgi-loop",), "auto"),
    "graceful_timeout": _same("", ("--graceful-timeout",), "--graceful-timeout"),
    "http_parser": Entry("noop", "", "corral always parses with httptools", ("--http-parser",), "auto"),
    "keepalive": _same("default 5 s (gunicorn 2)", ("--keep-alive",), "--keep-alive"),
    "max_requests": _same("", ("--max-requests",), "--max-requests"),
    "max_requests_jitter": _same("", ("--max-requests-jitter",), "--max-requests-jitter"),
    "threads": _same("WSGI requests and sync_to_async threads per worker; default 10", ("--threads",), "--threads"),
    "timeout": _same(
        "the event-loop watchdog; a request deadline is --request-timeout", ("-t", "--timeout"), "-t/--timeout"
    ),
    "websocket_max_message_size": Entry(
        "alias", "ws_max_size", "same meaning (bytes)", ("--websocket-max-message-size",)
    ),
    "worker_class": _same(
        "resolved by what the class is: a UvicornWorker or a project's subclass = ASGI, its "
        "CONFIG_KWARGS applied (one warning names those ignored); sync/gthread or a subclass = "
        "WSGI (and `timeout` bounds each request); gevent/eventlet/tornado refused",
        ("-k", "--worker-class"),
        "-k/--worker-class",
    ),
    "worker_connections": Entry(
        "noop",
        "--max-applications",
        "corral's limit counts requests and WebSockets "
        "of all workers together: set --max-applications to workers x this",
        ("--worker-connections",),
        1000,
    ),
    "workers": _same("", ("-w", "--workers"), "-w/--workers"),
}

# Flags of uvicorn, hypercorn and granian that have no corral flag of the same name: what to use instead.
# (An empty first item: there is no equivalent, the note says why.)
PEER_FLAGS: dict[str, tuple[str, str]] = {
    "--host": ("-b/--bind HOST:PORT", "corral binds addresses, as gunicorn: -b 0.0.0.0:8000"),
    "--port": ("-b/--bind HOST:PORT", "corral binds addresses, as gunicorn: -b 0.0.0.0:8000"),
    "--uds": ("-b/--bind unix:PATH", ""),
    "--fd": ("-b/--bind fd://N", ""),
    "--loop": ("", "corral always runs uvloop"),
    "--http": ("", "corral always parses with httptools"),
    "--ws": ("", "corral's WebSockets are always on, on websockets' sans-I/O protocol"),
    "--ws-max-size": ("", ""),  # same name in corral: never asked
    "--env-file": ("-e/--env KEY=VALUE", "or systemd's EnvironmentFile="),
    "--access-log": ("--access-logfile -", ""),
    "--no-access-log": ("", "the access log is off unless --access-logfile is given"),
    "--use-colors": ("", "corral's logs are plain text"),
    "--no-use-colors": ("", "corral's logs are plain text"),
    "--proxy-headers": ("--forwarded-allow-ips", "trusted peers' proxy headers are always applied"),
    "--no-proxy-headers": ("--forwarded-allow-ips ''", "trust no peer"),
    "--limit-concurrency": (
        "--max-applications N --pool-full 503",
        "uvicorn answers 503 past it; corral waits by default",
    ),
    "--limit-max-requests": ("--max-requests", ""),
    "--limit-max-requests-jitter": ("--max-requests-jitter", ""),
    "--http2": ("--http auto", "HTTP/2 is on by default: h2 by ALPN, h2c with prior knowledge"),
    "--reset-contextvars": ("", "each request already starts from the worker's context"),
    "--timeout-keep-alive": ("--keep-alive", ""),
    "--timeout-graceful-shutdown": ("--graceful-timeout", ""),
    "--timeout-worker-healthcheck": ("-t/--timeout", ""),
    "--app-dir": ("--pythonpath", ""),
    "--h11-max-incomplete-event-size": ("--limit-request-field-size", ""),
    "--header": ("", "no default response headers besides server and date"),
    "--reload-delay": ("", "watchfiles groups changes itself"),
    "--reload-paths": ("--reload-dir", ""),
    "--reload-ignore-dirs": ("--reload-exclude", ""),
    "--reload-ignore-patterns": ("--reload-exclude", ""),
    "--ssl-keyfile": ("--keyfile", ""),
    "--ssl-certfile": ("--certfile", ""),
    "--ssl-certificate": ("--certfile", ""),
    "--ssl-keyfile-password": ("", "give the key's password as CORRAL_KEYFILE_PASSWORD"),
    "--ssl-version": ("--ssl-version", "the lowest TLS version"),
    "--ssl-cert-reqs": ("--cert-reqs", ""),
    "--ssl-ca-certs": ("--ca-certs", ""),
    "--ssl-ciphers": ("--ciphers", ""),
    "--verify-mode": ("--cert-reqs", ""),
    "--quic-bind": ("", _H2),
    "--insecure-bind": ("-b/--bind", "corral serves plain HTTP on every address"),
    "--server-name": ("", "any Host is served; filter in the proxy"),
    "--debug": ("--log-level debug", ""),
    "--read-timeout": ("--header-timeout", "the deadline for a request head"),
    "--websocket-ping-interval": ("--ws-ping-interval", ""),
    "--blocking-threads": ("--threads", ""),
    "--runtime-threads": ("", "each corral worker is one event loop"),
    "--backpressure": ("--max-applications", ""),
    "--http1-keep-alive": ("--keep-alive", "seconds; 0 turns keep-alive off"),
    "--access-log-fmt": ("--access-logformat", "with gunicorn's atoms"),
    "--url-path-prefix": ("--root-path", ""),
    "--respawn-failed-workers": ("", "corral always replaces a dead worker"),
    "--workers-lifetime": ("--max-requests", "corral recycles by request count or memory, not by age"),
    "--workers-kill-timeout": ("--graceful-timeout", ""),
    "--workers-max-rss": ("--max-worker-memory", "a size: 512M"),
    "--pid-file": ("-p/--pid", ""),
    "--process-name": ("-n/--name", ""),
    "--task-impl": ("", "corral runs asyncio tasks on uvloop"),
    "--interface": ("", ""),  # same name in corral
}


def gunicorn_flags() -> dict[str, tuple[str, Entry]]:
    """Every gunicorn flag -> (its setting name, entry)."""
    flags: dict[str, tuple[str, Entry]] = {}
    for name, entry in GUNICORN.items():
        for flag in entry.flags:
            flags[flag] = (name, entry)
    return flags
