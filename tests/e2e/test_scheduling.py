"""--scheduling-policy end to end: workers and the threads they start run under SCHED_BATCH, the master keeps
its policy, 'inherit' leaves the workers' alone, and a policy chosen with chrt is kept."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap

import psutil
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Master, free_port, get

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's"),
    pytest.mark.skipif(
        hasattr(os, "SCHED_BATCH") and os.sched_getscheduler(0) != os.SCHED_OTHER,
        reason="the tests run under a chosen policy (the master would keep it)",
    ),
]

# The application answers with the scheduling policy of the thread it runs on: with --threads 4 a pool thread,
# started by the worker after its policy was set.
APP = """
import os, threading

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.sched_getscheduler(0)} {threading.get_native_id()} {os.getpid()}".encode()]

# As a preloaded library that keeps a thread (an exporter's) restarts it in each forked child: the thread exists
# before the worker sets its policy.
def _restart_exporter():
    threading.Thread(target=threading.Event().wait, name="exporter", daemon=True).start()

os.register_at_fork(after_in_child=_restart_exporter)
"""


@pytest.fixture
def start(tmp_path):
    (tmp_path / "policyapp.py").write_text(textwrap.dedent(APP))
    started: list[Master] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> Master:
        port = free_port()
        pidfile = tmp_path / f"serve-{port}.pid"
        argv = [*prefix, sys.executable, "-m", "corral.master", "-b", f"127.0.0.1:{port}", "--pid", str(pidfile)]
        # --reuse-port: each worker its own socket, which the kernel gives connections by their address's hash.
        # On the master's shared socket, the worker that has just answered is still running when the next
        # connection comes (a SCHED_BATCH thread does not preempt on wake-up): one worker took all of 200
        # sequential connections in one CI run, and the other was never seen.
        extra = ["-w", "2", "--threads", "4", "--reuse-port"]
        master = Master([], tmp_path, port, pidfile, argv=[*argv, *extra, *args])
        started.append(master)
        return master

    yield start
    for master in started:
        master.stop()


def policies(master: Master) -> tuple[int, list[tuple[int, int, int]]]:
    """The master's policy, and (policy, thread id, worker pid) as the application saw them on each worker."""
    workers = master.wait_workers(2)
    seen: dict[int, tuple[int, int, int]] = {}
    for _ in range(200):  # (until both workers have answered: SO_REUSEPORT spreads connections by hash)
        status, body = get(master.port, "/")
        assert status == 200, body
        policy, thread, pid = (int(n) for n in body.split())
        seen[pid] = (policy, thread, pid)
        if len(seen) == 2:
            break
    assert set(seen) == {w["pid"] for w in workers}
    for _policy, thread, pid in seen.values():
        assert thread != pid  # a pool thread ran it, not the worker's main thread
    return os.sched_getscheduler(master.pid), list(seen.values())


def thread_policies(pid: int) -> dict[int, int]:
    """The policy of each thread of process `pid` (threads that end meanwhile left out)."""
    found = {}
    for thread in psutil.Process(pid).threads():
        try:
            found[thread.id] = os.sched_getscheduler(thread.id)
        except ProcessLookupError:
            pass
    return found


@pytest.mark.parametrize("preload", [False, True], ids=["imported-by-workers", "preloaded"])
def test_workers_and_their_threads_run_under_sched_batch_by_default(start, preload):
    """Every thread of each worker: the loop's, the pool's, and (preloaded) one a fork hook started."""
    master = start(*(["--preload"] if preload else []), "policyapp:app")
    master_policy, seen = policies(master)
    assert master_policy == os.SCHED_OTHER
    for policy, _thread, pid in seen:
        assert policy == os.SCHED_BATCH
        found = thread_policies(pid)
        assert len(found) >= (3 if preload else 2)  # the loop's thread, a pool thread (and the exporter)
        assert set(found.values()) == {os.SCHED_BATCH}, found


def test_inherit_leaves_the_workers_policy_alone(start):
    master = start("--scheduling-policy", "inherit", "policyapp:app")
    master_policy, seen = policies(master)
    assert master_policy == os.SCHED_OTHER
    assert [policy for policy, _, _ in seen] == [os.SCHED_OTHER, os.SCHED_OTHER]


@pytest.mark.skipif(shutil.which("chrt") is None, reason="needs util-linux's chrt")
def test_a_policy_chosen_with_chrt_is_kept(start):
    """SCHED_IDLE (which anyone may choose for their own processes) stays the workers' policy."""
    master = start("policyapp:app", prefix=("chrt", "--idle", "0"))
    master_policy, seen = policies(master)
    assert master_policy == os.SCHED_IDLE
    assert [policy for policy, _, _ in seen] == [os.SCHED_IDLE, os.SCHED_IDLE]
