"""The HTTP/1.1 state machine's cost per request, in-process: `HTTP11Connection.feed` on a browser-like GET
(6 header fields) and on a POST with a 1 KiB body, with a handler that does nothing else. The minimum of
many repeats (robust to a busy machine); run it with another checkout's interpreter for a before/after:

    python -m bench.parse_cost
    /path/to/old/.venv/bin/python bench/parse_cost.py
"""

from __future__ import annotations

import timeit

from corral.shared.settings import Settings
from corral.worker.http11 import HTTP11Connection

try:
    from corral.worker.http11 import Limits
except ImportError:  # a checkout from before the Limits object
    pass

GET = (b"GET /plaintext HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
       b"Accept: text/html,application/xhtml+xml\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n")
POST = b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024


class _Request:
    def on_body(self, chunk: bytes) -> None:
        pass

    def on_body_complete(self) -> None:
        pass


class _Handler:
    request = _Request()

    def on_request(self, *args: object) -> _Request:
        return self.request

    def start_request(self, request: object) -> None:
        pass


def main(number: int = 20000, repeat: int = 15) -> None:
    limits = Limits.from_settings(Settings()) if "Limits" in globals() else Settings()  # older checkouts: settings
    state = HTTP11Connection(_Handler(), limits)

    def one(data: bytes) -> None:
        state.feed(data)
        state.active = None  # answered: the next request starts at once

    for name, data in (("GET, 6 fields", GET), ("POST, 1 KiB body", POST)):
        best = min(timeit.repeat(lambda: one(data), number=number, repeat=repeat)) / number
        print(f"{name}: {best * 1e6:.3f} us per request")


if __name__ == "__main__":
    main()
