"""`serve status` without --pid (the runtime dir), with --json and --watch; the health path and the JSON access
log of a real `serve`; bad observability flags get one line and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import CONFIG_ERROR
from serve_harness import WAIT, Master, clean_env, free_port, get, wait_until, write_apps


def status_cmd(args: list[str], runtime: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corral.master", "status", *args],
        cwd=str(cwd),
        env=clean_env({"XDG_RUNTIME_DIR": str(runtime)}),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    folder = tmp_path / "xdg"
    folder.mkdir()
    return folder


def test_status_finds_the_one_master_started_without_pid(tmp_path, runtime):
    apps = write_apps(tmp_path)
    nothing = status_cmd([], runtime, tmp_path)
    assert nothing.returncode == 1
    assert nothing.stderr.strip().splitlines() == [
        (
            f"serve: error: no running corral master found in {runtime / 'corral'}; for one started with --pid FILE, "
            "run: serve status --pid FILE"
        )
    ]

    port = free_port()
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    master = Master(
        ["-w", "2", "-b", f"127.0.0.1:{port}", "--metrics-bind", f"127.0.0.1:{free_port()}", "apps:app"],
        apps,
        port,
        pidfile=runtime / "corral" / "PID.pid",
        env=env,
    )
    second = None
    try:
        master.pidfile = runtime / "corral" / f"{master.pid}.pid"
        master.wait_workers(2)
        for _ in range(5):
            assert get(port)[0] == 200
        # The figures arrive with the next heartbeat.
        document = wait_until(
            lambda: (
                (d := json.loads(status_cmd(["--json"], runtime, tmp_path).stdout))["metrics"]["requests"] == 5 and d
            ),
            "the status to count the requests",
        )
        assert document["master"]["pid"] == master.pid and len(document["workers"]) == 2
        assert document["metrics"]["status_classes"] == {"2xx": 5} and document["metrics"]["p50_ms"] is not None

        table = status_cmd([], runtime, tmp_path)
        assert table.returncode == 0, table.stderr
        assert "requests 5 " in table.stdout and "p99 " in table.stdout and "restarts: none" in table.stdout

        # --watch --json: one document per line, until stopped.
        watch = subprocess.Popen(
            [sys.executable, "-m", "corral.master", "status", "--watch", "--json", "-n", "0.2"],
            cwd=str(tmp_path),
            env=clean_env(env),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            lines = [watch.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]  # stdout=PIPE
        finally:
            watch.kill()
            watch.wait(WAIT)
        assert [json.loads(line)["master"]["pid"] for line in lines] == [master.pid, master.pid]

        # Two masters: status says which pid files to pick from.
        port2 = free_port()
        second = Master(["-b", f"127.0.0.1:{port2}", "apps:app"], apps, port2, env=env)
        second.pidfile = runtime / "corral" / f"{second.pid}.pid"
        second.wait_workers(1)
        both = status_cmd([], runtime, tmp_path)
        assert both.returncode == 1
        assert "2 corral masters are running" in both.stderr and str(second.pid) in both.stderr
    finally:
        if second is not None:
            second.stop()
        master.stop()
    assert not (runtime / "corral" / f"{master.pid}.pid").exists()  # removed at exit


def test_health_path_and_json_access_log_on_a_real_serve(tmp_path):
    apps = write_apps(tmp_path)
    port = free_port()
    pidfile = tmp_path / "h.pid"
    log = tmp_path / "access.log"
    master = Master(
        [
            "-b",
            f"127.0.0.1:{port}",
            "--pid",
            str(pidfile),
            "--health-path",
            "/healthz",
            "--access-logfile",
            str(log),
            "--access-log-format",
            "json",
            "apps:app",
        ],
        apps,
        port,
        pidfile,
    )
    try:
        master.wait_workers(1)
        assert get(port, "/healthz") == (200, "OK\n")
        status, body = get(port, "/x?y=1")
        assert status == 200
        records = wait_until(
            lambda: (
                [json.loads(line) for line in log.read_text().splitlines()]
                if log.exists() and len(log.read_text().splitlines()) >= 2
                else None
            ),
            "two access log lines",
        )
        assert [(r["path"], r["status"]) for r in records] == [("/healthz", 200), ("/x", 200)]
        assert records[1]["query"] == "y=1" and records[1]["pid"] == int(body)
    finally:
        master.stop()


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--health-path", "healthz"],
            "invalid value for --health-path (from command line): expected an absolute path",
        ),
        (["--statsd-host", "localhost"], "invalid value for --statsd-host (from command line): expected HOST:PORT"),
    ],
)
def test_bad_observability_flags(tmp_path, args, expected):
    result = subprocess.run(
        [sys.executable, "-m", "corral.master", *args, "apps:app"],
        cwd=str(tmp_path),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == CONFIG_ERROR
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("serve: error: " + expected), result.stderr


def test_metrics_bind_in_use_is_a_bind_error(tmp_path):
    import socket

    from corral.shared.exitcodes import BIND_ERROR

    write_apps(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "corral.master",
                "-b",
                f"127.0.0.1:{free_port()}",
                "--metrics-bind",
                f"127.0.0.1:{taken.getsockname()[1]}",
                "apps:app",
            ],
            cwd=str(tmp_path),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    assert result.returncode == BIND_ERROR, result.stderr
    assert "serve: error:" in result.stderr and "in use" in result.stderr
