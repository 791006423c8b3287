"""The arbiter: the master's one loop and the lives of its workers.

It owns the loop that reacts to the signal queue (`loop.Arbiter`), the master's side of its workers
(`fleet`, the arbiter's base: forking, reading their channels, retiring, reaping, their number and shares),
what the child does before it runs (`workerproc`), what the master knows about each worker and how limits
are split (`workerinfo`), the control channel to each worker (`channel`), the watchdog (`watchdog`),
stopping (`shutdown`), the app check before the first fork (`appcheck`), `--reload`'s watcher (`reload`),
the USR2 upgrade (`upgrade`) and process titles (`proctitle`).

May import: `corral.master.hooks`, `corral.master.listen`, `corral.master.observe`,
`corral.master.status`, `corral.worker`, `corral.shared`. Not config/: the arbiter is handed resolved
settings, it never reads flags or files.
"""
