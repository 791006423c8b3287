"""`WebSocketHub`: a server's open WebSockets and the one loop timer that sweeps their deadlines (next ping,
pong due, close reply due) a few times per ping interval; it runs only while sockets are open. No timer per
socket."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["WebSocketHub", "DEFAULT_CLOSE_TIMEOUT"]

logger = logging.getLogger("corral.error")

#: Seconds the peer gets to answer a close frame when pings are off (ws_ping_timeout = 0).
DEFAULT_CLOSE_TIMEOUT = 10.0


class WebSocketHub:
    """A server's open WebSockets and the one timer that sweeps their deadlines (pings, close replies)."""

    __slots__ = ("sockets", "interval", "ping_interval", "ping_timeout", "close_timeout", "timer", "pings")

    def __init__(self, server: Any) -> None:
        settings = server.settings
        self.sockets: set[Any] = set()
        self.ping_interval: float = settings.ws_ping_interval
        self.ping_timeout: float = settings.ws_ping_timeout
        self.close_timeout: float = settings.ws_ping_timeout or DEFAULT_CLOSE_TIMEOUT
        periods = [t for t in (self.ping_interval, self.ping_timeout, self.close_timeout) if t > 0]
        # Deadlines are met within a quarter of the shortest period (and never later than 1 s).
        self.interval = max(0.01, min([1.0] + [t / 4 for t in periods]))
        self.timer: asyncio.TimerHandle | None = None
        self.pings = 0

    def add(self, ws: Any) -> None:
        self.sockets.add(ws)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def remove(self, ws: Any) -> None:
        sockets = self.sockets
        sockets.discard(ws)
        if not sockets and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for ws in tuple(self.sockets):
            if now >= ws.deadline:
                try:
                    ws.deadline_passed(now)
                except Exception:  # one broken socket must not stop the sweep
                    logger.exception("WebSocket timer failed")
                    ws.abort()
        self.timer = loop.call_later(self.interval, self._tick) if self.sockets else None
