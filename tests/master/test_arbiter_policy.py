"""The arbiter's decisions, without processes: new-first replacement, limit spreading, backoff, crash loop."""

from __future__ import annotations

import time

import pytest

from corral.master.arbiter.loop import Arbiter, CrashLoop
from corral.master.arbiter.workerinfo import Worker
from corral.shared.exitcodes import WORKER_BOOT_ERROR
from corral.shared.settings import Settings


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed = False

    def send(self, kind: str, **fields) -> bool:
        self.sent.append({"t": kind, **fields})
        return True


class Harness(Arbiter):
    """An arbiter whose workers are records: spawning adds one, signals are written down."""

    def __init__(self, **settings) -> None:
        super().__init__("apps:app", Settings(**settings))
        self.signalled: list[tuple[int, int]] = []
        self.next_pid = 100

    def spawn_worker(self, share: int) -> None:
        self.worker_number += 1
        self.next_pid += 1
        self.workers[self.next_pid] = Worker(
            self.next_pid, self.worker_number, FakeChannel(), self.generation, share, 0
        )

    def _signal_worker(self, worker: Worker, sig: int) -> None:
        self.signalled.append((worker.pid, sig))

    def ready_all(self) -> None:
        for worker in self.workers.values():
            worker.ready = True


def live(arbiter: Arbiter) -> list[Worker]:
    return sorted((w for w in arbiter.workers.values() if not w.retiring), key=lambda w: w.number)


def test_reload_starts_new_workers_before_stopping_old_ones():
    arbiter = Harness(workers=2)
    arbiter.manage_workers()
    arbiter.ready_all()
    old = set(arbiter.workers)
    for worker in arbiter.workers.values():  # what handle_hup does after a good reload
        worker.outdated = True
    arbiter.generation += 1
    arbiter.manage_workers()
    new = set(arbiter.workers) - old
    assert len(new) == 2 and not any(w.retiring for w in arbiter.workers.values())  # nothing stopped yet
    first_new = arbiter.workers[min(new)]
    first_new.ready = True
    arbiter.manage_workers()
    assert sum(arbiter.workers[pid].retiring for pid in old) == 1  # one old out per new one ready
    arbiter.workers[max(new)].ready = True
    arbiter.manage_workers()
    assert all(arbiter.workers[pid].retiring for pid in old)
    assert {w.pid for w in live(arbiter)} == new


def test_ttin_ttou_respread_limits_live_and_the_sum_is_exact():
    arbiter = Harness(workers=2, max_applications=10)
    arbiter.manage_workers()
    assert [w.share for w in live(arbiter)] == [5, 5]
    arbiter.handle_ttin()
    arbiter.manage_workers()
    workers = live(arbiter)
    assert [w.share for w in workers] == [4, 3, 3] and sum(w.share for w in workers) == 10
    assert workers[0].channel.sent == [{"t": "limit", "max_applications": 4}]
    assert workers[1].channel.sent == [{"t": "limit", "max_applications": 3}]
    assert workers[2].channel.sent == []  # born with its share
    arbiter.ready_all()
    arbiter.handle_ttou()
    arbiter.manage_workers()
    assert [w.share for w in live(arbiter)] == [5, 5]


def test_young_deaths_back_off_and_an_old_one_is_replaced_at_once():
    arbiter = Harness(workers=1)
    arbiter.manage_workers()
    delays = []
    for _ in range(4):
        worker = next(iter(arbiter.workers.values()))
        del arbiter.workers[worker.pid]
        arbiter.worker_exited(worker, -9)
        delays.append(max(0.0, arbiter.spawn_after - time.monotonic()))
        arbiter.spawn_after = 0.0
        arbiter.manage_workers()
    assert delays[0] == 0 and 0 < delays[1] < delays[2] < delays[3]
    worker = next(iter(arbiter.workers.values()))
    worker.born -= 60  # had been serving for a minute
    del arbiter.workers[worker.pid]
    arbiter.worker_exited(worker, -9)
    assert arbiter.failures == 0 and arbiter.spawn_after == 0.0


def test_boot_failures_with_nobody_serving_halt():
    arbiter = Harness(workers=1, worker_boot_retries=3)
    arbiter.manage_workers()
    with pytest.raises(CrashLoop, match="3 workers in a row failed to boot \\(lifespan startup or post_fork failed\\)"):
        for _ in range(3):
            worker = next(iter(arbiter.workers.values()))
            del arbiter.workers[worker.pid]
            arbiter.worker_exited(worker, WORKER_BOOT_ERROR)
            arbiter.spawn_after = 0.0
            arbiter.manage_workers()


def test_boot_failures_after_a_reload_roll_back_to_the_serving_workers():
    arbiter = Harness(workers=1, worker_boot_retries=2)
    arbiter.manage_workers()
    arbiter.ready_all()
    (old,) = arbiter.workers.values()
    arbiter.rollback = (arbiter.settings, arbiter.num_workers, arbiter.ssl_context)
    arbiter.settings = arbiter.settings.replace(workers=3)
    arbiter.num_workers = 3
    old.outdated = True
    arbiter.generation += 1
    for _ in range(2):
        arbiter.spawn_after = 0.0
        arbiter.manage_workers()
        booting = [w for w in arbiter.workers.values() if not w.ready and not w.retiring]
        del arbiter.workers[booting[0].pid]
        arbiter.worker_exited(booting[0], WORKER_BOOT_ERROR)
    assert arbiter.num_workers == 1 and arbiter.settings.workers == 1
    assert not old.outdated and not old.retiring
    assert all(w.retiring for w in arbiter.workers.values() if w is not old)


def test_heartbeat_timeout_sends_the_dump_signal_then_kills():
    import signal

    arbiter = Harness(workers=1, timeout=2)
    arbiter.manage_workers()
    (worker,) = arbiter.workers.values()
    worker.ready = True
    worker.last_beat -= 3
    arbiter.murder_workers()
    assert arbiter.signalled == [(worker.pid, signal.SIGUSR2)] and worker.retiring
    worker.kill_at = time.monotonic() - 0.01
    arbiter.murder_workers()
    assert arbiter.signalled[-1] == (worker.pid, signal.SIGKILL)
