"""What the master reports about itself and its workers.

It owns the error log and its reopening (`logs`), the workers' counts summed and kept across replacement
(`metrics`), the `/metrics` page (`exposition`) and the master's own HTTP listener for it
(`metrics_http`), the statsd push (`statsd`), systemd's notify protocol (`sdnotify`), and the one object
the arbiter calls at its events that drives them all (`observer.Observer`).

May import: `corral.master.listen` (to bind `--metrics-bind`), `corral.worker` (the counters' shapes, the
access log's handlers), `corral.shared`.
"""
