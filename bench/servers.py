"""The servers a benchmark compares: name -> how to start it on an app with N workers, and a running one.

Peers that are not installed are skipped, with the reason (`available()`). Every server binds 127.0.0.1 on a
free port, logs at warning level without an access log, and is started with `procs.spawn` (pinned, own
session, parent-death signal) and stopped with `procs.stop` (TERM, bounded wait, KILL of the whole tree).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import load, procs

PY = sys.executable
HOST = load.HOST
START_TIMEOUT = 60.0  # importing on a busy 2-core machine, 8 workers


@dataclass(frozen=True)
class Spec:
    name: str
    interface: str  # "asgi" or "wsgi"
    module: str  # what must be importable
    argv: Callable[[str, int, int, dict[str, Any]], list[str]]  # (app, port, workers, options)
    signals_reload: bool = True  # HUP reloads the workers
    websocket: bool = True
    note: str = ""


def _corral(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    argv = [PY, "-m", "corral.master", app, "-w", str(workers), "-b", f"{HOST}:{port}", "--log-level", "warning"]
    if opt.get("threads"):
        argv += ["--threads", str(opt["threads"])]
    if opt.get("reuse_port"):
        argv.append("--reuse-port")
    if opt.get("preload"):
        argv.append("--preload")
    if opt.get("keepalive"):
        argv += ["--keep-alive", str(opt["keepalive"])]
    if opt.get("metrics"):
        argv += ["--metrics-bind", f"{HOST}:{free_port()}"]
    if opt.get("tls"):
        argv += ["--certfile", opt["tls"][0], "--keyfile", opt["tls"][1]]
    return argv


HOOKS_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooks_conf.py")


def _corral_threads1(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    """corral with --threads 1: a WSGI app on the worker's own thread (gunicorn sync's model)."""
    return _corral(app, port, workers, dict(opt, threads=1))


def _corral_hooks(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    """corral with gunicorn's pre_request/post_request hooks set (no-ops): what the hooks cost per request."""
    return [*_corral(app, port, workers, opt), "-c", HOOKS_CONF]


def _corral_pure(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    """corral parsing every request the pure-Python way (CORRAL_NO_EXTENSIONS=1): what its C parser buys."""
    return ["env", "CORRAL_NO_EXTENSIONS=1", *_corral(app, port, workers, opt)]


def _corral_threads1_pure(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    """corral-wsgi1 parsing every request the pure-Python way."""
    return _corral_pure(app, port, workers, dict(opt, threads=1))


def _corral_inherit(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    """corral with its workers under the master's CPU scheduling policy (SCHED_OTHER), not SCHED_BATCH: what
    the policy buys (corral.worker.serve.scheduling)."""
    return [*_corral(app, port, workers, opt), "--scheduling-policy", "inherit"]


BEFORE_ENV = "CORRAL_BENCH_BEFORE"  # the python of another checkout's venv: corral before a change


def _corral_before(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    """corral from another install (an older checkout's venv), for before/after figures in the same rounds."""
    argv = _corral(app, port, workers, opt)
    argv[0] = os.environ[BEFORE_ENV]
    return argv


def _corral_threads1_before(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    """corral-wsgi1 from another install (see _corral_before)."""
    return _corral_before(app, port, workers, dict(opt, threads=1))


def _uvicorn(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    argv = [
        PY,
        "-m",
        "uvicorn",
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if opt.get("keepalive"):
        argv += ["--timeout-keep-alive", str(opt["keepalive"])]
    if opt.get("tls"):
        argv += ["--ssl-certfile", opt["tls"][0], "--ssl-keyfile", opt["tls"][1]]
    return argv


def _gunicorn(worker_class: str) -> Callable[[str, int, int, dict[str, Any]], list[str]]:
    def argv(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
        out = [
            PY,
            "-m",
            "gunicorn",
            "-k",
            worker_class,
            "-w",
            str(workers),
            "-b",
            f"{HOST}:{port}",
            "--log-level",
            "warning",
            "--graceful-timeout",
            "5",
        ]
        if worker_class == "gthread":
            out += ["--threads", str(opt.get("threads") or 4)]
        if opt.get("keepalive"):
            out += ["--keep-alive", str(opt["keepalive"])]
        if opt.get("tls"):
            out += ["--certfile", opt["tls"][0], "--keyfile", opt["tls"][1]]
        return [*out, app]

    return argv


def _hypercorn(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
    argv = [
        PY,
        "-m",
        "hypercorn",
        "-k",
        "uvloop",
        "-w",
        str(workers),
        "-b",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        "--graceful-timeout",
        "5",
    ]
    if opt.get("keepalive"):
        argv += ["--keep-alive", str(opt["keepalive"])]
    if opt.get("tls"):
        argv += ["--certfile", opt["tls"][0], "--keyfile", opt["tls"][1]]
    return [*argv, app]


def _granian(interface: str) -> Callable[[str, int, int, dict[str, Any]], list[str]]:
    def argv(app: str, port: int, workers: int, opt: dict[str, Any]) -> list[str]:
        out = [
            PY,
            "-m",
            "granian",
            "--interface",
            interface,
            "--workers",
            str(workers),
            "--host",
            HOST,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        out.append("--respawn-failed-workers")  # off by default: a crashed worker would stop granian
        if interface == "asgi":
            out += ["--loop", "uvloop"]
        else:
            out += ["--blocking-threads", str(opt.get("threads") or 4)]
        if opt.get("tls"):  # the key must be PKCS#8: throughput.self_signed's is
            out += ["--ssl-certificate", opt["tls"][0], "--ssl-keyfile", opt["tls"][1]]
        return [*out, app]

    return argv


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("corral", "asgi", "corral.master", _corral),
        Spec("uvicorn", "asgi", "uvicorn", _uvicorn, note="httptools + uvloop, --workers N"),
        Spec(
            "gunicorn-uvicorn",
            "asgi",
            "uvicorn.workers",
            _gunicorn("uvicorn.workers.UvicornWorker"),
            note="gunicorn -k uvicorn.workers.UvicornWorker",
        ),
        Spec("hypercorn", "asgi", "hypercorn", _hypercorn, note="-k uvloop"),
        Spec("granian", "asgi", "granian", _granian("asgi"), note="--interface asgi --loop uvloop"),
        Spec("corral-wsgi", "wsgi", "corral.master", _corral, websocket=False),
        Spec(
            "corral-wsgi1",
            "wsgi",
            "corral.master",
            _corral_threads1,
            websocket=False,
            note="--threads 1: the app on the worker's own thread",
        ),
        Spec("corral-hooks", "asgi", "corral.master", _corral_hooks, note="pre_request + post_request set (no-ops)"),
        Spec("corral-pure", "asgi", "corral.master", _corral_pure, note="CORRAL_NO_EXTENSIONS=1: no C parser"),
        Spec(
            "corral-wsgi1-pure",
            "wsgi",
            "corral.master",
            _corral_threads1_pure,
            websocket=False,
            note="--threads 1, CORRAL_NO_EXTENSIONS=1",
        ),
        Spec("corral-inherit", "asgi", "corral.master", _corral_inherit, note="--scheduling-policy inherit"),
        Spec(
            "corral-wsgi-inherit",
            "wsgi",
            "corral.master",
            _corral_inherit,
            websocket=False,
            note="--scheduling-policy inherit",
        ),
        Spec("corral-before", "asgi", "corral.master", _corral_before, note=f"corral from ${BEFORE_ENV}'s python"),
        Spec(
            "corral-wsgi1-before",
            "wsgi",
            "corral.master",
            _corral_threads1_before,
            websocket=False,
            note=f"--threads 1, corral from ${BEFORE_ENV}'s python",
        ),
        Spec("gunicorn-sync", "wsgi", "gunicorn", _gunicorn("sync"), websocket=False),
        Spec("gunicorn-gthread", "wsgi", "gunicorn", _gunicorn("gthread"), websocket=False),
        Spec("granian-wsgi", "wsgi", "granian", _granian("wsgi"), websocket=False, note="--interface wsgi"),
    )
}
# `corral-wsgi` is corral on the WSGI app: its row keeps the WSGI table apart from the ASGI ones.
# `corral-hooks` runs only when named (--servers corral,corral-hooks): it measures the hooks' cost.
# `corral-pure` and `corral-wsgi1-pure` too: what the compiled request parser buys.
# `corral-inherit` and `corral-wsgi-inherit` too: what running the workers under SCHED_BATCH buys.
OPT_IN = (
    "corral-hooks",
    "corral-before",
    "corral-wsgi1-before",
    "corral-pure",
    "corral-wsgi1-pure",
    "corral-inherit",
    "corral-wsgi-inherit",
)


def available(name: str) -> str | None:
    """None when `name` can run here, else why not."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown server (known: {', '.join(SPECS)})"
    if name in ("corral-before", "corral-wsgi1-before") and not os.access(os.environ.get(BEFORE_ENV, ""), os.X_OK):
        return f"set {BEFORE_ENV} to the python of the checkout to compare with (its venv's bin/python)"
    try:
        if importlib.util.find_spec(spec.module) is None:
            raise ImportError
    except (ImportError, ValueError):
        return f"{spec.module} is not installed (pip install -e '.[bench]')"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: Any, timeout: float = 30.0) -> bool:
    """True once something accepts connections on HOST:`port`; False when `proc` exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def base_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The caller's environment without corral's and systemd's variables, the checkout first on PYTHONPATH, then
    `extra` (a None value removes the variable)."""
    # CORRAL_NO_EXTENSIONS stays: it chooses corral's pure-Python request parser, a thing to measure.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CORRAL_", "_CORRAL_", "LISTEN_")) or k == "CORRAL_NO_EXTENSIONS"
    }
    env["PYTHONPATH"] = procs.ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Server:
    """One running server (a master and its workers, or a single process)."""

    spec: Spec
    app: str
    workers: int
    cpus: set[int] | None
    logdir: str
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)  # on top of base_env()
    label: str = ""
    port: int = 0
    proc: Any = None
    started_s: float = float("nan")  # spawn to first 200
    log_path: str = ""

    @property
    def name(self) -> str:
        return self.label or self.spec.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"{'https' if self.options.get('tls') else 'http'}://{HOST}:{self.port}/"

    def start(self, wait_workers: bool = False) -> Server:
        self.port = free_port()
        self.log_path = os.path.join(self.logdir, f"{self.name}-{self.port}.log")
        argv = self.spec.argv(self.app, self.port, self.workers, self.options)
        with open(self.log_path, "wb") as log:
            t0 = time.monotonic()
            self.proc = procs.spawn(argv, self.cpus, base_env(self.env), log=log)
        deadline = t0 + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                if load.probe(self.port, timeout=1.0, tls=bool(self.options.get("tls"))) == 200:
                    self.started_s = time.monotonic() - t0
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT:g}s:\n{self.log_tail()}")
            time.sleep(0.005)
        if wait_workers:
            self.wait_workers()
        return self

    def wait_workers(self, timeout: float = START_TIMEOUT) -> None:
        """Until `workers` serving processes exist (bounded), then a moment for them to start accepting."""
        deadline = time.monotonic() + timeout
        while len(procs.workers(self.pid)) < self.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in procs.workers(self.pid)]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)

    def log_tail(self, limit: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""


class Running:
    """Servers started together and stopped together, whatever happens (a context manager)."""

    def __init__(self, servers: list[Server], notes: dict[str, str], wait_workers: bool = False) -> None:
        self.servers = servers
        self.notes = notes
        self.wait_workers = wait_workers

    def __enter__(self) -> list[Server]:
        try:
            for server in self.servers:
                procs.check_signalled()
                server.start(self.wait_workers)
        except BaseException:
            self.__exit__()
            raise
        return self.servers

    def __exit__(self, *exc: Any) -> None:
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is not None and server.proc in procs._live:
                self.notes[f"{server.name} (port {server.port})"] = f"exited by itself: {server.proc.returncode}"
            server.stop()
            tail = "\n".join(line for line in server.log_tail().splitlines() if line.strip())
            if tail:
                self.notes[f"{server.name} (port {server.port}) log"] = tail[-1500:]
