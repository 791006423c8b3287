"""`--statsd-host`: the master pushes the aggregated metrics to statsd / DogStatsD once a second.

gunicorn sends a datagram per request from each worker; corral's workers only count (see
corral.worker.edge.counters), and the master sends what changed since its last flush, batched into few
datagrams (newline-separated lines, as statsd and DogStatsD accept). gunicorn's metrics have gunicorn's
names (`--naming corral`: `corral.` instead of `gunicorn.`), corral's own are `corral.*`, and
`--statsd-prefix` goes in front of every name, as in gunicorn (a `.` is added after it):

  gunicorn's:
    gunicorn.requests                  counter  HTTP responses
    gunicorn.request.status.<code>     counter  responses by exact status (e.g. gunicorn.request.status.200)
    gunicorn.request.duration          timer    ms; one line per histogram bucket that grew, with a sample
                                                rate of 1/count (`|@0.01` stands for 100 requests of about
                                                that duration), so statsd's counts are exact and its
                                                percentiles are the bucket's midpoint
    gunicorn.workers                   gauge    worker processes
    gunicorn.log.<level>               counter  error-log records of the master and the workers: critical,
                                                error, warning, exception (an error with a traceback)
  corral's own:
    corral.worker.starts, corral.worker.exits.<cause>, corral.reloads, corral.master.log.<level>   counters
    corral.pool.in_use, corral.pool.parked, corral.websocket.open                                   gauges
    corral.pool.rejected, corral.websocket.opened, corral.websocket.closed.<code>                   counters

`--dogstatsd-tags env:prod,app:shop` appends `|#env:prod,app:shop` to every line (DogStatsD).
Transport: UDP (HOST:PORT) or a unix datagram socket (unix:PATH, DogStatsD's socket); sends never block
and errors (no listener yet) are ignored: metrics must never stall the master.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Mapping
from typing import Any

from corral.master.observe.metrics import MasterCounts, Totals
from corral.worker.edge.counters import DURATION_BOUNDS

__all__ = ["StatsdClient", "statsd_lines", "prefix_of", "GUNICORN_GAUGES"]

logger = logging.getLogger("corral.master")

MAX_DATAGRAM = 1432  # fits one Ethernet frame with IP/UDP headers (statsd's advice)


#: The gauges that are gunicorn's metrics (the others passed to statsd_lines are corral's own).
GUNICORN_GAUGES = frozenset(("workers",))


def prefix_of(statsd_prefix: str) -> str:
    """gunicorn's rule for --statsd-prefix, to the letter: a '.' is added unless it ends with one (gunicorn's
    regular expression also leaves a one-character prefix without its dot; so does this)."""
    return re.sub(r"^(.+[^.]+)\.*$", "\\g<1>.", statsd_prefix)


def _midpoints() -> list[float]:
    """A representative duration (ms) per bucket: the middle of its bounds; the last bucket's lower bound."""
    out = []
    lower = 0.0
    for upper in DURATION_BOUNDS:
        out.append((lower + upper) / 2 * 1000)
        lower = upper
    out.append(lower * 1000)
    return out


_MIDPOINTS = _midpoints()


def statsd_lines(
    prefix: str,
    naming: str,
    now: Totals,
    before: Totals,
    counts: MasterCounts,
    counts_before: dict[str, int],
    gauges: Mapping[str, float],
) -> list[str]:
    """The lines for what changed between two sums (`before` -> `now`), and the current gauges."""
    p = prefix_of(prefix)
    theirs = p + ("corral." if naming == "corral" else "gunicorn.")  # gunicorn's metrics
    ours = p + "corral."  # corral's own
    lines: list[str] = []
    requests = now.request_count - before.request_count
    if requests > 0:
        lines.append(f"{theirs}requests:{requests}|c")
    old_status = before.by_status()
    delta: float
    for status, n in sorted(now.by_status().items()):
        delta = n - old_status.get(status, 0)
        if delta > 0:
            lines.append(f"{theirs}request.status.{status}:{delta}|c")
    for index, (n, m) in enumerate(zip(now.durations, before.durations)):
        delta = n - m
        if delta > 0:
            rate = f"|@{1 / delta:.6g}" if delta > 1 else ""
            lines.append(f"{theirs}request.duration:{_MIDPOINTS[index]:.3f}|ms{rate}")
    for level, n in now.logs.items():  # gunicorn's log.<level>: the workers' records and the master's
        delta = n - before.logs.get(level, 0) + counts.logs.get(level, 0) - counts_before.get(f"master.log.{level}", 0)
        if delta > 0:
            lines.append(f"{theirs}log.{level}:{delta}|c")
    scalars = (("pool.rejected", "rej"), ("websocket.opened", "wso"))
    for name, key in scalars:
        delta = now.scalars[key] - before.scalars[key]
        if delta > 0:
            lines.append(f"{ours}{name}:{int(delta)}|c")
    for code, n in sorted(now.closed.items()):
        delta = n - before.closed.get(code, 0)
        if delta > 0:
            lines.append(f"{ours}websocket.closed.{code}:{delta}|c")
    master_now = master_counters(counts)
    for name, value in master_now.items():
        delta = value - counts_before.get(name, 0)
        if delta > 0:
            lines.append(f"{ours}{name}:{delta}|c")
    for name, gauge in gauges.items():
        lines.append(f"{theirs if name in GUNICORN_GAUGES else ours}{name}:{gauge:g}|g")
    return lines


def master_counters(counts: MasterCounts) -> dict[str, int]:
    out = {"worker.starts": counts.starts, "reloads": counts.reloads}
    out.update({f"worker.exits.{cause}": n for cause, n in counts.exits.items()})
    out.update({f"master.log.{level}": n for level, n in counts.logs.items()})
    return out


class StatsdClient:
    """Batches lines into datagrams and sends them, never blocking."""

    def __init__(self, address: str, tags: str = "") -> None:
        if address.startswith("unix:"):
            path = address[len("unix:") :]
            path = path.removeprefix("//")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.target: Any = path
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            family = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(family[0], socket.SOCK_DGRAM)
            self.target = family[4]
        self.sock.setblocking(False)
        self.tags = "|#" + ",".join(t.strip() for t in tags.split(",") if t.strip()) if tags.strip() else ""
        self.errors = 0

    def send(self, lines: list[str]) -> None:
        packet: list[str] = []
        size = 0
        for line in lines:
            line += self.tags
            if packet and size + len(line) + 1 > MAX_DATAGRAM:
                self._send("\n".join(packet))
                packet, size = [], 0
            packet.append(line)
            size += len(line) + 1
        if packet:
            self._send("\n".join(packet))

    def _send(self, text: str) -> None:
        try:
            self.sock.sendto(text.encode(), self.target)
        except OSError as exc:  # no listener (ECONNREFUSED, ENOENT), a full buffer: drop, say so once
            self.errors += 1
            if self.errors == 1:
                logger.warning("statsd: cannot send to %s: %s (further errors are not logged)", self.target, exc)

    def close(self) -> None:
        self.sock.close()
