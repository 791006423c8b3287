"""Hostile clients against a real `serve -w 2`, with the cost measured in the worker processes (psutil).

    python -m bench.hostile pipeline   # 300 connections x 1,000 pipelined GETs, no answer read: worker RSS
    python -m bench.hostile chunks     # a 5 MB body as 1-byte chunks (30 MB on the wire): worker CPU
    python -m bench.hostile slowbody   # 1,100 uploads stalled after their head, then one ordinary GET
    python -m bench.hostile slowbody --app echo:wsgi --count 40

`--python` runs another interpreter's corral (an older checkout's venv) for before/after figures. The echo
applications (ASGI `echo:app`, WSGI `echo:wsgi`) are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

from bench.servers import free_port, wait_port

ECHO = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message["body"]
        if not message["more_body"]:
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok:%d" % len(body)})


def wsgi(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok:%d" % len(body)]
"""


def workers(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children()


def rss(pid: int) -> int:
    return sum(p.memory_info().rss for p in workers(pid))


def cpu(pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in workers(pid))


def pipeline(port: int, pid: int, count: int) -> str:
    before = rss(pid)
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 1000
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        try:
            sock.send(request)
        except BlockingIOError:
            pass
        socks.append(sock)
    time.sleep(4)
    grown = rss(pid) - before
    for sock in socks:
        sock.close()
    return f"pipeline: {count} connections x 1,000 GETs unread: worker RSS +{grown / 2**20:.1f} MiB"


def chunks(port: int, pid: int, count: int) -> str:
    before = cpu(pid)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"1\r\nx\r\n" * 100_000
        try:
            for _ in range(50):
                sock.sendall(piece)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        answer = sock.recv(100).split(b"\r\n")[0].decode()
    return f"chunks: 5 MB as 1-byte chunks: {answer!r}, worker CPU {cpu(pid) - before:.2f} s"


def slowbody(port: int, pid: int, count: int) -> str:
    before = rss(pid)
    stalled = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        stalled.append(sock)
    time.sleep(1)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try:
            answer = sock.recv(100).split(b"\r\n")[0].decode()
        except TimeoutError:
            answer = "no answer in 60 s"
    waited = time.monotonic() - start
    grown = rss(pid) - before
    for sock in stalled:
        sock.close()
    return (
        f"slowbody: {count} stalled uploads, then a GET: {answer!r} after {waited:.1f} s; "
        f"worker RSS +{grown / 2**20:.1f} MiB"
    )


SCENARIOS = {"pipeline": (pipeline, 300), "chunks": (chunks, 1), "slowbody": (slowbody, 1100)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--app", default="echo:app")
    parser.add_argument("--count", type=int, help="connections (default: the scenario's)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose corral runs")
    parser.add_argument("serve_args", nargs="*", help="more `serve` arguments (after --)")
    args = parser.parse_args()
    run, default_count = SCENARIOS[args.scenario]
    folder = Path(tempfile.mkdtemp(prefix="corral-hostile-"))
    (folder / "echo.py").write_text(textwrap.dedent(ECHO))
    port = free_port()
    proc = subprocess.Popen(
        [args.python, "-m", "corral.master", "-w", "2", "-b", f"127.0.0.1:{port}", *args.serve_args, args.app],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_port(port, proc):
            raise SystemExit("serve did not start")
        while len(workers(proc.pid)) < 2:
            time.sleep(0.05)
        print(run(port, proc.pid, args.count or default_count))
    finally:
        procs = [proc, *psutil.Process(proc.pid).children(recursive=True)]
        for p in procs:
            try:
                p.kill()
            except (psutil.Error, ProcessLookupError):
                pass
        proc.wait(30)


if __name__ == "__main__":
    main()
