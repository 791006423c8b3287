"""Real frameworks, unmodified, on a real worker process: Django (ASGI and WSGI), Starlette, Flask."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

TIMEOUT = httpx.Timeout(60.0)  # the first request may wait in the backlog while the app boots


@pytest.fixture(scope="module")
def django_project(tmp_path_factory) -> Path:
    """`django-admin startproject` at test time, migrated, so the admin login page renders."""
    pytest.importorskip("django")
    folder = tmp_path_factory.mktemp("django")
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(folder)], check=True, timeout=120)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=folder, check=True, timeout=300
    )
    return folder


@pytest.mark.parametrize("entry", ["mysite.asgi:application", "mysite.wsgi:application"])
def test_django_project(worker, django_project, entry):
    process = worker(entry, django_project, {"DJANGO_SETTINGS_MODULE": "mysite.settings"})
    with httpx.Client(base_url=process.url, timeout=TIMEOUT) as client:
        page = client.get("/admin/login/")
        assert page.status_code == 200, process.output
        assert "Django administration" in page.text
        assert "csrftoken" in page.cookies
        # A POST without the CSRF token: Django reads the body and refuses it with its own 403.
        refused = client.post("/admin/login/", data={"username": "x", "password": "y"})
        assert refused.status_code == 403
        assert client.get("/no/such/page/").status_code == 404
        redirect = client.get("/admin/", follow_redirects=False)
        assert redirect.status_code == 302
        assert redirect.headers["location"].startswith("/admin/login/")
    assert process.stop() == 0


STARLETTE_APP = """
import contextlib
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan"}

async def home(request):
    return PlainTextResponse(request.state.greeting)

async def echo(request):
    body = await request.body()
    return JSONResponse({"length": len(body), "client": request.client.host,
                         "path": request.url.path, "query": dict(request.query_params)})

async def stream(request):
    async def chunks():
        for i in range(5):
            yield f"chunk {i}\\n".encode()
    return StreamingResponse(chunks(), media_type="text/plain")

app = Starlette(routes=[Route("/", home), Route("/echo/{rest:path}", echo, methods=["POST"]),
                        Route("/stream", stream)], lifespan=lifespan)
"""


def test_starlette_app(worker, tmp_path):
    pytest.importorskip("starlette")
    (tmp_path / "starlette_app.py").write_text(textwrap.dedent(STARLETTE_APP))
    process = worker("starlette_app:app", tmp_path)
    with httpx.Client(base_url=process.url, timeout=TIMEOUT) as client:
        assert client.get("/").text == "hello from lifespan"  # lifespan state reached the request
        body = os.urandom(300_000)
        echoed = client.post("/echo/caf%C3%A9?a=1&b=two", content=body).json()
        assert echoed == {
            "length": len(body),
            "client": "127.0.0.1",
            "path": "/echo/café",
            "query": {"a": "1", "b": "two"},
        }
        streamed = client.get("/stream")
        assert streamed.headers.get("transfer-encoding") == "chunked"
        assert streamed.text == "".join(f"chunk {i}\n" for i in range(5))
    assert process.stop() == 0


FLASK_APP = """
import hashlib
from flask import Flask, Response, request

app = Flask(__name__)

@app.get("/")
def home():
    return "hello from flask"

@app.post("/digest")
def digest():
    data = request.get_data()
    return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}

@app.get("/stream")
def stream():
    return Response((f"line {i}\\n" for i in range(100)), mimetype="text/plain")

@app.get("/boom")
def boom():
    raise RuntimeError("flask view failed")
"""


def test_flask_app(worker, tmp_path):
    pytest.importorskip("flask")
    (tmp_path / "flask_app.py").write_text(textwrap.dedent(FLASK_APP))
    process = worker("flask_app:app", tmp_path)
    with httpx.Client(base_url=process.url, timeout=TIMEOUT) as client:
        assert client.get("/").text == "hello from flask"
        body = os.urandom(2_000_000)
        result = client.post("/digest", content=body).json()
        assert result == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
        assert client.get("/stream").text == "".join(f"line {i}\n" for i in range(100))
        assert client.get("/boom").status_code == 500  # Flask answers its own 500
        assert client.get("/").status_code == 200  # and the worker keeps serving
    assert process.stop() == 0
