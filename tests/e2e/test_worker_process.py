"""One worker process end to end: exit codes the master relies on, signals, WSGI/ASGI2 detection."""

from __future__ import annotations

import signal
import textwrap
import threading

import httpx
import pytest

from corral.shared.exitcodes import APP_IMPORT_ERROR, OK, WORKER_BOOT_ERROR

TIMEOUT = httpx.Timeout(60.0)

APPS = """
import asyncio

async def asgi3(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["boot"] = "ok"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                print("lifespan shutdown ran", flush=True)
                return
    if scope["path"] == "/slow":
        print("slow request started", flush=True)
        await asyncio.sleep(1.0)
    body = f"{scope['path']} {scope['state'].get('boot')}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})

class Asgi2:
    def __init__(self, scope):
        self.scope = scope
    async def __call__(self, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2"})

def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi ", environ["PATH_INFO"].encode()]

async def refuses_to_start(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

def factory():
    return wsgi
"""


@pytest.fixture
def apps(tmp_path):
    (tmp_path / "apps.py").write_text(textwrap.dedent(APPS))
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    return tmp_path


@pytest.mark.parametrize(
    "spec, expected",
    [("apps:asgi3", "/x ok"), ("apps:Asgi2", "asgi2"), ("apps:wsgi", "wsgi /x"), ("apps:factory()", "wsgi /x")],
)
def test_interfaces_are_detected(worker, apps, spec, expected):
    process = worker(spec, apps)
    assert httpx.get(process.url + "/x", timeout=TIMEOUT).text == expected
    assert process.stop() == OK


def test_sigterm_lets_the_request_in_flight_finish_then_runs_lifespan_shutdown(worker, apps):
    process = worker("apps:asgi3", apps)
    assert httpx.get(process.url + "/", timeout=TIMEOUT).status_code == 200  # booted
    results = []
    client = threading.Thread(target=lambda: results.append(httpx.get(process.url + "/slow", timeout=TIMEOUT)))
    client.start()
    process.wait_for_line("slow request started")
    process.proc.send_signal(signal.SIGTERM)
    client.join(60)
    assert results and results[0].status_code == 200 and results[0].text == "/slow ok"
    assert process.proc.wait(60) == OK
    assert "lifespan shutdown ran" in process.output


def test_import_error_exits_with_its_own_code_and_one_traceback(worker, apps):
    process = worker("broken:app", apps)
    assert process.proc.wait(60) == APP_IMPORT_ERROR
    process.stop()
    assert process.output.count("Traceback") == 1
    assert "no_such_module_anywhere" in process.output


def test_missing_attribute_is_one_line(worker, apps):
    process = worker("apps:nothing_here", apps)
    assert process.proc.wait(60) == APP_IMPORT_ERROR
    process.stop()
    assert "attribute 'nothing_here' not found" in process.output
    assert "Traceback" not in process.output


def test_lifespan_startup_failed_exits_with_boot_error(worker, apps):
    process = worker("apps:refuses_to_start", apps, {"CORRAL_LIFESPAN": "on"})
    assert process.proc.wait(60) == WORKER_BOOT_ERROR
    process.stop()
    assert "database unreachable" in process.output
