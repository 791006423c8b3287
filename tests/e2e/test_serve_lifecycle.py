"""A running master: replacing dead workers, the crash-loop halt, the heartbeat watchdog, stopping, TTIN/TTOU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import HALT_CRASH_LOOP, OK
from serve_harness import WAIT, Master, clean_env, get, wait_until, write_apps


@pytest.fixture
def apps(tmp_path):
    return write_apps(tmp_path)


@pytest.fixture
def start(apps, masters):
    def start(*args: str, app: str = "apps:app") -> Master:
        return masters(apps, *args, app)

    return start


def pids(workers):
    return {w["pid"] for w in workers}


def test_killed_worker_is_replaced_and_the_others_keep_serving(start):
    master = start("-w", "2", "--preload")
    before = pids(master.wait_workers(2))
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    survivor = (before - {victim}).pop()
    after = pids(master.wait_workers(2, lambda ws: victim not in pids(ws)))
    assert survivor in after and victim not in after
    assert get(master.port)[0] == 200
    assert "died with signal SIGKILL" in master.output


def test_worker_calling_os_exit_is_replaced(start):
    master = start("-w", "1")
    (before,) = pids(master.wait_workers(1))
    with pytest.raises(OSError):  # the worker died with the request in flight
        get(master.port, "/exit")
    (after,) = pids(master.wait_workers(1, lambda ws: before not in pids(ws)))
    status, body = get(master.port)
    assert status == 200 and body == str(after)
    assert "died with exit code 7" in master.output


def test_repeated_boot_failure_backs_off_then_halts(start):
    master = start("-w", "1", app="apps:refuses_to_start")
    assert master.wait(WAIT) == HALT_CRASH_LOOP
    output = master.output
    assert output.count("lifespan startup failed: database unreachable") >= 3
    assert "Workers keep dying: next start in" in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("serve: error: 3 workers in a row failed to boot (lifespan startup or post_fork failed)")
    assert not master.pidfile.exists()


def test_blocked_event_loop_is_killed_with_its_stack_logged(start):
    master = start("-w", "1", "-t", "2")
    (blocked,) = pids(master.wait_workers(1))
    errors: list[BaseException] = []

    def request() -> None:
        try:
            get(master.port, "/block")
        except OSError as exc:  # the worker is killed with the request in flight
            errors.append(exc)

    client = threading.Thread(target=request, daemon=True)
    client.start()
    master.wait_for_line(f"blocking the loop of {blocked}")
    master.wait_for_line("timed out: no heartbeat for")
    master.wait_for_line("in block_the_event_loop")  # faulthandler's dump of the worker's stack
    (replacement,) = pids(master.wait_workers(1, lambda ws: blocked not in pids(ws)))
    assert get(master.port) == (200, str(replacement))
    client.join(WAIT)
    assert errors
    assert "Killing worker 1" in master.output


def test_term_lets_the_slow_request_finish_then_exits_0_and_cleans_up(start, tmp_path):
    master = start("-w", "1")
    (worker,) = pids(master.wait_workers(1))
    control = [p for p in os.listdir(tmp_path) if p.endswith(".ctl")]
    assert control
    results: list = []
    client = threading.Thread(target=lambda: results.append(get(master.port, "/slow?2")), daemon=True)
    client.start()
    master.wait_for_line(f"slow request started in {worker}")
    master.signal(signal.SIGTERM)
    client.join(WAIT)
    assert results == [(200, str(worker))]
    assert master.wait() == OK
    assert not master.pidfile.exists()
    assert not any(p.endswith(".ctl") for p in os.listdir(tmp_path))


def test_int_stops_quickly_despite_a_long_request(start):
    master = start("-w", "1", "--graceful-timeout", "60")
    (worker,) = pids(master.wait_workers(1))
    client = threading.Thread(target=lambda: _ignore(lambda: get(master.port, "/slow?100")), daemon=True)
    client.start()
    master.wait_for_line(f"slow request started in {worker}")
    master.signal(signal.SIGINT)
    assert master.wait(20) == OK  # far less than the request's 100 s or the graceful timeout's 60 s
    wait_until(lambda: not _alive(worker), "the worker to be gone", 10)


def test_ttin_ttou_respread_the_instance_limit_without_restarts(start):
    master = start("-w", "2", "--max-applications", "10")
    first = master.wait_workers(2, lambda ws: sorted(w["limit"] for w in ws) == [5, 5])
    original = pids(first)
    master.signal(signal.SIGTTIN)
    three = master.wait_workers(3, lambda ws: sorted(w["limit"] for w in ws) == [3, 3, 4])
    assert original <= pids(three)  # the two running workers got new limits live, not a restart
    assert sum(w["limit"] for w in three) == 10
    table = subprocess.run(
        [sys.executable, "-m", "corral.master", "status", "--pid", str(master.pidfile)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=clean_env(),
    )
    assert table.returncode == 0, table.stderr
    assert "INSTANCES" in table.stdout and "0/4" in table.stdout and table.stdout.count("0/3") == 2
    master.signal(signal.SIGTTOU)
    two = master.wait_workers(2, lambda ws: sorted(w["limit"] for w in ws) == [5, 5])
    assert len(pids(two) & pids(three)) == 2  # one retired, the other kept (and re-limited)
    raw = subprocess.run(
        [sys.executable, "-m", "corral.master", "status", "--pid", str(master.pidfile), "--json"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=clean_env(),
    )
    document = json.loads(raw.stdout)
    assert document["master"]["pid"] == master.pid and document["master"]["target"] == 2


def test_max_requests_recycles_the_worker_new_one_first(start):
    master = start("-w", "1", "--max-requests", "3")
    (first,) = pids(master.wait_workers(1))
    for _ in range(3):
        assert get(master.port)[0] == 200
    (second,) = pids(master.wait_workers(1, lambda ws: first not in pids(ws)))
    assert get(master.port) == (200, str(second))
    assert "served 3 requests: replacing it" in master.output


def _ignore(call) -> None:
    try:
        call()
    except OSError:
        pass


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_workers_stop_by_themselves_when_the_master_is_killed(start):
    master = start("-w", "2")
    workers = pids(master.wait_workers(2))
    master.proc.kill()  # no TERM: the workers learn it from their channel's EOF
    master.proc.wait(WAIT)
    wait_until(lambda: not any(_alive(pid) for pid in workers), "the orphaned workers to exit")
