"""The cost of an ASGI response on the HTTP/1.1 path, in-process: `RequestCycle.send` for
`http.response.start` then one `http.response.body` (a Content-Length response) and a chunked response in
three messages, on a fake connection whose transport writes nowhere. The minimum of many repeats; run it with
another checkout's interpreter for a before/after:

    python -m bench.send_cost
    /path/to/old/.venv/bin/python bench/send_cost.py
"""

from __future__ import annotations

import timeit
from types import SimpleNamespace

from corral.worker.http1.cycle import RequestCycle

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
BODY = {"type": "http.response.body", "body": b"Hello, world!"}
PART = {"type": "http.response.body", "body": b"x" * 100, "more_body": True}
END = {"type": "http.response.body", "body": b""}


def _run(coro) -> None:
    try:
        coro.send(None)
    except StopIteration:
        pass


def main(number: int = 20000, repeat: int = 15) -> None:
    protocol = SimpleNamespace(
        transport=SimpleNamespace(write=lambda data: None),
        flow=SimpleNamespace(write_paused=False, read_paused=0),
        server=SimpleNamespace(
            default_header_bytes=b"server: corral\r\ndate: Sun, 06 Dec 2026 00:00:00 GMT\r\n", stopping=False
        ),
        state=SimpleNamespace(client_close=False),
        response_complete=lambda cycle: None,
    )

    def hello() -> None:
        cycle = RequestCycle(protocol, {}, True, False, False, True, False)
        cycle.body_complete = True
        _run(cycle.send(START))
        _run(cycle.send(BODY))

    def chunked() -> None:
        cycle = RequestCycle(protocol, {}, True, False, False, True, False)
        cycle.body_complete = True
        _run(cycle.send(START))
        _run(cycle.send(PART))
        _run(cycle.send(PART))
        _run(cycle.send(END))

    for name, fn in (
        ("Content-Length response (start + body)", hello),
        ("chunked response (start + 3 bodies)", chunked),
    ):
        best = min(timeit.repeat(fn, number=number, repeat=repeat)) / number
        print(f"{name}: {best * 1e6:.3f} us")


if __name__ == "__main__":
    main()
