"""The `date` / `server` header block shared by every response of a worker, formatted at most once a second.

RFC 9110 §6.6.1: an origin server with a clock MUST send Date; one-second resolution is what IMF-fixdate
carries, so formatting it per request would only burn CPU. The server's tick calls `refresh()`; responses
read the pre-encoded `headers` bytes.
"""

from __future__ import annotations

import time
from email.utils import formatdate

__all__ = ["DefaultHeaders"]


class DefaultHeaders:
    """Pre-encoded `server:` and `date:` header lines (each ending in CRLF), refreshed by `refresh()`."""

    __slots__ = ("server", "date", "_second", "headers")

    def __init__(self, server: bool = True, date: bool = True) -> None:
        self.server = server
        self.date = date
        self._second = -1
        self.headers = b""
        self.refresh()

    def refresh(self, now: float | None = None) -> bytes:
        """Re-format the block if the wall-clock second changed; returns the current bytes."""
        if now is None:
            now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            block = b"server: corral\r\n" if self.server else b""
            if self.date:
                block += b"date: " + formatdate(second, usegmt=True).encode("ascii") + b"\r\n"
            self.headers = block
        return self.headers
