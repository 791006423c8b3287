"""The master's status socket and the `serve status` client.

The master listens on a unix socket found from its pid file: `<pidfile folder>/.corral-<pid>.ctl`, or,
when that path is too long for a unix socket (108 bytes), `<tempdir>/corral-<uid>/<pid>.ctl`. A client
connects, the master writes one JSON document describing itself and its workers, and closes. Read-only:
nothing can be changed through it (signals do that).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Any

from corral.master.status.pidfile import read_pid

__all__ = ["ControlError", "control_paths", "ControlServer", "query", "format_table"]

MAX_UNIX_PATH = 100


class ControlError(Exception):
    """`serve status` could not reach a master; `str()` is one line."""


def control_paths(pidfile: str, pid: int) -> list[str]:
    """Where the master with `pid` listens, most preferred first."""
    near = os.path.join(os.path.dirname(os.path.abspath(pidfile)), f".corral-{pid}.ctl")
    far = os.path.join(tempfile.gettempdir(), f"corral-{os.getuid()}", f"{pid}.ctl")
    return [near, far] if len(near.encode()) <= MAX_UNIX_PATH else [far]


class ControlServer:
    """The listening end, owned by the master; `answer()` is called when the socket is readable."""

    def __init__(self, pidfile: str, pid: int) -> None:
        self.path = ""
        self.sock: socket.socket | None = None
        for path in control_paths(pidfile, pid):
            try:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                if os.path.exists(path):
                    os.unlink(path)  # same pid, so a leftover of a dead process
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(path)
            except OSError:
                continue
            sock.listen(16)
            sock.setblocking(False)
            self.sock, self.path = sock, path
            break

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def answer(self, payload: dict[str, Any]) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # nothing pending (EAGAIN) or a failed accept: wait for the next readiness
                return
            try:
                conn.settimeout(1.0)  # a client that does not read must not stall the master for long
                conn.sendall(json.dumps(payload).encode())
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


def query(pidfile: str, timeout: float = 5.0) -> dict[str, Any]:
    """The status document of the master whose pid is in `pidfile`."""
    pid = read_pid(pidfile)
    if pid is None:
        raise ControlError(f"no pid in {pidfile!r}: is corral running with --pid {pidfile}?")
    for path in control_paths(pidfile, pid):
        if not os.path.exists(path):
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise ControlError(f"cannot read the status of master {pid} from {path}: {exc.strerror or exc}") from None
        finally:
            sock.close()
        try:
            return json.loads(b"".join(chunks))
        except ValueError:
            raise ControlError(f"master {pid} sent an unreadable status from {path}") from None
    raise ControlError(f"master {pid} (from {pidfile}) has no control socket: is it running?")


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_table(status: dict[str, Any]) -> str:
    master = status["master"]
    lines = [
        (
            f"master {master['pid']} [{master['name']}]  up {_age(time.time() - master['started'])}  "
            f"workers {len(status['workers'])} (target {master['target']})  "
            f"max_applications {master['max_applications']}"
        ),
        f"{'PID':>8} {'N':>4} {'STATE':<9} {'AGE':>7} {'REQUESTS':>9} {'INSTANCES':>11} {'RSS':>8} {'CPU%':>6}",
    ]
    lines.extend(
        f"{w['pid']:>8} {w['number']:>4} {w['state']:<9} {_age(w['age']):>7} {w['requests']:>9} "
        f"{str(w['instances']) + '/' + str(w['limit']):>11} {_size(w['rss']):>8} {w['cpu']:>6.1f}"
        for w in status["workers"]
    )
    figures = status.get("metrics")
    if figures:
        lines[1:1] = format_figures(figures)
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def format_figures(m: dict[str, Any]) -> list[str]:
    """The figures /metrics has, digested: rate, latency, statuses, pool, restarts by cause."""
    first = f"requests {m['requests']}  {m['requests_per_second']:.1f}/s (last {m['window']:.0f}s)"
    if m.get("collecting"):
        first += f"  p50 {_ms(m.get('p50_ms'))}  p99 {_ms(m.get('p99_ms'))}"
        classes = m.get("status_classes") or {}
        if classes:
            first += "  " + " ".join(f"{k} {v}" for k, v in sorted(classes.items()))
    else:
        first += "  (p50/p99 and statuses: start with --metrics-bind or --statsd-host)"
    exits = ", ".join(f"{cause} {n}" for cause, n in sorted(m.get("exits", {}).items())) or "none"
    second = (
        f"pool {m['in_flight']}/{m['pool_size']} in use, {m['parked']} parked, {m['websockets']} websockets"
        f"  restarts: {exits}  reloads {m['reloads']}"
    )
    return [first, second]
