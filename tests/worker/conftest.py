"""Worker tests: make the shared HTTP test helpers (worker_http_helpers.py) importable."""

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
