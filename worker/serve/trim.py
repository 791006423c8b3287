"""Memory given back to the system once many connections are gone.

What a connection held is freed when it closes, but freed is not returned: CPython keeps the small objects'
pages for its next allocations, and glibc's malloc keeps freed chunks below the top of its heap (libuv's
handles, the tables of the worker's sets and dicts). A worker that held 5,000 connections kept their memory
after they closed (measured: 41.8 MiB before and after). The server's tick (`WorkerServer._ticker`) calls
`due` with the number of connections: once they have fallen to under half of their peak, and by at least
`MIN_DROP`, the table of the set of connections is made again at its size (a set never shrinks its table)
and glibc's `malloc_trim(0)` returns its free pages to the system. Nothing happens per request; on a platform
without glibc only the table is remade.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

__all__ = ["Trimmer", "MIN_DROP"]

logger = logging.getLogger("corral.worker.server")

#: Connections that must have closed since the peak before anything is given back (below that, the memory is
#: small and will be used again by the next connections anyway).
MIN_DROP = 1000


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Trimmer:
    __slots__ = ("peak", "trim")

    def __init__(self) -> None:
        self.peak = 0
        self.trim = _malloc_trim()

    def due(self, connections: int) -> bool:
        """Called every tick with the number of open connections: True when they have fallen far enough
        below their peak for memory to be given back (the caller remakes its tables, then `give_back()`)."""
        if connections >= self.peak:
            self.peak = connections
            return False
        if self.peak - connections < MIN_DROP or connections * 2 > self.peak:
            return False
        logger.debug("%d of %d connections are gone: giving their memory back", self.peak - connections, self.peak)
        self.peak = connections
        return True

    def give_back(self) -> None:
        # A full collection empties CPython's free lists (tuples, frames, floats... of the connections made
        # in the wave), whose objects would keep their pages, and whole arenas, in use.
        gc.collect()
        if self.trim is not None:
            self.trim(0)
