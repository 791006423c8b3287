"""The HTTP/1.1 state machine's cost per request, in-process: `HTTP11Connection.feed` on a browser-like GET
(6 header fields), on a POST with a 1 KiB body, on the same body chunked (one chunk, then with whitespace
in its chunk extension: llhttp refuses it and corral decodes it itself), on a method llhttp does not know,
and on 8 pipelined GETs in one read, with a handler that does nothing else. The minimum of
many repeats (robust to a busy machine); run it with another checkout's interpreter for a before/after:

    python -m bench.parse_cost
    /path/to/old/.venv/bin/python bench/parse_cost.py

Exact counts: `--loop CASE N` only feeds one case N times (get, post, chunked, chunked-bws, method, pipe8),
for valgrind; the difference between two N, divided by their difference, is the cost of one feed:

    valgrind --tool=callgrind python bench/parse_cost.py --loop get 1000   # and 4000
"""

from __future__ import annotations

import timeit

from corral.shared.settings import Settings
from corral.worker.http1.connection import HTTP11Connection

try:
    from corral.worker.http1.limits import Limits
except ImportError:  # a checkout from before the Limits object
    pass

GET = (
    b"GET /plaintext HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n"
)
POST = b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024
CHUNKED = (
    b"POST /p HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n"
)
CHUNKED_BWS = CHUNKED.replace(b"\r\n400\r\n", b"\r\n400 ; a=b\r\n")
UNKNOWN_METHOD = GET.replace(b"GET ", b"PURGEX ", 1)


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


LOOP_CASES = {
    "get": GET,
    "post": POST,
    "chunked": CHUNKED,
    "chunked-bws": CHUNKED_BWS,
    "method": UNKNOWN_METHOD,
    "pipe8": GET * 8,
}


def _limits() -> object:
    # No limit on requests per connection: past it (1000 by default) every request would be parsed and
    # ignored (the connection closes after the last one it answers), which is not what is measured here.
    settings = Settings(max_requests_per_connection=0)
    return Limits.from_settings(settings) if "Limits" in globals() else settings  # older checkouts: settings


def loop(case: str, count: int) -> None:
    state = HTTP11Connection(_Handler(), _limits())
    data = LOOP_CASES[case]
    for _ in range(count):
        state.feed(data)
        state.active = None
        state.pipeline = ()


def main(number: int = 20000, repeat: int = 15) -> None:
    limits = _limits()
    state = HTTP11Connection(_Handler(), limits)

    def one(data: bytes) -> None:
        state.feed(data)
        state.active = None  # answered: the next request starts at once
        state.pipeline = ()

    cases = (
        ("GET, 6 fields", GET, 1),
        ("POST, 1 KiB body", POST, 1),
        ("POST, 1 KiB chunked", CHUNKED, 1),
        ("POST, 1 KiB chunked, `400 ; a=b`", CHUNKED_BWS, 1),
        ("GET with a method llhttp does not know", UNKNOWN_METHOD, 1),
        ("8 pipelined GETs in one read", GET * 8, 8),
    )
    for name, data, requests in cases:
        try:
            one(data)
        except Exception as exc:  # noqa: BLE001 - an older checkout refuses what this one takes
            print(f"{name}: refused ({exc})")
            state = HTTP11Connection(_Handler(), limits)
            continue
        best = min(timeit.repeat(lambda data=data: one(data), number=number // requests, repeat=repeat)) / (
            number // requests
        )
        print(f"{name}: {best / requests * 1e6:.3f} us per request")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--loop"]:
        loop(sys.argv[2], int(sys.argv[3]))
    else:
        main()
