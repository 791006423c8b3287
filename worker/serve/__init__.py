"""One worker serving: what puts the rooms below together.

It owns booting a worker in its process (load and wrap the app, lifespan, serve, exit code: `boot`), the
`WorkerServer` (the pool as backpressure, parking, accepting, the tick that sweeps timeouts, stopping:
`server`), the protocol class chain a server picks once from its settings: the HTTP/1.1 protocol (or
WSGI's), counted for metrics (`metered`), answering the health path (`health`), told HTTP/2 apart
(`corral.worker.http2.detect`), behind the PROXY protocol (`proxied`); and an in-process server for tests
and tools (`testing`).

May import: `corral.worker.http1`, `corral.worker.http2`, `corral.worker.websocket`, `corral.worker.wsgi`,
`corral.worker.edge`, `corral.worker.app`, `corral.worker.conn`, `corral.shared`. Nothing in the worker
imports it: the master does (`boot.run_worker`).
"""
