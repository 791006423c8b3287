"""The arbiter keeps every worker's counts in the master's sum, whatever order its heartbeats, its channel's
end and its exit arrive in: `/metrics` (the sum of the gone workers' totals and the live workers' last
heartbeats), `corral_requests_served_total` and the statsd deltas never go back and never count twice.

Real control channels (corral.master.arbiter.channel) and real child processes for the master to reap; the
test writes what a worker would send on its end of the channel.
"""

from __future__ import annotations

import os
import selectors
import signal
from typing import Any

import pytest

from corral.master.arbiter.channel import Channel, pair
from corral.master.arbiter.loop import Arbiter
from corral.master.arbiter.workerinfo import Worker
from corral.shared.settings import Settings
from corral.worker.edge.counters import METHOD_INDEX, Counters


class Statsd:
    """Where the observer's statsd lines go (its flush is the real one)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def send(self, lines: list[str]) -> None:
        self.lines.extend(lines)

    def counter(self, name: str) -> int:
        return sum(
            int(line.split(":")[1].split("|")[0]) for line in self.lines if line.split(":")[0] == name and "|c" in line
        )


class Master:
    """An arbiter with no sockets and no signals: its workers are child processes that exit when told."""

    def __init__(self) -> None:
        self.arbiter = Arbiter("apps:app", Settings(workers=1))
        self.arbiter.selector = selectors.DefaultSelector()
        self.statsd = Statsd()
        self.arbiter.observer.statsd = self.statsd  # type: ignore[assignment]  # it only needs send()
        self.children: list[int] = []
        self.exit_pipes: dict[int, int] = {}  # pid -> the pipe whose closing tells that child to exit
        self.seen: list[tuple[int, int]] = []

    def spawn(self) -> tuple[Worker, Channel]:
        """A worker record (as spawn_worker makes it) for a real child; returns it and the worker's end."""
        master_end, worker_end = pair()
        read_end, write_end = os.pipe()
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child only waits to be told to exit, holding no other descriptor (no channel end)
            try:
                low = 3
                for keep in sorted((read_end, ready_write)):
                    os.closerange(low, keep)
                    low = keep + 1
                os.closerange(low, os.sysconf("SC_OPEN_MAX"))
                os.close(ready_write)  # says: no channel end is held here any more
                os.read(read_end, 1)
            finally:
                os._exit(0)
        os.close(read_end)
        os.close(ready_write)
        os.read(ready_read, 1)  # EOF once the child has closed its copies (an end closed in the test is closed)
        os.close(ready_read)
        self.children.append(pid)
        worker = Worker(pid, len(self.children), master_end, 0, 1000, 0)
        self.exit_pipes[pid] = write_end
        self.arbiter.workers[pid] = worker
        self.arbiter.selector.register(master_end.fileno(), selectors.EVENT_READ, self.arbiter._worker_readable)
        return worker, worker_end

    def exit(self, worker: Worker) -> None:
        """The child exits; returns once it is a zombie (not reaped: that is the arbiter's job)."""
        os.close(self.exit_pipes.pop(worker.pid))
        os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)

    def loop_reads(self) -> None:
        """What the loop's select does with whatever the channels hold now."""
        assert self.arbiter.selector is not None
        for key, _ in self.arbiter.selector.select(0):
            key.data(key)

    def check(self) -> tuple[int, int]:
        """A scrape and a statsd flush: the requests counted and served, which must never go back."""
        observer = self.arbiter.observer
        now = (observer.totals().request_count, observer.served())
        observer.flush_statsd()
        if self.seen:
            assert now[0] >= self.seen[-1][0] and now[1] >= self.seen[-1][1], (self.seen, now)
        self.seen.append(now)
        return now

    def close(self) -> None:
        for fd in self.exit_pipes.values():
            os.close(fd)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for worker in self.arbiter.workers.values():
            worker.channel.close()
        assert self.arbiter.selector is not None
        self.arbiter.selector.close()


@pytest.fixture
def master():
    master = Master()
    yield master
    master.close()


def heartbeat(channel: Channel, served: int, metrics: bool = True) -> None:
    """What the worker's heartbeat sends after `served` GET 200s (corral.master.arbiter.workerproc)."""
    fields: dict[str, Any] = {
        "requests": served,
        "instances": 0,
        "max_applications": 1000,
        "connections": 0,
        "parked": 0,
        "websockets": 0,
        "lag": 0.0,
        "stopping": False,
    }
    if metrics:
        counters = Counters()
        counters.requests[METHOD_INDEX["GET"] * 1000 + 200] = served
        counters.durations[0] = served
        fields["m"] = counters.snapshot()
    assert channel.send("hb", **fields)


def test_a_heartbeat_without_the_counts_leaves_them_in_the_sum(master):
    """The worker leaves the counts out of a heartbeat too big for one message (liveness first): the master
    keeps the last ones, so the sum does not dip, statsd does not send them twice when they come back, and
    they reach the gone workers' totals when the worker exits."""
    worker, end = master.spawn()
    heartbeat(end, 5)
    master.loop_reads()
    assert master.check() == (5, 5)
    heartbeat(end, 6, metrics=False)
    master.loop_reads()
    assert master.check() == (5, 6)  # the counts of the heartbeat before stand; the served count moves on
    heartbeat(end, 7)
    master.loop_reads()
    assert master.check() == (7, 7)
    heartbeat(end, 8, metrics=False)  # the last heartbeat too: the master reaps the worker with it
    end.close()
    master.exit(worker)
    master.arbiter.reap_workers()
    assert not master.arbiter.workers
    assert master.check() == (7, 8)
    assert master.arbiter.observer.counts.retired.request_count == 7
    assert master.statsd.counter("gunicorn.requests") == 7
    assert master.statsd.counter("gunicorn.request.status.200") == 7


def test_a_final_heartbeat_still_in_the_channel_is_read_when_the_worker_is_reaped(master):
    """SIGCHLD handled before the loop read the channel: the reaping reads the final counts first."""
    worker, end = master.spawn()
    heartbeat(end, 3)
    master.loop_reads()
    assert master.check() == (3, 3)
    heartbeat(end, 9)  # the stopping worker's final heartbeat, then it exits
    end.close()
    master.exit(worker)
    master.arbiter.reap_workers()
    assert master.check() == (9, 9)
    assert master.statsd.counter("gunicorn.requests") == 9


def test_a_worker_whose_channel_ended_counts_until_it_is_reaped(master):
    """The loop read the final heartbeat and the channel's end before the SIGCHLD: the worker's counts stay
    in the sum from its record until the reaping moves them to the gone workers' totals, once."""
    worker, end = master.spawn()
    heartbeat(end, 4)
    end.close()
    master.loop_reads()
    assert worker.channel.closed and worker.pid in master.arbiter.workers
    assert master.check() == (4, 4)
    master.exit(worker)
    master.arbiter.reap_workers()
    assert not master.arbiter.workers
    assert master.check() == (4, 4)
    assert master.arbiter.observer.counts.exits["crash"] == 1
    master.arbiter.reap_workers()  # nothing left to reap: nothing counted again
    assert master.check() == (4, 4)
    assert master.statsd.counter("gunicorn.requests") == 4


def test_hup_replacement_under_load_never_dips(master):
    """HUP's order: new workers start and serve, then each old one stops (final heartbeat, exit); scrapes
    between every step see the sum only grow, and the end total is every request once."""
    old = [master.spawn() for _ in range(2)]
    for served, (_, end) in zip((10, 20), old):
        heartbeat(end, served)
    master.loop_reads()
    assert master.check() == (30, 30)
    new = [master.spawn() for _ in range(2)]
    for worker, _ in old:
        worker.outdated, worker.retiring, worker.cause = True, True, "reload"
    for step, ((worker, end), (_, new_end)) in enumerate(zip(old, new)):
        heartbeat(new_end, 1 + step)
        heartbeat(end, (10, 20)[step] + 5)  # final
        end.close()
        master.check()
        master.exit(worker)
        if step == 0:
            master.loop_reads()  # the first old worker's channel is read by the loop, the second's by the reaping
        master.check()
        master.arbiter.reap_workers()
        master.check()
    master.loop_reads()
    assert master.check() == (15 + 25 + 1 + 2, 15 + 25 + 1 + 2)
    assert master.arbiter.observer.counts.exits["reload"] == 2
    assert master.statsd.counter("gunicorn.requests") == 43
