"""Flow control of one connection, both ways.

Reading is paused for independent reasons (a bit each) and resumes only when none is left: too much request
body unconsumed by the application, a pipelined request waiting for its turn, a request parked because the
pool is full, an error response waiting to be written. A single flag would let one reason's resume undo
another's pause.

Writing: asyncio calls `pause_writing()` when the transport's buffer passes its high-water mark; `send()`
then awaits `drain()` until `resume_writing()` (or the connection is lost).
"""

from __future__ import annotations

import asyncio
from typing import Any

# The reasons (bits) are declared in corral.worker.conn.phases (`Pause`), with the WebSocket ones.
from corral.worker.conn.phases import BODY, CLOSING, PARKED, PIPELINE

__all__ = ["FlowControl", "BODY", "PIPELINE", "PARKED", "CLOSING"]


class FlowControl:
    __slots__ = ("transport", "read_paused", "write_paused", "_drain")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.read_paused = 0  # bit set of reasons
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None

    def pause_reading(self, reason: int) -> None:
        if not self.read_paused:
            try:
                self.transport.pause_reading()
            except (AttributeError, RuntimeError):  # closing transport
                pass
        self.read_paused |= reason

    def resume_reading(self, reason: int) -> None:
        paused = self.read_paused
        if paused & reason:
            self.read_paused = paused = paused & ~reason
            if not paused:
                try:
                    self.transport.resume_reading()
                except (AttributeError, RuntimeError):
                    pass

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport accepts more data (returns at once when it does already)."""
        if not self.write_paused:
            return
        drain = self._drain
        if drain is None:
            drain = self._drain = asyncio.get_running_loop().create_future()
        await asyncio.shield(drain)  # several senders may wait; cancelling one must not cancel the rest

    def add_drain_callback(self, callback: Any) -> None:
        """Call `callback(future)` once the transport accepts more data (or the connection is lost)."""
        drain = self._drain
        if drain is None:
            drain = self._drain = asyncio.get_running_loop().create_future()
        drain.add_done_callback(callback)

    def connection_lost(self) -> None:
        """Release every writer: their sends will see the disconnect."""
        self.resume_writing()
