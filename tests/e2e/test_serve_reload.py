"""Zero-downtime changes: HUP (new workers before old ones stop), USR2 (a new master on the same sockets),
and systemd socket activation."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from serve_harness import (
    STOP_WAIT,
    Load,
    Master,
    free_port,
    get,
    kill_pids,
    read_pid,
    set_subreaper,
    wait_until,
    write_apps,
)

LOAD_SECONDS = 3.0


@pytest.fixture
def apps(tmp_path):
    return write_apps(tmp_path)


def pids(workers):
    return {w["pid"] for w in workers}


def run_load_while(port: int, action, settle) -> Load:
    """Keep-alive load for about LOAD_SECONDS around `action()`, until `settle()` holds too."""
    load = Load(port)
    try:
        wait_until(lambda: load.ok >= 10 or load.failures, "the load to get going")
        assert load.ok >= 10, load.failures
        action()
        settle()
        end = time.monotonic() + LOAD_SECONDS / 2
        wait_until(lambda: time.monotonic() >= end, "the load to run on after the change")
    finally:
        load.stop()
    return load


def test_hup_replaces_every_worker_without_a_failed_request(apps, tmp_path):
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "-w", "2", "apps:app"], apps, port, pidfile)
    try:
        before = pids(master.wait_workers(2))
        load = run_load_while(
            port,
            lambda: master.signal(signal.SIGHUP),
            lambda: master.wait_workers(2, lambda ws: not (pids(ws) & before)),
        )
        after = pids(master.wait_workers(2))
        assert not before & after  # every worker replaced
        print(f"load: {load.ok} ok, retried {load.retried_reused} reused / {load.retried_fresh} fresh")
        assert load.failures == [], load.failures
        # A graceful stop serves what reaches a stopping worker: no connection is closed under a request.
        assert (load.retried_reused, load.retried_fresh) == (0, 0)
        assert load.ok > 0 and {str(p) for p in after} & load.pids  # the new workers served some of it
        assert "Reloading (HUP)" in master.output
    finally:
        assert master.stop() == OK


def test_hup_with_a_broken_app_keeps_the_running_workers(apps, tmp_path):
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "apps:app"], apps, port, pidfile)
    try:
        before = pids(master.wait_workers(1))
        (apps / "apps.py").write_text("raise RuntimeError('half-deployed')\n")
        master.signal(signal.SIGHUP)
        master.wait_for_line("Reload failed, keeping the running workers")
        assert "half-deployed" in master.output
        assert pids(master.wait_workers(1)) == before
        assert get(port)[0] == 200
    finally:
        master.stop()


def test_usr2_upgrades_to_a_new_master_without_a_failed_request(apps, tmp_path):
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    set_subreaper(True)  # the new master outlives its parent: it becomes our child, so we can reap it
    # gunicorn's pre_exec hook, from the config file found in the folder: runs in the old master before the new.
    (apps / "corral.conf.py").write_text(
        "import os\ndef pre_exec(server):\n    open(f'pre_exec.{os.getpid()}', 'w').close()\n"
    )
    old = Master(
        ["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "-w", "2", "--preload", "apps:app"], apps, port, pidfile
    )
    new_pid = 0
    try:
        before = pids(old.wait_workers(2))

        def new_master_serving() -> bool:
            nonlocal new_pid
            pid = read_pid(str(pidfile))
            if pid is None or pid == old.pid:
                return False
            new_pid = pid
            return old.proc.poll() is not None  # the old one retired once the new workers were ready

        load = run_load_while(
            port, lambda: old.signal(signal.SIGUSR2), lambda: wait_until(new_master_serving, "the old master to retire")
        )
        assert old.proc.wait(STOP_WAIT) == OK  # (its stdout stays open: the new master shares it)
        assert not (tmp_path / "serve.pid.oldbin").exists()
        after = old.wait_workers(2, pidfile=pidfile)
        assert not pids(after) & before
        print(f"load: {load.ok} ok, retried {load.retried_reused} reused / {load.retried_fresh} fresh")
        assert load.failures == [], load.failures
        # A graceful stop serves what reaches a stopping worker: no connection is closed under a request.
        assert (load.retried_reused, load.retried_fresh) == (0, 0)
        assert "telling the old master" in old.output  # the new master logs to the same stderr
        assert [p.name for p in apps.glob("pre_exec.*")] == [f"pre_exec.{old.pid}"]
        os.kill(new_pid, signal.SIGTERM)
        assert _reap(new_pid) == OK
        assert not pidfile.exists()
    finally:
        if new_pid:
            kill_pids({new_pid} | old.seen_pids)
            _reap(new_pid)
        old.stop()
        set_subreaper(False)


def test_systemd_socket_activation(apps, tmp_path):
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    # What systemd does: the socket at fd 3, LISTEN_FDS=1 and LISTEN_PID = the pid after exec.
    wrapper = (
        "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.environ['LISTEN_FDS'] = '1'; "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, '-m', 'corral.master'] + sys.argv[2:])"
    )
    argv = [
        sys.executable,
        "-c",
        wrapper,
        str(listener.fileno()),
        "--pid",
        str(pidfile),
        "-b",
        "127.0.0.1:1",
        "apps:app",
    ]
    master = Master([], apps, port, pidfile, argv=argv, pass_fds=(listener.fileno(),))
    listener.close()  # the master holds it now
    try:
        (worker,) = pids(master.wait_workers(1))
        assert get(port) == (200, str(worker))
    finally:
        assert master.stop() == OK


def _reap(pid: int) -> int | None:
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -9


def test_hup_to_an_app_whose_startup_fails_is_abandoned(apps, tmp_path):
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "apps:app"], apps, port, pidfile)
    try:
        before = pids(master.wait_workers(1))
        # Imports fine (so the master's check passes) but every new worker's lifespan startup fails.
        source = (apps / "apps.py").read_text().replace("async def refuses_to_start", "async def _unused")
        (apps / "apps.py").write_text(source + "\napp = refuses_to_start = _unused\n")
        master.signal(signal.SIGHUP)
        master.wait_for_line("Reload abandoned: 3 new workers in a row failed to boot")
        assert pids(master.wait_workers(1)) == before
        assert get(port) == (200, str(before.pop()))
        assert master.proc.poll() is None
    finally:
        assert master.stop() == OK
