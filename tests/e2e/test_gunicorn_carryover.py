"""A gunicorn user switches by changing one word: gunicorn config files and command lines, run unchanged by
`serve` (GUNICORN_CMD_ARGS, gunicorn's log configs and logger names, --capture-output, a Docker image's
computed config and --print-config of it, a project's UvicornWorker subclass, gunicorn's 0 for "no limit").
The server hooks are test_gunicorn_carryover_hooks.py's."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from serve_harness import Master, free_port, get, wait_until, write_apps


def test_gunicorn_command_line_with_serve_instead(tmp_path):
    """`gunicorn -w 2 -k uvicorn.workers.UvicornWorker -b ... --access-logfile - -e K=V --worker-tmp-dir
    /dev/shm app:app`, and GUNICORN_CMD_ARGS, with `gunicorn` replaced by `serve`."""
    apps = write_apps(tmp_path)
    (apps / "envapp.py").write_text(
        textwrap.dedent("""
        import os
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": os.environ.get("DEPLOY", "-").encode()})
    """)
    )
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    args = [
        "-w",
        "2",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "-b",
        f"127.0.0.1:{port}",
        "--access-logfile",
        "-",
        "-e",
        "DEPLOY=blue",
        "--worker-tmp-dir",
        "/dev/shm",
        "--pid",
        str(pidfile),
        "envapp:app",
    ]
    master = Master(args, apps, port, pidfile, env={"GUNICORN_CMD_ARGS": "--workers 3 --max-requests 1000"})
    try:
        master.wait_workers(2)  # the command line beats GUNICORN_CMD_ARGS
        assert get(port) == (200, "blue")
        master.wait_for_line('"GET / HTTP/1.1" 200')
        assert master.status()["workers"][0]["state"] == "ready"
    finally:
        assert master.stop() == OK
    master = Master(
        ["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "envapp:app"],
        apps,
        port,
        pidfile,
        env={"GUNICORN_CMD_ARGS": "--workers 3 -e DEPLOY=green"},
    )
    try:
        master.wait_workers(3)
        assert get(port) == (200, "green")
    finally:
        master.stop()


LOGGING_JSON = {
    "version": 1,
    "formatters": {"json": {"format": "%(name)s|%(message)s"}},
    "handlers": {
        "access": {"class": "logging.FileHandler", "filename": "ACCESS", "formatter": "json"},
        "error": {"class": "logging.FileHandler", "filename": "ERROR", "formatter": "json"},
    },
    "loggers": {
        "gunicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        "gunicorn.error": {"handlers": ["error"], "level": "INFO", "propagate": False},
    },
}


@pytest.mark.parametrize("how", ["log-config-json", "log-config-json and access-logfile -", "logconfig_dict"])
def test_a_gunicorn_log_config_applies_to_both_logs(tmp_path, how):
    apps = write_apps(tmp_path)
    config = json.loads(
        json.dumps(LOGGING_JSON)
        .replace("ACCESS", str(tmp_path / "access.log"))
        .replace("ERROR", str(tmp_path / "error.log"))
    )
    (tmp_path / "logging.json").write_text(json.dumps(config))
    flags = ["--log-config-json", str(tmp_path / "logging.json")]
    if how == "log-config-json and access-logfile -":
        flags += ["--access-logfile", "-"]
    elif how == "logconfig_dict":
        (apps / "gunicorn.conf.py").write_text(f"logconfig_dict = {config!r}\n")
        flags = []
    (apps / "printer.py").write_text(
        textwrap.dedent("""
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            print("printed by the app", flush=True)
            if scope["path"] == "/boom":
                raise RuntimeError("boom in the worker")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
    """)
    )
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    # Without --access-logfile, as in gunicorn, a log config that configures the access logger turns it on;
    # with `--access-logfile -` the config still decides where the lines go (it is not bypassed).
    master = Master(["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), *flags, "printer:app"], apps, port, pidfile)
    try:
        master.wait_workers(1)
        assert get(port, "/logged") == (200, "ok")
        assert get(port, "/boom")[0] == 500
        wait_until(
            lambda: (tmp_path / "access.log").exists() and "/boom" in (tmp_path / "access.log").read_text(),
            "the access lines",
        )
        wait_until(lambda: "boom in the worker" in (tmp_path / "error.log").read_text(), "the worker's traceback")
        name, message = (tmp_path / "access.log").read_text().splitlines()[0].split("|", 1)
        assert name == "gunicorn.access" and '"GET /logged HTTP/1.1" 200' in message
        text = (tmp_path / "error.log").read_text()
        errors = [line.split("|", 1) for line in text.splitlines() if re.match(r"[\w.]+\|", line)]  # not tracebacks
        # the master's records and the worker's (its traceback of /boom), all by gunicorn's name
        assert {name for name, _ in errors} == {"gunicorn.error"}, text
        assert any("Booting worker" in message for _, message in errors), text
        assert "RuntimeError: boom in the worker" in text
        assert "GET /logged" not in master.output
    finally:
        master.stop()


def test_capture_output_sends_prints_to_the_error_log(tmp_path):
    apps = write_apps(tmp_path)
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    errorlog = tmp_path / "error.log"
    master = Master(
        [
            "-b",
            f"127.0.0.1:{port}",
            "--pid",
            str(pidfile),
            "--error-logfile",
            str(errorlog),
            "--capture-output",
            "apps:app",
        ],
        apps,
        port,
        pidfile,
    )
    try:
        master.wait_workers(1)
        assert get(port, "/slow?0")[0] == 200  # the app prints "slow request started in PID"
        wait_until(lambda: "slow request started in" in errorlog.read_text(), "the print in the error log")
        assert "slow request started" not in master.output
    finally:
        master.stop()


# The shape of the gunicorn_conf.py of a well-known uvicorn-gunicorn Docker image: every setting computed
# from the environment through helper variables, the computed values printed as JSON; plus what other
# projects' configs carry: postponed annotations, a structlog-style `pre_chain` handed to a logconfig_dict
# formatter, and one misspelt setting (gunicorn ignores it silently).
DOCKER_IMAGE_CONF = """
from __future__ import annotations

import json
import logging
import multiprocessing
import os

workers_per_core_str = os.getenv("WORKERS_PER_CORE", "1")
max_workers_str = os.getenv("MAX_WORKERS")
use_max_workers = None
if max_workers_str:
    use_max_workers = int(max_workers_str)
web_concurrency_str = os.getenv("WEB_CONCURRENCY", None)

host = os.getenv("HOST", "127.0.0.1")
port = os.getenv("PORT", "80")
bind_env = os.getenv("BIND", None)
use_loglevel = os.getenv("LOG_LEVEL", "info")
if bind_env:
    use_bind = bind_env
else:
    use_bind = f"{host}:{port}"

cores = multiprocessing.cpu_count()
workers_per_core = float(workers_per_core_str)
default_web_concurrency = workers_per_core * cores
if web_concurrency_str:
    web_concurrency = int(web_concurrency_str)
    assert web_concurrency > 0
else:
    web_concurrency = max(int(default_web_concurrency), 2)
    if use_max_workers:
        web_concurrency = min(web_concurrency, use_max_workers)
accesslog_var = os.getenv("ACCESS_LOG", "-")
use_accesslog = accesslog_var or None
errorlog_var = os.getenv("ERROR_LOG", "-")
use_errorlog = errorlog_var or None
graceful_timeout_str = os.getenv("GRACEFUL_TIMEOUT", "120")
timeout_str = os.getenv("TIMEOUT", "120")
keepalive_str = os.getenv("KEEP_ALIVE", "5")

# Gunicorn config variables
loglevel = use_loglevel
workers = web_concurrency
bind = use_bind
errorlog = use_errorlog
worker_tmp_dir = "/dev/shm"
accesslog = use_accesslog
graceful_timeout = int(graceful_timeout_str)
timeout = int(timeout_str)
keepalive = int(keepalive_str)
max_requests_jiter = 100


def add_worker(logger, method_name, event_dict):
    event_dict["worker"] = os.getpid()
    return event_dict


pre_chain = [add_worker]


class PreChainFormatter(logging.Formatter):
    def __init__(self, fmt=None, foreign_pre_chain=()):
        super().__init__(fmt)
        self.chain = list(foreign_pre_chain)


logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"chained": {"()": PreChainFormatter, "fmt": "%(name)s|%(message)s",
                                 "foreign_pre_chain": pre_chain}},
    "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "chained",
                           "stream": "ext://sys.stdout"}},
    "loggers": {"gunicorn.error": {"handlers": ["out"], "level": "INFO", "propagate": False},
                 "gunicorn.access": {"handlers": ["out"], "level": "INFO", "propagate": False}},
}

log_data = {
    "loglevel": loglevel,
    "workers": workers,
    "bind": bind,
    "graceful_timeout": graceful_timeout,
    "timeout": timeout,
    "keepalive": keepalive,
    "errorlog": errorlog,
    "accesslog": accesslog,
    "workers_per_core": workers_per_core,
    "use_max_workers": use_max_workers,
    "host": host,
    "port": port,
}
print(json.dumps(log_data), flush=True)
"""


def test_a_docker_images_config_with_helpers_runs_unchanged(tmp_path):
    """Helper variables, a misspelt setting and `from __future__ import annotations` start, with one warning
    line naming the misspelling; `worker_tmp_dir` gets its own line saying what corral does instead; the
    real settings apply."""
    apps = write_apps(tmp_path)
    port = free_port()
    (apps / "gunicorn.conf.py").write_text(DOCKER_IMAGE_CONF)
    master = Master(
        ["-k", "uvicorn.workers.UvicornWorker", "--pid", str(tmp_path / "serve.pid"), "apps:app"],
        apps,
        port,
        tmp_path / "serve.pid",
        env={"PORT": str(port), "WEB_CONCURRENCY": "2", "GRACEFUL_TIMEOUT": "7", "CORRAL_SRC": "/src"},
    )
    try:
        master.wait_workers(2)
        assert get(port)[0] == 200
        master.wait_for_line("gunicorn.access|127.0.0.1 - - ")  # the logconfig_dict's formatter, on stdout
        assert master.status()["workers"][0]["state"] == "ready"
        warnings = [line for line in master.output.splitlines() if "warning" in line.lower()]
        assert warnings == [
            (
                f"serve: warning: config file {apps / 'gunicorn.conf.py'}: not a setting, ignored: "
                "'max_requests_jiter' (did you mean 'max_requests_jitter'?)"
            ),
            (
                f"serve: warning: config file {apps / 'gunicorn.conf.py'}: gunicorn's 'worker_tmp_dir' "
                "is ignored: liveness is a heartbeat over a socket pair, not a temp file's mtime"
            ),
        ], master.output
        assert f'"bind": "127.0.0.1:{port}"' in master.output  # the file's own print ran
    finally:
        assert master.stop() == OK


def test_the_same_config_is_checked_without_starting(tmp_path):
    apps = write_apps(tmp_path)
    (apps / "gunicorn.conf.py").write_text(DOCKER_IMAGE_CONF)
    import subprocess

    from serve_harness import clean_env

    result = subprocess.run(
        [sys.executable, "-m", "corral.master", "--print-config", "apps:app"],
        cwd=apps,
        env=clean_env({"WEB_CONCURRENCY": "3", "LOG_LEVEL": "warning", "KEEP_ALIVE": "9"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == OK, result.stderr
    lines = result.stdout.splitlines()
    for expected in (
        "workers = 3",
        "loglevel = warning",
        "keepalive = 9.0",
        "graceful_timeout = 120.0",
        "timeout = 120.0",
        "bind = 127.0.0.1:80",
        "accesslog = -",
        "max_requests_jitter = 0",
    ):
        assert expected in lines, expected


PROJECT_WORKER = """
from uvicorn.workers import UvicornWorker


class MyUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "asyncio", "http": "auto", "lifespan": "off", "root_path": "/api",
                     "proxy_headers": False}
"""

SCOPE_APP = """
import json

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("lifespan runs although the worker class's CONFIG_KWARGS say lifespan='off'")
    body = {"root_path": scope["root_path"], "client": scope["client"][0], "scheme": scope["scheme"]}
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
"""


@pytest.mark.parametrize("uvicorn_importable", [True, False])
def test_a_projects_uvicorn_worker_subclass(tmp_path, uvicorn_importable):
    """`-k myproject.workers.MyUvicornWorker`: ASGI, with its CONFIG_KWARGS applied (lifespan off, root_path,
    no trusted proxy headers); `loop` named in one warning. Without uvicorn installed next to corral, the
    class is read from its source, and the warning says so."""
    if uvicorn_importable:
        pytest.importorskip("uvicorn.workers")
    (tmp_path / "myproject").mkdir()
    (tmp_path / "myproject" / "__init__.py").write_text("")
    (tmp_path / "myproject" / "workers.py").write_text(PROJECT_WORKER)
    (tmp_path / "scopeapp.py").write_text(SCOPE_APP)
    env = {}
    if not uvicorn_importable:
        shadow = tmp_path / "shadow"
        shadow.mkdir()
        (shadow / "sitecustomize.py").write_text("import sys\nsys.modules['uvicorn'] = None\n")
        env["PYTHONPATH"] = str(shadow)
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(
        [
            "-k",
            "myproject.workers.MyUvicornWorker",
            "-b",
            f"127.0.0.1:{port}",
            "--pid",
            str(pidfile),
            "--forwarded-allow-ips",
            "*",
            "scopeapp:app",
        ],
        tmp_path,
        port,
        pidfile,
        env=env,
    )
    try:
        master.wait_workers(1)
        status, text = get(port, "/x", headers={"X-Forwarded-For": "10.9.8.7", "X-Forwarded-Proto": "https"})
        assert status == 200
        assert json.loads(text) == {"root_path": "/api", "client": "127.0.0.1", "scheme": "http"}
        warnings = [line for line in master.output.splitlines() if "warning" in line]
        assert len(warnings) == 1, master.output
        assert "CONFIG_KWARGS ignored: loop='asyncio' (corral always runs uvloop)" in warnings[0]
        assert ("read from its source (uvicorn is not installed here)" in warnings[0]) is not uvicorn_importable
    finally:
        assert master.stop() == OK


def test_limit_request_line_0_allows_long_urls(tmp_path):
    """gunicorn's `--limit-request-line 0` (and `--limit-request-field_size 0`), used to allow long URLs."""
    apps = write_apps(tmp_path)
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(
        [
            "-b",
            f"127.0.0.1:{port}",
            "--pid",
            str(pidfile),
            "--limit-request-line",
            "0",
            "--limit-request-field_size",
            "0",
            "apps:app",
        ],
        apps,
        port,
        pidfile,
    )
    try:
        master.wait_workers(1)
        long_url = "/search?q=" + "x" * 20_000
        assert get(port, long_url, headers={"X-Filter": "y" * 20_000})[0] == 200
        assert "warning" not in master.output
    finally:
        assert master.stop() == OK
