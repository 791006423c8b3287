"""corral.worker: the per-process server (StatelessServer, HTTP/1.1, WebSocket)."""

import corral.shared  # noqa: F401  # first: CORRAL_PURE_PYTHON=1 is honoured for corral.worker's modules too
