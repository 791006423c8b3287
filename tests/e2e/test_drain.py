"""--drain-delay: on TERM a host keeps serving and accepting while its health path fails, then stops
accepting and finishes what is in flight; the sequence is in the log. HUP does not drain."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Master, get, write_apps


@pytest.fixture
def start(tmp_path, masters):
    apps = write_apps(tmp_path)

    def start(*args: str) -> Master:
        master = masters(apps, "-w", "2", *args, "apps:app")
        master.wait_workers(2)
        return master

    return start


def test_term_drains_then_stops_serving_meanwhile(start):
    master = start("--drain-delay", "2")
    master.signal(signal.SIGTERM)
    master.wait_for_line("Draining for 2 s")
    served_while_draining = 0
    while "Drain over" not in master.output:
        try:
            status, _ = get(master.port, "/", timeout=5)  # a new connection each time: still accepted
        except OSError:
            break
        assert status == 200
        served_while_draining += 1
        time.sleep(0.05)
    assert served_while_draining >= 5
    assert master.wait() == 0
    output = master.output
    assert output.index("Draining for 2 s") < output.index("Drain over")
    assert "Draining: the health path answers 503" in output  # each worker says so


def test_a_quick_stop_cuts_the_drain_short(start):
    master = start("--drain-delay", "60")
    master.signal(signal.SIGTERM)
    master.wait_for_line("Draining for 60 s")
    master.signal(signal.SIGINT)
    assert master.wait(timeout=20) == 0
    assert "Drain cut short: quick stop" in master.output


def test_hup_does_not_drain(start):
    master = start("--drain-delay", "60")
    old = {w["pid"] for w in master.wait_workers(2)}
    master.signal(signal.SIGHUP)
    master.wait_workers(2, lambda ws: not ({w["pid"] for w in ws} & old))  # replaced well before 60 s
    assert "Draining" not in master.output
    assert get(master.port)[0] == 200
    master.signal(signal.SIGINT)  # a quick stop (TERM would drain for 60 s)
    assert master.wait(timeout=20) == 0
