"""The systemd socket + service unit recipes (docs/recipes/corral.socket, corral.service), run as systemd runs them.

`systemd-socket-activate` stands in for systemd (which is not PID 1 here): it listens on the socket unit's
`ListenStream=`, and on the first connection execs the service's `ExecStart=` in the same process with
LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set and a clean environment, as systemd does. Then the unit's
`ExecReload=` (HUP) and `KillSignal=` within `TimeoutStopSec=` are checked. Only paths and the app are
substituted (see recipes.py).
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from recipes import APP_DIR, SERVE, local_serve, localize_serve, recipe, serve_argv, unit
from serve_harness import WAIT, Master, wait_until, write_apps

ACTIVATE = shutil.which("systemd-socket-activate") or (
    "/usr/bin/systemd-socket-activate" if os.access("/usr/bin/systemd-socket-activate", os.X_OK) else None
)
pytestmark = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate is not installed (.ci/run installs the systemd package)"
)


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: a unix datagram socket the test binds and reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.extend(data.decode().splitlines())

    def wait_for(self, line: str, after: int = 0) -> int:
        """Index of the first `line` at or after message `after`, waiting for it (bounded)."""

        def found() -> int | None:
            messages = self.poll()
            return next((i + 1 for i in range(after, len(messages)) if messages[i] == line), None)

        return wait_until(found, f"{line} on NOTIFY_SOCKET") - 1

    def close(self) -> None:
        self.sock.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = WAIT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get(path: Path) -> tuple[int, str]:
    conn = UnixHTTPConnection(str(path))
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def one(values: dict[str, list[str]], key: str) -> str:
    assert len(values.get(key, ())) == 1, f"the unit should set {key}= once: {values.get(key)}"
    return values[key][0]


def seconds(value: str) -> float:
    """systemd time spans as the recipes use them: `45`, `45s`, `1min 30s`."""
    total = 0.0
    for number, unit_name in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s)?", value):
        total += float(number) * {"min": 60, "ms": 0.001, "s": 1, "": 1}[unit_name]
    return total


def test_the_units_are_consistent_with_the_serve_command():
    socket_unit, service = unit("corral.socket"), unit("corral.service")
    exec_start = shlex.split(one(service, "ExecStart"))
    assert exec_start == serve_argv(), "ExecStart= should be the serve recipe's command"
    bind = exec_start[exec_start.index("-b") + 1]
    assert bind == "unix:" + one(socket_unit, "ListenStream")  # same address with or without systemd
    assert one(service, "WorkingDirectory") == APP_DIR
    assert "corral.socket" in " ".join(service.get("Requires", []))
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "KillSignal") == "SIGTERM"
    assert one(service, "Type") == "notify"  # corral speaks sd_notify: READY=1 once the workers serve
    graceful = 30.0  # --graceful-timeout's default; the recipe's command does not change it
    if "--graceful-timeout" in exec_start:
        graceful = float(exec_start[exec_start.index("--graceful-timeout") + 1])
    # The master's longest graceful stop: graceful + 5 s before stragglers are killed + 5 s to reap them.
    assert seconds(one(service, "TimeoutStopSec")) > graceful + 10


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser accepts both units: no unknown key, bad value or missing piece."""
    serve = local_serve()
    if len(serve) != 1:
        pytest.skip("no `serve` script to stand in for ExecStart's binary")
    for name in ("corral.socket", "corral.service"):
        text = (
            recipe(name).replace(SERVE, serve[0]).replace(f"WorkingDirectory={APP_DIR}", f"WorkingDirectory={tmp_path}")
        )
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "corral.socket"), str(tmp_path / "corral.service")],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line or "corral." in line
    ]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_socket_activation_reload_and_stop(tmp_path):
    socket_unit, service = unit("corral.socket"), unit("corral.service")
    run_dir = Path(tempfile.mkdtemp(prefix="corral-run-", dir="/tmp"))  # short: unix socket paths <= 107 bytes
    listen = one(socket_unit, "ListenStream").replace("/run/corral/", f"{run_dir}/")
    pidfile = run_dir / "corral.pid"
    workdir = write_apps(tmp_path)  # WorkingDirectory=/srv/app -> here; apps:app answers with its pid
    argv = localize_serve(shlex.split(one(service, "ExecStart")), run_dir, "apps:app")
    assert str(pidfile) in argv
    fdname = socket_unit.get("FileDescriptorName", ["corral.socket"])[0]  # systemd's default: the unit name
    notify = NotifySocket(run_dir / "notify.sock")
    watchdog_usec = int(seconds(one(service, "WatchdogSec")) * 1e6)
    master = Master(
        [],
        workdir,
        pidfile=pidfile,
        argv=[
            ACTIVATE,
            "-l",
            listen,
            f"--fdname={fdname}",
            "-E",
            f"NOTIFY_SOCKET={notify.path}",
            "-E",
            f"WATCHDOG_USEC={watchdog_usec}",
            "--",
            *argv,
        ],
    )
    try:
        wait_until(lambda: os.path.exists(listen) or master.proc.poll() is not None, "the activation socket")
        assert master.proc.poll() is None, master.output

        # The first connection starts the service (exec in the same process: MAINPID is this pid).
        status, body = get(Path(listen))
        assert status == 200, body
        workers = master.wait_workers(4)
        before = {w["pid"] for w in workers}
        assert int(body) in before
        assert master.status()["master"]["pid"] == master.pid  # exec'd in place: LISTEN_PID matched
        ready = notify.wait_for("READY=1")  # Type=notify: the service is up once its workers serve
        notify.wait_for("WATCHDOG=1")  # WatchdogSec=: petted from the master's loop
        assert any(m.startswith("STATUS=") and "workers serving" in m for m in notify.poll())

        # ExecReload=: run the unit's command with $MAINPID, as systemd would.
        reload = one(service, "ExecReload").replace("$MAINPID", str(master.pid))
        subprocess.run(shlex.split(reload), check=True, timeout=WAIT)
        after = {w["pid"] for w in master.wait_workers(4, lambda ws: not {w["pid"] for w in ws} & before)}
        reloading = notify.wait_for("RELOADING=1", ready + 1)
        notify.wait_for("READY=1", reloading + 1)  # the reload is over: new workers serve
        status, body = get(Path(listen))
        assert status == 200 and int(body) in after, (status, body)
        assert master.proc.poll() is None

        # KillSignal= within TimeoutStopSec=: a clean exit, every worker gone, systemd's socket file left alone.
        os.kill(master.pid, getattr(signal, one(service, "KillSignal")))
        code = master.wait(timeout=seconds(one(service, "TimeoutStopSec")))
        assert code == OK, master.output
        notify.wait_for("STOPPING=1", reloading + 1)
        _gone, alive = psutil.wait_procs(list(_procs(after | before)), timeout=WAIT)
        assert not alive, alive
        assert os.path.exists(listen)  # corral does not remove a socket it did not bind
        assert not pidfile.exists()
    finally:
        master.stop()
        notify.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _procs(pids: set[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return procs
