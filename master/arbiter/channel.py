"""The control channel between the master and one worker: a SOCK_SEQPACKET socketpair, JSON messages.

SEQPACKET keeps message boundaries (one `send` is one `recv`, never merged or split), is reliable and
ordered, and reports the other end's death as EOF: no framing code, and a worker learns its master died
from an empty read.

Up (worker -> master): ``{"t": "ready"}`` once it serves, ``{"t": "hb", ...counters}`` every heartbeat.
Down (master -> worker): ``{"t": "limit", "max_applications": N}``, ``{"t": "stop", "graceful": bool}``,
``{"t": "reopen"}`` (log files), ``{"t": "drain"}`` (the health path fails from now on; a stop follows).
"""

from __future__ import annotations

import json
import socket
from typing import Any

__all__ = ["Channel", "pair", "MAX_MESSAGE"]

#: What one `recv` takes. A SEQPACKET message longer than the buffer is cut short without a word (and then
#: fails to parse), so this is above the largest message the socket accepts at all (the default send buffer,
#: about 208 KiB on Linux): a heartbeat the worker managed to send is read whole. A worker with thousands of
#: distinct (method, status) counts sends heartbeats past 64 KiB.
MAX_MESSAGE = 256 * 1024


class Channel:
    """One end of a worker channel; non-blocking, never raises on a peer that went away."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: str, **fields: Any) -> bool:
        """Send one message; False when the peer is gone or the buffer is full (the message is dropped)."""
        if self.closed:
            return False
        fields["t"] = kind
        try:
            self.sock.send(json.dumps(fields, separators=(",", ":")).encode())
        except (BlockingIOError, InterruptedError):
            return False  # a peer that does not read: a heartbeat is worth nothing once stale
        except OSError:
            return False
        return True

    def receive(self) -> tuple[list[dict[str, Any]], bool]:
        """Every message waiting now, and whether the peer has closed its end (EOF)."""
        messages: list[dict[str, Any]] = []
        while not self.closed:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return messages, True
            if not data:
                return messages, True
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages, self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


def pair() -> tuple[Channel, Channel]:
    """(master end, worker end); both close-on-exec, so an exec'd process never holds one."""
    master, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(master), Channel(worker)
