"""The protocol of a worker that collects metrics: the response is counted where the access log is written.

`HttpProtocol.log_access` hands a completed response to the server's `access_log` hook; with metrics on
that hook is the worker's `Counters` (corral.worker.counters). This subclass does the counting inline
instead - one Python call per response less, which is most of what metrics cost on a hello-world
response - and then calls the real access log, if there is one. Chosen once per server (like
worker/health.py's protocol): without metrics, connections get the plain HttpProtocol and pay nothing.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from time import perf_counter

from corral.worker.counters import DURATION_BOUNDS, METHOD_OFFSET, OTHER_OFFSET
from corral.worker.protocol import HttpProtocol

__all__ = ["metered_protocol"]

logger = logging.getLogger("corral.error")


def metered_protocol(base: type[HttpProtocol] = HttpProtocol) -> type[HttpProtocol]:
    class MeteredProtocol(base):  # type: ignore[valid-type, misc]
        __slots__ = ()

        def log_access(self, cycle: object) -> None:
            t0 = cycle.t0  # type: ignore[attr-defined]
            if t0 is None:
                return
            duration = perf_counter() - t0
            counters = self.server.counters
            scope = cycle.scope  # type: ignore[attr-defined]
            status = cycle.status  # type: ignore[attr-defined]
            nbytes = cycle.nbytes  # type: ignore[attr-defined]
            # status: 100-999, validated before any response is written (http11.status_line)
            counters.requests[METHOD_OFFSET.get(scope.get("method", "GET"), OTHER_OFFSET) + status] += 1
            counters.durations[bisect_left(DURATION_BOUNDS, duration)] += 1
            counters.duration_sum += duration
            counters.bytes_out += nbytes
            log = counters.log
            if log is not None:
                try:
                    log(scope, status, nbytes, duration, cycle.headers)  # type: ignore[attr-defined]
                except Exception:
                    logger.exception("Access log failed")

    MeteredProtocol.__name__ = MeteredProtocol.__qualname__ = "Metered" + base.__name__
    return MeteredProtocol
