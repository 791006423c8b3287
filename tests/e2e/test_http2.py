"""HTTP/2 on a real `serve` with real clients: curl (--http2 over TLS and by Upgrade: h2c, --http2-prior-knowledge),
httpx with http2=True, h2load (100 streams per connection, h2c and TLS); Starlette (JSON, echo, streaming) over h2
and h2c, a TLS client certificate seen in the scope over h2, Django over h2c; a Rapid Reset flood against the worker
process, which stays up, serves other connections and keeps its memory bounded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import psutil
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "worker"))
from h2_helpers import H2Client
from serve_harness import WAIT, Master
from test_tls import client_context, make_certs

CURL = shutil.which("curl")
H2LOAD = shutil.which("h2load")
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")

STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

async def home(request):
    tls = request.scope["extensions"].get("tls") or {}
    return JSONResponse({"http_version": request.scope["http_version"], "scheme": request.url.scheme,
                         "host": request.headers.get("host"), "client_cert_name": tls.get("client_cert_name")})

async def echo(request):
    body = await request.body()
    return JSONResponse({"length": len(body), "query": dict(request.query_params)})

async def stream(request):
    async def chunks():
        for i in range(50):
            yield f"chunk {i}\\n".encode() * 100
    return StreamingResponse(chunks(), media_type="text/plain")

app = Starlette(routes=[Route("/", home), Route("/echo", echo, methods=["POST"]), Route("/stream", stream)])
"""

STREAMED = "".join(f"chunk {i}\n" * 100 for i in range(50))


@pytest.fixture
def serve(tmp_path, masters):
    pytest.importorskip("starlette")
    (tmp_path / "starlette_h2.py").write_text(textwrap.dedent(STARLETTE_APP))

    def start(*args: str, app: str = "starlette_h2:app", cwd: Path = tmp_path, env: dict | None = None) -> Master:
        master = masters(cwd, "-w", "1", *args, app, env=env)
        master.wait_workers(1)
        return master

    return start


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CURL, "-sS", "--max-time", str(WAIT), *args], capture_output=True, text=True, timeout=WAIT * 2
    )


def check_starlette(client: httpx.Client, base: str, scheme: str) -> None:
    home = client.get(f"{base}/")
    assert home.http_version == "HTTP/2"
    assert home.json()["http_version"] == "2" and home.json()["scheme"] == scheme
    body = os.urandom(300_000)
    assert client.post(f"{base}/echo?a=1", content=body).json() == {"length": len(body), "query": {"a": "1"}}
    streamed = client.get(f"{base}/stream")
    assert streamed.http_version == "HTTP/2" and streamed.text == STREAMED


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_h2_over_tls_by_alpn_with_a_client_certificate(serve, tmp_path):
    certs = make_certs(tmp_path)
    master = serve(
        "--certfile",
        str(certs["cert"]),
        "--keyfile",
        str(certs["key"]),
        "--ca-certs",
        str(certs["ca"]),
        "--cert-reqs",
        "1",
    )
    base = f"https://127.0.0.1:{master.port}"
    done = curl(
        "--http2",
        "--cacert",
        str(certs["ca"]),
        "--cert",
        str(certs["client_cert"]),
        "--key",
        str(certs["client_key"]),
        "-w",
        "\n%{http_version}",
        f"{base}/",
    )
    body, version = done.stdout.rsplit("\n", 1)
    assert version == "2", done.stderr
    seen = json.loads(body)
    assert seen == {
        "http_version": "2",
        "scheme": "https",
        "host": f"127.0.0.1:{master.port}",
        "client_cert_name": "CN=client.example,O=Test Org",
    }
    with httpx.Client(http2=True, verify=client_context(certs), timeout=WAIT) as client:
        check_starlette(client, base, "https")
    # A client without h2 in its ALPN gets HTTP/1.1 on the same port.
    done = curl("--http1.1", "--cacert", str(certs["ca"]), "-w", "\n%{http_version}", f"{base}/")
    assert done.stdout.endswith("\n1.1") and json.loads(done.stdout.rsplit("\n", 1)[0])["http_version"] == "1.1"


@pytest.mark.skipif(CURL is None or H2LOAD is None, reason="curl or h2load is not installed")
def test_h2c_prior_knowledge_curl_httpx_h2load_and_a_rapid_reset_flood(serve):
    master = serve()
    base = f"http://127.0.0.1:{master.port}"
    done = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"{base}/")
    assert done.stdout.endswith("\n2") and json.loads(done.stdout.rsplit("\n", 1)[0])["http_version"] == "2"
    # Upgrade: h2c (curl --http2 on http://): 101, then the request is stream 1; a POST stays HTTP/1.1.
    done = curl("--http2", "-w", "\n%{http_version}", f"{base}/")
    assert done.stdout.endswith("\n2") and json.loads(done.stdout.rsplit("\n", 1)[0])["http_version"] == "2"
    done = curl("--http2", "--data-binary", "abc", "-w", "\n%{http_version}", f"{base}/echo")
    assert done.stdout.endswith("\n1.1"), done.stdout
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as client:
        check_starlette(client, base, "http")
    load = subprocess.run(
        [H2LOAD, "-n", "2000", "-c", "4", "-m", "16", f"{base}/"], capture_output=True, text=True, timeout=120
    )
    assert "2000 succeeded" in load.stdout and "status codes: 2000 2xx" in load.stdout, load.stdout

    workers = psutil.Process(master.pid).children()
    assert len(workers) == 1
    before = workers[0].memory_info().rss
    for _ in range(5):  # Rapid Reset: streams opened and cancelled at once, as fast as the socket takes them
        with H2Client(master.port) as attacker:
            try:
                for _ in range(2000):
                    attacker.conn.reset_stream(attacker.request("/"))
                attacker.flush()
                attacker.until_closed()
            except OSError:
                pass  # reset by the server while still sending: it closed on us, as it should
            assert attacker.goaway is None or attacker.goaway.error_code == 11  # ENHANCE_YOUR_CALM
    assert workers[0].is_running() and psutil.Process(master.pid).children() == workers  # no restart
    assert workers[0].memory_info().rss - before < 100 * 1024 * 1024
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as client:
        assert client.get(f"{base}/").json()["http_version"] == "2"
    assert "RST_STREAM frames in a second" in master.output


@pytest.mark.skipif(H2LOAD is None, reason="h2load is not installed")
def test_h2load_100_concurrent_streams_per_connection_over_h2c_and_tls(serve, tmp_path):
    certs = make_certs(tmp_path)
    plain = serve()
    tls = serve("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]))
    for base in (f"http://127.0.0.1:{plain.port}", f"https://127.0.0.1:{tls.port}"):
        # 100 streams at once per connection, with the RFC's default windows (-w 16 -W 16: 64 KiB per stream and
        # 64 KiB for the connection, which the 100 share): the streamed responses take turns on the connection's
        # window, in whatever pieces it is opened by.
        load = subprocess.run(
            [H2LOAD, "-n", "2000", "-c", "2", "-m", "100", "-w", "16", "-W", "16", f"{base}/", f"{base}/stream"],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert "2000 succeeded" in load.stdout and "status codes: 2000 2xx" in load.stdout, load.stdout + load.stderr
        assert f"Application protocol: {'h2' if base.startswith('https') else 'h2c'}\n" in load.stdout


@pytest.fixture(scope="module")
def django_project(tmp_path_factory) -> Path:
    pytest.importorskip("django")
    folder = tmp_path_factory.mktemp("django_h2")
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(folder)], check=True, timeout=120)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=folder, check=True, timeout=300
    )
    return folder


def test_django_over_h2c(serve, django_project):
    master = serve(app="mysite.asgi:application", cwd=django_project, env={"DJANGO_SETTINGS_MODULE": "mysite.settings"})
    with httpx.Client(http1=False, http2=True, base_url=f"http://127.0.0.1:{master.port}", timeout=WAIT) as client:
        page = client.get("/admin/login/")
        assert page.status_code == 200 and page.http_version == "HTTP/2"
        assert "Django administration" in page.text and "csrftoken" in page.cookies
        assert client.post("/admin/login/", data={"username": "x", "password": "y"}).status_code == 403
        assert client.get("/no/such/page/").status_code == 404


def test_hup_sends_goaway_and_the_stream_in_flight_is_answered(serve, tmp_path):
    import signal

    from serve_harness import write_apps

    write_apps(tmp_path)
    master = serve(app="apps:app")
    old = {p.pid for p in psutil.Process(master.pid).children()}
    with H2Client(master.port) as client:
        stream_id = client.request("/slow?1.5")
        master.wait_for_line("slow request started")
        master.signal(signal.SIGHUP)  # new workers start, the old one stops gracefully: GOAWAY
        client.until(lambda: client.goaway is not None)
        assert client.goaway.error_code == 0 and client.goaway.last_stream_id == stream_id
        reply = client.response(stream_id)
        assert reply.status == 200 and int(reply.body) in old  # answered by the worker that got it
        client.until_closed()
    with H2Client(master.port) as fresh:  # a new worker serves the next connection
        assert int(fresh.get("/").body) not in old
