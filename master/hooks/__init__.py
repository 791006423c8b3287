"""gunicorn's server hooks in the master: what they are handed and how they are called.

It owns the `server` object hooks get and the safe call (`run`), and `server.cfg` / `worker.cfg`,
gunicorn's Config answered over corral's settings, with `server.LISTENERS` (`cfg`).

May import: `corral.master.config` (gunicorn's names), `corral.master.listen` (bind addresses),
`corral.worker` (the worker object hooks get), `corral.shared`.
"""
