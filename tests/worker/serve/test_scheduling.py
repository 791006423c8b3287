"""apply_policy where the kernel refuses SCHED_BATCH: the worker keeps its policy and says so once."""

from __future__ import annotations

import logging
import os

import pytest

from corral.worker.serve import scheduling

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")


def test_a_refused_policy_is_logged_and_the_worker_goes_on(monkeypatch, caplog):
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        pytest.skip("the test process runs under another policy")

    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, logger="corral.error"):
        assert scheduling.apply_policy("batch") == "inherit"
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    [record] = caplog.records
    assert "SCHED_BATCH refused (Operation not permitted)" in record.getMessage()
    assert "--scheduling-policy inherit" in record.getMessage()


def test_inherit_touches_nothing(monkeypatch):
    def must_not_run(*args: object) -> None:
        raise AssertionError("sched_setscheduler called for 'inherit'")

    monkeypatch.setattr(os, "sched_setscheduler", must_not_run)
    assert scheduling.apply_policy("inherit") == "inherit"
