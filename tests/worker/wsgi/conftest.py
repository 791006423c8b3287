"""`thread_mode`: a test module that uses it (pytestmark) runs each test on the pool's threads and with
--threads 1 (tests/worker/wsgi_modes.py)."""

from __future__ import annotations

import pytest

from wsgi_modes import set_mode


@pytest.fixture(params=[None, 1], ids=["pool", "threads1"])
def thread_mode(request):
    set_mode(request.param)
    yield request.param
    set_mode(None)
