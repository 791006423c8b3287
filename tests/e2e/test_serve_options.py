"""Master options end to end: log files and USR1, --log-config, --umask, --user/--group, --chdir,
--max-worker-memory."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import sys

import psutil
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from serve_harness import Master, free_port, get, wait_until, write_apps


@pytest.fixture
def apps(tmp_path):
    return write_apps(tmp_path)


@pytest.fixture
def start(apps, tmp_path):
    started: list[Master] = []

    def start(*args: str, cwd=None, bind=None) -> Master:
        port = free_port()
        pidfile = tmp_path / "serve.pid"
        master = Master(["-b", bind or f"127.0.0.1:{port}", "--pid", str(pidfile), *args], cwd or apps, port, pidfile)
        started.append(master)
        return master

    yield start
    for master in started:
        master.stop()


def test_usr1_reopens_the_error_and_access_logs_in_master_and_workers(start, tmp_path):
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    master = start("--error-logfile", str(error_log), "--access-logfile", str(access_log), "apps:app")
    master.wait_workers(1)
    assert get(master.port, "/first")[0] == 200
    wait_until(lambda: "/first" in access_log.read_text(), "the first access line")
    assert "Worker 1" in error_log.read_text()
    error_log.rename(tmp_path / "error.log.1")  # what logrotate does
    access_log.rename(tmp_path / "access.log.1")
    master.signal(signal.SIGUSR1)
    wait_until(lambda: error_log.exists() and "Reopened the log files" in error_log.read_text(), "a new error log")

    def new_access_line() -> bool:
        get(master.port, "/second")  # the worker reopens when it reads the master's message
        return access_log.exists() and "/second" in access_log.read_text()

    wait_until(new_access_line, "a new access log", interval=0.1)
    assert master.stop() == OK


def test_log_config_dict_from_json(start, tmp_path):
    log = tmp_path / "custom.log"
    config = {
        "version": 1,
        "formatters": {"custom": {"format": "CUSTOM %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log), "formatter": "custom"}},
        "loggers": {"corral": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    (tmp_path / "logging.json").write_text(json.dumps(config))
    master = start("--log-config", str(tmp_path / "logging.json"), "apps:app")
    master.wait_workers(1)
    wait_until(lambda: "CUSTOM INFO Worker 1" in log.read_text(), "lines in the custom log")


def test_unix_socket_mode_is_gunicorns_by_default(start, tmp_path):
    """No --umask: the socket is 0777 (gunicorn's umask 0), so nginx running as another user can connect."""
    path = tmp_path / "s.sock"
    master = start("apps:app", bind=f"unix:{path}")
    master.wait_workers(1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777
    assert stat.S_IMODE(os.stat(master.pidfile).st_mode) == 0o644
    assert master.stop() == OK


def test_umask_applies_to_the_unix_socket_only(start, tmp_path):
    """--umask is the socket file's mask, as in gunicorn: the pid file stays 0644 and the workers keep the
    process's own umask (files the application writes are not made private or public by it)."""
    path = tmp_path / "s.sock"
    master = start("--umask", "077", "apps:app", bind=f"unix:{path}")
    (worker,) = master.wait_workers(1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(master.pidfile).st_mode) == 0o644
    with open(f"/proc/{worker['pid']}/status") as fh:
        inherited = next(line.split()[1] for line in fh if line.startswith("Umask:"))
    with open("/proc/self/status") as fh:
        ours = next(line.split()[1] for line in fh if line.startswith("Umask:"))
    assert inherited == ours
    assert master.stop() == OK
    assert not path.exists()


def _can_bind_ipv6(host: str) -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind((host, 0))
        return True
    except OSError:
        return False


def test_ipv6_wildcard_bind_answers_ipv4_and_ipv6(start, tmp_path):
    """`-b [::]:PORT` (common in Docker images) is dual-stack, as gunicorn's: IPv4 clients and probes get
    answers, not a refused connection."""
    import http.client

    if not _can_bind_ipv6("::"):
        pytest.skip("IPv6 is off on this machine")
    port = free_port()
    master = start("apps:app", bind=f"[::]:{port}")
    (worker,) = master.wait_workers(1)
    assert get(port) == (200, str(worker["pid"]))  # get() talks to 127.0.0.1
    if not _can_bind_ipv6("::1"):
        pytest.skip("no IPv6 loopback on this machine (the IPv4 half passed)")
    conn = http.client.HTTPConnection("::1", port, timeout=30)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read().decode()) == (200, str(worker["pid"]))
    finally:
        conn.close()
    assert master.stop() == OK


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_workers_drop_privileges(start):
    nobody = pwd.getpwnam("nobody")
    master = start("--preload", "-u", "nobody", "-g", str(nobody.pw_gid), "apps:app")
    (worker,) = master.wait_workers(1)
    uids, gids = psutil.Process(worker["pid"]).uids(), psutil.Process(worker["pid"]).gids()
    assert (uids.real, uids.effective, gids.effective) == (nobody.pw_uid, nobody.pw_uid, nobody.pw_gid)
    assert psutil.Process(master.pid).uids().real == 0  # the master keeps its user (it must signal and rebind)
    assert get(master.port)[0] == 200


def test_chdir_loads_the_app_from_there(start, apps, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    master = start("--chdir", str(apps), "apps:app", cwd=elsewhere)
    (worker,) = master.wait_workers(1)
    assert get(master.port) == (200, str(worker["pid"]))


def test_max_worker_memory_replaces_the_worker(start):
    master = start("--max-worker-memory", "1M", "apps:app")
    (first,) = master.wait_workers(1)
    master.wait_for_line(f"(pid {first['pid']}) uses")
    master.wait_workers(1, lambda ws: ws[0]["pid"] != first["pid"])
    assert get(master.port)[0] == 200


GC_APP = """
import gc
import os

FROZEN_AT_IMPORT = gc.get_freeze_count()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    body = f"{os.getpid()} {FROZEN_AT_IMPORT} {gc.get_freeze_count()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.parametrize(
    "args, frozen",
    [((), True), (("--no-gc-freeze",), False), (("--preload",), True)],
    ids=["default", "off", "preload"],
)
def test_gc_freeze_moves_the_loaded_application_out_of_the_collectors_way(start, tmp_path, args, frozen):
    (tmp_path / "gcapp.py").write_text(GC_APP)
    master = start(*args, "gcapp:app", cwd=tmp_path)
    master.wait_workers(1)
    status, body = get(master.port, "/")
    assert status == 200
    pid, at_import, now = (int(x) for x in body.split())
    # What a fresh interpreter starts with (0, but CPython 3.12 starts with a few hundred objects there).
    fresh = int(
        subprocess.run(
            [sys.executable, "-c", "import gc; print(gc.get_freeze_count())"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    )
    assert pid != master.proc.pid and at_import == fresh  # nothing froze before the application was imported
    # Frozen: the application module, its imports and the worker's server are in the permanent generation.
    assert (now > fresh + 1000) if frozen else (now == fresh), (body, fresh)
