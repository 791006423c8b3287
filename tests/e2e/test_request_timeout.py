"""--request-timeout: the late request gets 504 at once; ASGI apps are cancelled with http.disconnect, and a
worker whose WSGI threads are all stuck is replaced gracefully (new worker first). --timeout (the event
loop's watchdog) runs worker_abort."""

from __future__ import annotations

import os
import sys
import textwrap
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import get, start_master, wait_until, write_apps

ASGI = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/late":
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            message = await receive()
            print(f"cancelled, then receive() gave {message['type']}", flush=True)
            raise
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""

WSGI = """
import os, threading

RELEASE = threading.Event()

def application(environ, start_response):
    if environ["PATH_INFO"] == "/stuck":
        RELEASE.wait(120)  # a thread nothing can interrupt (until the worker process ends)
    if environ["PATH_INFO"] == "/thread":
        start_response("200 OK", [])
        return [threading.current_thread().name.encode()]
    start_response("200 OK", [("content-type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


def test_asgi_request_past_its_deadline_gets_504_and_the_app_is_cancelled(tmp_path):
    (tmp_path / "lateapp.py").write_text(textwrap.dedent(ASGI))
    master = start_master(tmp_path, "--request-timeout", "1", "lateapp:app")
    port = master.port
    try:
        workers = {w["pid"] for w in master.wait_workers(1)}
        status, text = get(port, "/late")
        assert status == 504 and "did not answer in time" in text
        master.wait_for_line("cancelled, then receive() gave http.disconnect")
        assert "timed out after 1s (--request-timeout): answered 504" in master.output
        assert get(port, "/") == (200, str(next(iter(workers))))  # the same worker serves on
    finally:
        master.stop()


def test_stuck_wsgi_threads_recycle_the_worker_gracefully(tmp_path):
    (tmp_path / "stuckapp.py").write_text(textwrap.dedent(WSGI))
    master = start_master(tmp_path, "--request-timeout", "1", "--threads", "2", "stuckapp")
    port = master.port
    try:
        (first,) = {w["pid"] for w in master.wait_workers(1)}
        assert get(port, "/thread")[1].startswith("corral-wsgi")  # served natively, deadline and all
        answers: list[int] = []
        clients = [threading.Thread(target=lambda: answers.append(get(port, "/stuck")[0])) for _ in range(2)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
        assert answers == [504, 504]  # answered at once, the threads still stuck
        master.wait_for_line("asks to be replaced (stuck requests)")
        master.wait_workers(1, lambda ws: ws[0]["pid"] != first)
        status, text = get(port, "/")
        assert status == 200 and text != str(first)
        wait_until(lambda: f"Worker 1 (pid {first}) exited" in master.output, "the stuck worker to be gone")
    finally:
        master.stop()


def test_watchdog_runs_worker_abort(tmp_path):
    apps = write_apps(tmp_path)
    (apps / "gunicorn.conf.py").write_text(
        textwrap.dedent("""
        import os
        def worker_abort(worker):
            with open(f"aborted.{worker.pid}", "w") as fh:
                fh.write(str(worker.age))
    """)
    )
    master = start_master(apps, "-t", "2", "apps:app")
    port = master.port
    try:
        (first,) = {w["pid"] for w in master.wait_workers(1)}
        threading.Thread(target=lambda: _ignore(lambda: get(port, "/block", timeout=30)), daemon=True).start()
        aborted = apps / f"aborted.{first}"
        # The hook opens the file, then writes: wait for what it writes, not for the file.
        wait_until(lambda: aborted.exists() and aborted.read_text() != "", "worker_abort in the blocked worker")
        assert aborted.read_text() == "1"
        master.wait_workers(1, lambda ws: ws[0]["pid"] != first)
    finally:
        master.stop()


def _ignore(call) -> None:
    try:
        call()
    except OSError:
        pass
