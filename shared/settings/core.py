"""The server's own settings: sockets, workers and the pool, the master process, HTTP/1.1 limits and proxies,
WebSocket (what the server does; what it reports - logs, metrics, health checks - is `observability.py`).
Where gunicorn has the same setting, the name and flag are gunicorn's, so a gunicorn command line or config
file carries over.

Declared in `corral.shared.settings.registry`'s `REGISTRY` first (the package's `__init__` imports this
module before `observability`, `compat` and `transport`): the settings page and `serve --help` list them in
this order.
"""

from __future__ import annotations

from corral.shared.settings.registry import (
    _declare,
    choice,
    group_id,
    non_negative_float,
    non_negative_int,
    optional_str,
    positive_float,
    positive_int,
    size,
    str_list,
    to_bool,
    to_str,
    umask,
    user_id,
)

__all__: list[str] = []


# -- server sockets (read by the master)
_declare(
    "bind",
    "server",
    to_str,
    ("127.0.0.1:8000",),
    "Address to listen on: HOST:PORT, [::1]:PORT, unix:PATH or fd://N; repeat for several. [::]:PORT is "
    "dual-stack (IPv4 clients too), as gunicorn's; listed with an IPv4 address on the same port "
    "(-b 0.0.0.0:8000 -b [::]:8000) it takes IPv6 only, so both bind (gunicorn fails there: address in use).",
    ("-b", "--bind"),
    metavar="ADDRESS",
    multiple=True,
)
_declare("backlog", "server", positive_int, 2048, "Maximum number of pending connections per socket.")
_declare(
    "reuse_port",
    "server",
    to_bool,
    False,
    "Each worker binds its own SO_REUSEPORT socket instead of sharing the master's.",
    is_flag=True,
)

# -- workers and the pool
_declare("workers", "worker", positive_int, 1, "Number of worker processes.", ("-w", "--workers"))
_declare(
    "threads",
    "worker",
    positive_int,
    10,
    "Threads in each worker's pool (WSGI requests and sync_to_async(thread_sensitive=False)). With 1, "
    "a WSGI application runs on the worker's own thread, as gunicorn's sync worker runs it: a request "
    "that blocks blocks its whole worker (unless --request-timeout is set).",
)
_declare(
    "scheduling_policy",
    "worker",
    choice("batch", "inherit"),
    "batch",
    "CPU scheduling policy of each worker and its threads (Linux): 'batch' (SCHED_BATCH) lets a woken "
    "thread wait for the running one instead of preempting it, so a pool thread and the event loop do "
    "not hand the GIL back and forth on every read (a Django view with --threads 4: 15-20 % more "
    "requests/s); 'inherit' keeps the master's policy. A worker under another policy (chrt) keeps it; "
    "processes the application starts inherit the worker's.",
)
_declare(
    "max_applications",
    "worker",
    positive_int,
    1000,
    "Total application instances (requests + WebSockets) across all workers; each worker gets its share.",
)
_declare(
    "pool_full",
    "worker",
    choice("wait", "503"),
    "wait",
    "When a worker's pool is full: 'wait' stops accepting and reading until a slot frees "
    "(backpressure); '503' answers new requests with 503 at once.",
)
_declare(
    "interface",
    "worker",
    choice("auto", "asgi3", "asgi2", "wsgi"),
    "auto",
    "Application interface; auto detects ASGI 3, ASGI 2 (double callable) and WSGI.",
)
_declare(
    "factory",
    "worker",
    to_bool,
    False,
    "Treat the application attribute as a factory: call it with no arguments to get the app "
    "(uvicorn's --factory; 'module:create_app()' does the same).",
    is_flag=True,
)
_declare(
    "lifespan",
    "worker",
    choice("auto", "on", "off"),
    "auto",
    "ASGI lifespan protocol: auto runs it if the app supports it, on requires it, off skips it.",
)
_declare(
    "wsgi_body_buffer",
    "worker",
    size,
    65536,
    "WSGI request bodies up to this size are read whole before the app gets a thread (a stalled "
    "upload then holds no thread); larger ones are streamed to wsgi.input. 0 streams every body.",
)
_declare("root_path", "worker", to_str, "", "ASGI root_path (WSGI SCRIPT_NAME) when mounted below a prefix.")
_declare(
    "graceful_timeout",
    "worker",
    non_negative_float,
    30.0,
    "Seconds a stopping worker lets in-flight requests finish before it closes them.",
)

_declare(
    "drain_delay",
    "worker",
    non_negative_float,
    0.0,
    "Seconds a stopping server (TERM) keeps serving and accepting while its health path (--health-path) "
    "answers 503, before it stops accepting: load balancers take the host out of rotation first (the "
    "Kubernetes preStop pattern, inside the server); 0 is off. HUP does not drain: new workers take "
    "new connections at once.",
)
_declare(
    "max_requests",
    "worker",
    non_negative_int,
    0,
    "Requests a worker serves before the master replaces it (new worker first); 0 is off.",
)
_declare(
    "max_requests_jitter",
    "worker",
    non_negative_int,
    0,
    "Random 0..N added to --max-requests per worker, so workers do not all restart at once.",
)
_declare(
    "max_worker_memory",
    "worker",
    size,
    0,
    "Worker resident memory (K/M/G suffixes allowed) above which the master replaces it (new worker "
    "first); checked every few seconds; 0 is off.",
)
_declare(
    "timeout",
    "worker",
    non_negative_float,
    30.0,
    "Seconds a worker's event loop may go without a heartbeat before the master dumps its stack and "
    "kills it; 0 disables the watchdog.",
    ("-t", "--timeout"),
)
_declare(
    "preload_app",
    "worker",
    to_bool,
    False,
    "Import the application in the master before forking: workers start in milliseconds and share "
    "memory; HUP then reloads settings but not the code (use USR2).",
    ("--preload",),
    is_flag=True,
)
_declare(
    "gc_freeze",
    "worker",
    to_bool,
    True,
    "Once the application is loaded (and its lifespan started), move what the worker holds into the "
    "garbage collector's permanent generation (gc.freeze()): collections then scan what requests "
    "create, not the application and its imports, whose full passes were the long tail of response "
    "times. With --preload the master does it before forking, which also keeps the pages shared.",
)
_declare(
    "worker_boot_retries",
    "worker",
    positive_int,
    3,
    "Consecutive worker boot failures (app import error, lifespan startup failed), with no worker "
    "serving, after which the master stops with exit code 5 instead of forking again.",
)

# -- the master process
_declare(
    "pidfile",
    "master",
    optional_str,
    None,
    "Write the master's pid to this file (refused while a live process owns it); removed at exit. "
    "`serve status --pid FILE` reads it.",
    ("-p", "--pid"),
    metavar="FILE",
)
_declare(
    "proc_name",
    "master",
    optional_str,
    None,
    "Name shown in process titles (`corral: master [NAME]`); defaults to the application spec.",
    ("-n", "--name"),
    metavar="NAME",
)
_declare(
    "user",
    "master",
    user_id,
    None,
    "Workers switch to this user (name or uid) after binding.",
    ("-u", "--user"),
    metavar="USER",
)
_declare(
    "group",
    "master",
    group_id,
    None,
    "Workers switch to this group (name or gid) after binding.",
    ("-g", "--group"),
    metavar="GROUP",
)
_declare(
    "umask",
    "master",
    umask,
    0,
    "Mode mask of the unix socket files the master binds, as gunicorn's: 0 (the default) makes them 0777, "
    "so a proxy running as another user can connect; 007 keeps them to the owner and the group (0770). "
    "A leading 0 or 0o means octal. Log files follow the process's own umask; the pid file is 0644.",
    ("-m", "--umask"),
    metavar="UMASK",
    render=lambda mask: f"0o{mask:03o}",
)
_declare(
    "chdir",
    "master",
    optional_str,
    None,
    "Change to this folder before loading the application.",
    ("--chdir",),
    metavar="DIR",
)

# -- HTTP limits and timeouts (the worker's defence against bad or slow clients)
_declare(
    "keepalive",
    "http",
    non_negative_float,
    5.0,
    "Seconds an idle keep-alive connection is kept open; 0 closes after each response.",
    ("--keep-alive",),
)
_declare(
    "header_timeout",
    "http",
    positive_float,
    10.0,
    "Seconds a client gets to send a complete request head (slowloris guard): 408 then close.",
)
_declare(
    "limit_request_line",
    "http",
    non_negative_int,
    8190,
    "Maximum size of the request line in bytes (414 when exceeded); 0 is gunicorn's 'unlimited': up to "
    "1 MiB, a bound on the memory one request head takes.",
)
_declare(
    "limit_request_fields",
    "http",
    non_negative_int,
    100,
    "Maximum number of request header fields (431); 0 is gunicorn's maximum, 32768.",
)
_declare(
    "limit_request_field_size",
    "http",
    non_negative_int,
    8190,
    "Maximum size of the request head's header block in bytes (431 when exceeded); 0 is gunicorn's "
    "'unlimited': up to 1 MiB.",
)
_declare(
    "limit_request_body",
    "http",
    size,
    0,
    "Maximum request body size in bytes (K/M/G suffixes allowed); 413 when exceeded; 0 is off.",
)
_declare(
    "body_timeout",
    "http",
    positive_float,
    30.0,
    "Seconds a request body may go without a byte while the server is reading it (a client that "
    "stalls in its upload holds an application slot): 408 then close. Time the application spends "
    "not reading does not count.",
)
_declare(
    "min_request_body_rate",
    "http",
    non_negative_int,
    240,
    "Bytes per second a request body must average while the application waits for it, once it has "
    "waited --min-rate-grace (Kestrel's MinRequestBodyDataRate): slower, the client gets 408 and the "
    "connection closes. While the worker's pool is full the grace is one second. 0 is off.",
)
_declare(
    "min_response_rate",
    "http",
    non_negative_int,
    240,
    "Bytes per second a client must take a response at while the server has bytes waiting for it, once "
    "it has waited --min-rate-grace (Kestrel's MinResponseDataRate): slower, the connection is reset. "
    "While the worker's pool is full the grace is one second. TCP connections only; 0 is off.",
)
_declare(
    "min_rate_grace",
    "http",
    positive_float,
    5.0,
    "Seconds a request body or a response may wait on its client before its minimum rate "
    "(--min-request-body-rate, --min-response-rate) applies; the rate is then its average over the time "
    "it waited.",
)
_declare(
    "min_chunk_size",
    "http",
    non_negative_int,
    64,
    "Smallest average chunk size in bytes a chunked request body must keep once past its first 1024 "
    "chunks (each chunk costs CPU whatever its size): 400 then close; 0 is off.",
)
_declare(
    "max_pipelined_requests",
    "http",
    positive_int,
    16,
    "Requests parsed ahead of the one being answered on a connection (HTTP/1.1 pipelining); beyond "
    "it the connection's further bytes wait unparsed and it stops reading until answers go out.",
)
_declare(
    "write_buffer_limit",
    "http",
    size,
    64 * 1024,
    "Per-connection write buffer high-water mark in bytes: a response `send` above it waits until the "
    "client reads (backpressure). A worker buffers at most its share of --max-applications times this, "
    "plus what single messages exceed it by.",
)
_declare(
    "max_requests_per_connection",
    "http",
    non_negative_int,
    1000,
    "Requests served on one keep-alive connection before it is closed; 0 is unlimited.",
)
_declare("server_header", "http", to_bool, True, "Send a 'server: corral' header.")
_declare("date_header", "http", to_bool, True, "Send a 'date' header.")
_declare(
    "forwarded_allow_ips",
    "http",
    str_list,
    ("127.0.0.1", "::1"),
    "Peers whose X-Forwarded-* and Forwarded headers are trusted: IPs or networks, 'unix' for "
    "unix-socket peers, '*' for all.",
)

_declare(
    "proxy_protocol",
    "http",
    to_bool,
    False,
    "Read a PROXY protocol header (v1 or v2, HAProxy's send-proxy / send-proxy-v2, AWS NLB) at the start "
    "of connections from --proxy-allow-ips peers: the client address (and TLS details) come from it.",
    is_flag=True,
)
_declare(
    "proxy_allow_ips",
    "http",
    str_list,
    ("127.0.0.1", "::1"),
    "Peers that may send a PROXY protocol header: IPs or networks, 'unix', '*'. A header from any other "
    "peer closes the connection.",
    ("--proxy-allow-from", "--proxy-allow-ips"),
)
_declare(
    "forwarded_headers",
    "http",
    choice("auto", "forwarded", "x-forwarded"),
    "auto",
    "Which proxy headers a trusted peer may use: 'forwarded' (RFC 7239 only), 'x-forwarded' "
    "(X-Forwarded-For/-Proto/-Host only) or 'auto' (X-Forwarded-* when present, else Forwarded).",
)

# -- WebSocket (RFC 6455): safe defaults - every limit is on, and every open socket is pinged
_declare(
    "ws_max_size",
    "websocket",
    size,
    16 * 1024 * 1024,
    "Largest incoming WebSocket message in bytes (K/M/G suffixes allowed), after decompression; a "
    "bigger one closes the socket with 1009 (0: no limit, not advised). Memory per socket stays bounded: "
    "reading stops while the queued messages pass this size (or --ws-max-queue messages).",
)
_declare(
    "ws_ping_interval",
    "websocket",
    non_negative_float,
    20.0,
    "Seconds between the keepalive pings the server sends on each open WebSocket; 0 sends none.",
)
_declare(
    "ws_ping_timeout",
    "websocket",
    non_negative_float,
    20.0,
    "Seconds a peer gets to answer a ping (and to answer a close frame) before the socket is closed "
    "(1011); 0 waits forever for pongs (a close is still given up on after 10 s).",
)
_declare(
    "ws_per_message_deflate",
    "websocket",
    to_bool,
    True,
    "Offer permessage-deflate compression (RFC 7692) to WebSocket clients that ask for it.",
)
_declare(
    "ws_max_queue",
    "websocket",
    positive_int,
    32,
    "Incoming WebSocket messages queued for an application that lags; at this many the server stops "
    "reading the socket until the application catches up (backpressure).",
)
_declare(
    "ws_write_limit",
    "websocket",
    size,
    64 * 1024,
    "Per-socket write buffer high-water mark in bytes: a `websocket.send` above it waits until the "
    "peer has read enough (backpressure).",
)
