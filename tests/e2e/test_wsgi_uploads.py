"""Slow and large uploads against a real WSGI worker process (issue 14, item 3): stalled uploads hold no
thread, and what the worker buffers for bodies an app has not read yet stays bounded (RSS, psutil)."""

from __future__ import annotations

import socket
import textwrap
import time

import httpx
import psutil

WAIT = 60.0

APP = """
import os, time

GATE = os.environ["GATE_FILE"]

def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        while not os.path.exists(GATE):  # the app is busy elsewhere: it reads the body only later
            time.sleep(0.01)
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(data)]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ordinary"]
"""


def _start(worker, tmp_path, threads: int):
    (tmp_path / "uploads_app.py").write_text(textwrap.dedent(APP))
    gate = tmp_path / "gate"
    process = worker("uploads_app:app", tmp_path, {"CORRAL_THREADS": str(threads), "GATE_FILE": str(gate)})
    return process, gate


def _head(length: int) -> bytes:
    return b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % length


def test_stalled_uploads_leave_ordinary_requests_served(worker, tmp_path):
    threads = 2
    process, gate = _start(worker, tmp_path, threads)
    gate.touch()  # the app reads at once: only the clients are slow
    stalled = []
    try:
        for _ in range(2 * threads):
            sock = socket.create_connection(("127.0.0.1", process.port), timeout=WAIT)
            sock.sendall(_head(10_000) + b"x" * 2_000)  # then nothing more
            stalled.append(sock)
        with httpx.Client(base_url=process.url, timeout=WAIT) as client:
            for _ in range(3):
                assert client.get("/").text == "ordinary"
        for sock in stalled:
            sock.sendall(b"y" * 8_000)
            answer = b""
            while not answer.endswith(b"\r\n\r\n10000"):
                data = sock.recv(4096)  # bounded by the socket's timeout
                assert data, answer
                answer += data
            assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in stalled:
            sock.close()
    assert process.proc.poll() is None


def test_buffered_upload_bytes_stay_bounded(worker, tmp_path):
    """30 clients push 8 MiB bodies at an app that reads none yet: the worker takes about one pre-read
    buffer per request and leaves the rest in the clients' kernel buffers (each connection stops reading)."""
    process, gate = _start(worker, tmp_path, 4)
    worker_process = psutil.Process(process.proc.pid)
    with httpx.Client(base_url=process.url, timeout=WAIT) as client:
        assert client.get("/").text == "ordinary"  # warmed up: threads and buffers in place
    rss_before = worker_process.memory_info().rss
    clients = []
    length = 8 * 1024 * 1024
    chunk = b"z" * (256 * 1024)
    try:
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", process.port), timeout=WAIT)
            sock.sendall(_head(length))
            sock.setblocking(False)
            clients.append(sock)
        sent = 0
        deadline = time.monotonic() + WAIT
        quiet_rounds = 0
        while quiet_rounds < 20:  # every connection refused more bytes 20 times in a row: nothing is read
            assert time.monotonic() < deadline, "the worker kept reading every body"
            progress = 0
            for sock in clients:
                try:
                    progress += sock.send(chunk)
                except BlockingIOError:
                    pass
            sent += progress
            quiet_rounds = quiet_rounds + 1 if progress == 0 else 0
            time.sleep(0.01)
        growth = worker_process.memory_info().rss - rss_before
        # 30 x (64 KiB pre-read + up to 256 KiB of one read past it) is under 10 MiB; allow for the
        # allocator's slack. Reading everything would be 240 MiB.
        assert growth < 40 * 1024 * 1024, (growth, sent)
        assert sent > growth
    finally:
        gate.touch()
        for sock in clients:
            sock.close()
    with httpx.Client(base_url=process.url, timeout=WAIT) as client:
        assert client.get("/").text == "ordinary"
