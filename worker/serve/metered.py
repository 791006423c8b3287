"""The protocol of a worker that collects metrics: the response is counted where the access log is written.

`HttpProtocol.log_access` hands a completed response to the server's `access_log` hook; with metrics on
that hook is the worker's `Counters` (corral.worker.edge.counters). This subclass does the counting inline
instead - one Python call per response less, which is most of what metrics cost on a hello-world
response - and then calls the real access log, if there is one. Chosen once per server (like
worker/serve/health.py's protocol): without metrics, connections get the plain HttpProtocol and pay nothing.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from time import perf_counter

from corral.worker.edge.counters import DURATION_BOUNDS, METHOD_OFFSET, OTHER_OFFSET, Counters
from corral.worker.http1.host import Logged
from corral.worker.http1.protocol import HttpProtocol

__all__ = ["metered_protocol"]

logger = logging.getLogger("corral.error")


def metered_protocol(counters: Counters, base: type[HttpProtocol] = HttpProtocol) -> type[HttpProtocol]:
    """A protocol class counting into `counters` (one class per server: the lists are bound here, so a
    response costs no attribute lookups to find them)."""
    requests = counters.requests
    durations = counters.durations
    offsets = METHOD_OFFSET
    bounds = DURATION_BOUNDS
    first = bounds[0]

    class MeteredProtocol(base):  # type: ignore[valid-type, misc]  # a class per base: mypy takes no variable for one
        __slots__ = ()

        def log_access(self, cycle: Logged) -> None:
            t0 = cycle.t0
            if t0 is None:
                return
            duration = perf_counter() - t0
            scope = cycle.scope
            status = cycle.status  # 100-999: validated before any response is written (response.status_line)
            try:
                requests[offsets[scope["method"]] + status] += 1
            except KeyError:  # another method, or a WebSocket scope (its handshake is a GET)
                requests[offsets.get(scope.get("method", "GET"), OTHER_OFFSET) + status] += 1
            durations[0 if duration <= first else bisect_left(bounds, duration)] += 1
            counters.duration_sum += duration
            nbytes = cycle.nbytes
            counters.bytes_out += nbytes
            log = counters.log
            if log is not None:
                try:
                    log(scope, status, nbytes, duration, cycle.headers)
                except Exception:
                    logger.exception("Access log failed")

    MeteredProtocol.__name__ = MeteredProtocol.__qualname__ = "Metered" + base.__name__
    return MeteredProtocol
