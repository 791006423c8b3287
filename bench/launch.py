"""Run one corral worker process on a given port, for the benchmarks: python bench/launch.py APP [--port N]

    python bench/launch.py bench.apps:hello --port 8000      # or: python -m bench.launch ...

Binds HOST:PORT itself (port 0: any free port), prints `listening on PORT` once the socket is bound, then
serves with `corral.worker.serve.boot.run_worker` until SIGTERM (graceful) or SIGINT/SIGQUIT (at once), and exits
with the worker's exit code. Settings come from CORRAL_* environment variables, as with `serve`.

A worker without a master, for profiling one worker (--cprofile). The load tool, `python -m bench`, runs the
real command, `python -m corral.master APP -w N` (bench/servers.py).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder would be sys.path[0] and a bench module could shadow a standard-library
# one for everything the worker imports. Serve from the repository root instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402 - after the path is set (above)
import logging  # noqa: E402 - after the path is set (above)
import socket  # noqa: E402 - after the path is set (above)

from corral.shared.settings import Settings, from_env  # noqa: E402 - after the path is set (above)
from corral.worker.serve.boot import run_worker  # noqa: E402 - after the path is set (above)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="application spec, e.g. bench.apps:hello")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--cprofile",
        metavar="FILE",
        help="run the worker under cProfile and write the stats to FILE when it stops (SIGTERM)",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(**from_env())
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(settings.backlog)
    sock.setblocking(False)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    try:
        if not args.cprofile:
            return run_worker(args.app, settings, [sock])
        import cProfile

        profiler = cProfile.Profile()
        try:
            return profiler.runcall(run_worker, args.app, settings, [sock])
        finally:
            profiler.dump_stats(args.cprofile)
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
