"""TLS on a real `serve`: HTTPS and WSS with gunicorn's flags, client certificates in ASGI's TLS extension,
one-line errors for bad files, certificate rotation on HUP, the handshake timeout. Certificates are made at
test time with openssl (a throw-away CA, a server and a client certificate)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import LIFESPAN, WAIT, Master, wait_until

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed (.ci/run installs it)")

APP = """
import json

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    tls = scope["extensions"].get("tls")
    seen = {"scheme": scope["scheme"], "tls": tls}
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(seen)})
        await send({"type": "websocket.close"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [OPENSSL, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=WAIT
    )  # type: ignore[list-item]  # None: skipped above


def make_certs(folder: Path, server_cn: str = "localhost", tag: str = "") -> dict[str, Path]:
    """A CA (made once per folder), a server certificate for 127.0.0.1/localhost and a client certificate."""
    # The extensions RFC 5280 asks for (CA key usage, authority key identifiers): Python 3.13's default
    # context verifies with VERIFY_X509_STRICT and refuses certificates without them.
    if not (folder / "ca.pem").exists():
        openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=corral test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder,
        )
    leaf = "authorityKeyIdentifier=keyid,issuer\nkeyUsage=critical,digitalSignature\n"
    (folder / "server.cnf").write_text(
        leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    (folder / "client.cnf").write_text(leaf + "extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        (f"server{tag}", f"/CN={server_cn}", ["-extfile", "server.cnf"]),
        (f"client{tag}", "/O=Test Org/CN=client.example", ["-extfile", "client.cnf"]),
    ):
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=folder,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *ext,
            cwd=folder,
        )
    return {
        "ca": folder / "ca.pem",
        "cert": folder / f"server{tag}.pem",
        "key": folder / f"server{tag}.key",
        "client_cert": folder / f"client{tag}.pem",
        "client_key": folder / f"client{tag}.key",
    }


@pytest.fixture
def tls(tmp_path, masters):
    (tmp_path / "tlsapp.py").write_text(LIFESPAN + textwrap.dedent(APP))
    certs = make_certs(tmp_path)

    def serve(*args: str, wait: bool = True) -> Master:
        master = masters(tmp_path, "-w", "1", *args, "tlsapp:app")
        if wait:
            master.wait_workers(1)
        return master

    return serve, certs, tmp_path


def client_context(certs: dict[str, Path], with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    if with_cert:
        context.load_cert_chain(str(certs["client_cert"]), str(certs["client_key"]))
    return context


def test_https_scheme_and_tls_extension(tls):
    serve, certs, _ = tls
    master = serve("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]))
    response = httpx.get(f"https://127.0.0.1:{master.port}/", verify=client_context(certs), timeout=WAIT)
    seen = response.json()
    assert seen["scheme"] == "https"
    assert seen["tls"]["tls_version"] in (0x0303, 0x0304)
    assert seen["tls"]["server_cert"].strip() == certs["cert"].read_text().strip()
    assert seen["tls"]["client_cert_chain"] == [] and seen["tls"]["client_cert_name"] is None
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://127.0.0.1:{master.port}/", timeout=WAIT)  # plain HTTP on a TLS port gets nowhere


def test_client_certificate_required_and_shown_in_the_scope(tls):
    serve, certs, _ = tls
    master = serve(
        "--certfile",
        str(certs["cert"]),
        "--keyfile",
        str(certs["key"]),
        "--ca-certs",
        str(certs["ca"]),
        "--cert-reqs",
        "2",
    )
    seen = httpx.get(
        f"https://127.0.0.1:{master.port}/", verify=client_context(certs, with_cert=True), timeout=WAIT
    ).json()
    assert seen["tls"]["client_cert_name"] == "CN=client.example,O=Test Org"
    assert seen["tls"]["client_cert_chain"][0].strip() == certs["client_cert"].read_text().strip()
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"https://127.0.0.1:{master.port}/", verify=client_context(certs), timeout=WAIT)


def test_wss_scheme(tls):
    from websockets.sync.client import connect

    serve, certs, _ = tls
    master = serve("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]))
    with connect(f"wss://127.0.0.1:{master.port}/ws", ssl=client_context(certs), open_timeout=WAIT) as ws:
        seen = json.loads(ws.recv(WAIT))
    assert seen["scheme"] == "wss" and seen["tls"]["tls_version"] in (0x0303, 0x0304)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda c, d: ["--certfile", str(d / "missing.pem")], "invalid value for --certfile: cannot read"),
        (
            lambda c, d: ["--certfile", str(c["cert"]), "--keyfile", str(c["client_key"])],
            "is not the key of --certfile",
        ),
        (
            lambda c, d: ["--certfile", str(c["ca"].with_name("server.cnf")), "--keyfile", str(c["key"])],
            "cannot load the TLS certificate",
        ),
        (
            lambda c, d: ["--certfile", str(c["cert"]), "--keyfile", str(c["key"]), "--cert-reqs", "2"],
            "--cert-reqs 1 or 2 checks client certificates against --ca-certs",
        ),
        (lambda c, d: ["--keyfile", str(c["key"])], "need --certfile"),
        (
            lambda c, d: ["--certfile", str(c["cert"]), "--keyfile", str(c["key"]), "--ciphers", "NO-SUCH-CIPHER"],
            "invalid value for --ciphers",
        ),
    ],
)
def test_bad_tls_settings_are_one_line_and_exit_2(tls, make_args, message):
    serve, certs, folder = tls
    master = serve(*make_args(certs, folder), wait=False)
    assert master.wait(WAIT) == 2
    lines = [line for line in master.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], master.output


def test_hup_serves_a_renewed_certificate(tls):
    serve, certs, folder = tls
    live_cert, live_key = folder / "live.pem", folder / "live.key"
    shutil.copy(certs["cert"], live_cert)
    shutil.copy(certs["key"], live_key)
    master = serve("--certfile", str(live_cert), "--keyfile", str(live_key))

    def served_cn() -> str:
        with socket.create_connection(("127.0.0.1", master.port), timeout=WAIT) as raw:
            with client_context(certs).wrap_socket(raw, server_hostname="localhost") as sock:
                subject = dict(item[0] for item in sock.getpeercert()["subject"])
                return subject["commonName"]

    assert served_cn() == "localhost"
    renewed = make_certs(folder, server_cn="renewed.localhost", tag="2")
    shutil.copy(renewed["cert"], live_cert)
    shutil.copy(renewed["key"], live_key)
    old = {w["pid"] for w in master.wait_workers(1)}
    master.signal(signal.SIGHUP)
    master.wait_workers(1, lambda ws: not ({w["pid"] for w in ws} & old))
    assert wait_until(lambda: served_cn() == "renewed.localhost", "the renewed certificate")


def test_a_bad_certificate_on_hup_keeps_the_running_workers(tls):
    serve, certs, folder = tls
    live_cert = folder / "live.pem"
    shutil.copy(certs["cert"], live_cert)
    master = serve("--certfile", str(live_cert), "--keyfile", str(certs["key"]))
    old = {w["pid"] for w in master.wait_workers(1)}
    live_cert.write_text("not a certificate\n")
    master.signal(signal.SIGHUP)
    master.wait_for_line("Reload failed, keeping the running workers")
    assert {w["pid"] for w in master.wait_workers(1)} == old
    shutil.copy(certs["cert"], live_cert)  # the running workers' context still serves
    assert httpx.get(f"https://127.0.0.1:{master.port}/", verify=client_context(certs), timeout=WAIT).status_code == 200


def test_a_client_that_never_finishes_its_handshake_is_cut_off(tls):
    serve, certs, _ = tls
    master = serve(
        "--certfile",
        str(certs["cert"]),
        "--keyfile",
        str(certs["key"]),
        "--ssl-handshake-timeout",
        "0.5",
        "--max-applications",
        "1",
    )
    with socket.create_connection(("127.0.0.1", master.port), timeout=WAIT) as silent:
        # It holds no application slot meanwhile: a real client is served at once (the pool has one slot).
        assert (
            httpx.get(f"https://127.0.0.1:{master.port}/", verify=client_context(certs), timeout=WAIT).status_code
            == 200
        )
        assert silent.recv(1) == b""  # closed by the server after the handshake timeout


SSL_CONTEXT_CONF = """
import os
import ssl


def ssl_context(conf, default_ssl_context_factory):
    with open("ssl_context.calls", "a") as fh:
        fh.write(f"{os.getpid()} {conf.certfile}\\n")
    if os.environ.get("BROKEN_HOOK"):
        return None
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context
"""


def test_gunicorns_ssl_context_hook_is_called_only_when_tls_is_on(tls, masters):
    serve, certs, folder = tls
    (folder / "gunicorn.conf.py").write_text(SSL_CONTEXT_CONF)  # found without -c, as gunicorn finds it
    plain = serve()  # no certificate: gunicorn never calls the hook, and neither does corral
    assert httpx.get(f"http://127.0.0.1:{plain.port}/", timeout=WAIT).json()["scheme"] == "http"
    assert not (folder / "ssl_context.calls").exists()
    assert plain.stop() == 0

    master = serve("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]))
    assert (folder / "ssl_context.calls").read_text().splitlines() == [f"{master.pid} {certs['cert']}"]
    seen = httpx.get(f"https://127.0.0.1:{master.port}/", verify=client_context(certs), timeout=WAIT).json()
    assert seen["tls"]["tls_version"] == 0x0304  # the hook's context is the one served
    tls12 = client_context(certs)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"https://127.0.0.1:{master.port}/", verify=tls12, timeout=WAIT)
    assert master.stop() == 0

    broken = masters(
        folder, "--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]), "tlsapp:app", env={"BROKEN_HOOK": "1"}
    )
    assert broken.wait(WAIT) == 2
    errors = [line for line in broken.output.splitlines() if line.startswith("serve: error: ")]
    assert len(errors) == 1, broken.output
    assert "the ssl_context hook __config__.ssl_context returned NoneType, not an ssl.SSLContext" in errors[0]
