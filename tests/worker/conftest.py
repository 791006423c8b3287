"""Worker tests: make the helpers of this folder (worker_http_helpers.py, websocket_helpers.py, h2_helpers.py)
importable by plain name from the tests of every room below it (tests/worker/http1/, .../websocket/, ...)."""

import os
import queue
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def events() -> queue.Queue:
    """A thread-safe queue for applications to report what they saw."""
    return queue.Queue()
