"""Whether corral's C modules may be used in this process: they are built at install when a C compiler is
present (setup.py), and `CORRAL_NO_EXTENSIONS=1` (any value but "" and "0") turns them all off, leaving
the pure-Python code they stand in for (CI runs the whole suite both ways).

The modules: `corral.worker.http1._head` (an ordinary HTTP/1.1 request parsed in one call),
`corral.shared._environ` (a request's WSGI environ) and `corral.worker.conn._response` (an HTTP/1.1 response
head).
"""

from __future__ import annotations

import os

__all__ = ["DISABLED_BY", "enabled"]

#: The environment variable that turns the compiled modules off.
DISABLED_BY = "CORRAL_NO_EXTENSIONS"


def enabled() -> bool:
    """False when CORRAL_NO_EXTENSIONS is set: import no compiled module."""
    return os.environ.get(DISABLED_BY, "") in ("", "0")
