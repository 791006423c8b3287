"""Run one corral worker process on 127.0.0.1:0 for end-to-end tests: python run_worker.py APP

Settings come from CORRAL_* variables. Prints `listening on PORT` once the socket is bound (connections
made from then on wait in the backlog until the worker serves), then exits with the worker's exit code.
"""

import logging
import os
import socket
import sys

from corral.shared.settings import Settings, from_env
from corral.worker.serve.boot import run_worker


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, os.getcwd())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    return run_worker(sys.argv[1], Settings(**from_env()), [sock])


if __name__ == "__main__":
    sys.exit(main())
