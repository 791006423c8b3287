"""systemd's notify protocol (`Type=notify`): readiness, reloads, stopping, status, watchdog.

systemd passes a unix datagram socket in `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace);
the service sends `KEY=value` lines to it (sd_notify(3)). The master sends:

* `READY=1` once its first workers serve (all `-w` of them), and again when a reload is done;
* `RELOADING=1` (with `MONOTONIC_USEC=`, which systemd >= 253 wants) when a HUP begins;
* `STOPPING=1` when it begins to stop;
* `STATUS=...` a one-line summary, every few seconds (`systemctl status` shows it);
* `WATCHDOG=1` every half `WATCHDOG_USEC` when systemd asks for it (`WatchdogSec=`), sent from the
  master's loop only: a master whose loop is stuck stops sending it, and systemd restarts the service.

Only the master talks to systemd: the variables stay in the environment (a USR2 upgrade's new master
needs them) and `NotifyAccess=main` (the default) ignores anyone else. Sends never block and their errors
are ignored.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.sock: socket.socket | None = None
        self.address = ""
        path = environ.get("NOTIFY_SOCKET", "")
        if path and (path[0] in "/@"):
            self.address = "\0" + path[1:] if path[0] == "@" else path
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self.sock.setblocking(False)
            except OSError:
                self.sock = None
        self.watchdog_interval = 0.0
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self.next_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *lines: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        """Called on every pass of the master's loop: pet the watchdog when it is due."""
        if self.watchdog_interval and now >= self.next_watchdog:
            self.next_watchdog = now + self.watchdog_interval
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
