"""The nginx recipe (docs/recipes/nginx.conf) in front of the `serve` recipe (serve.sh), run for real.

Only mechanical substitutions are made (see recipes.py): the socket and pid paths go to a temporary
folder, `listen 80` to a free loopback port, the commented TLS lines are switched on with a throw-away
certificate, and the app is one that reports what it saw. nginx runs in the foreground with a temporary
prefix and is stopped by pid, like every corral process here.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from recipes import localize_serve, recipe, serve_argv, substitute, substitute_re
from serve_harness import LIFESPAN, STOP_WAIT, WAIT, Master, free_port, wait_until


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


NGINX = _find_nginx()
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs nginx-light)")

HOST = "example.com"  # the recipe's server_name; requests carry it as their Host header
WORKERS = 4  # the recipe's -w

APP = '''
import json, os

def _sockets():
    """The socket inodes this worker has open: its upstream connections from nginx among them."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found.append(link)
    return found

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    headers = dict(scope["headers"])
    report = {
        "client": scope["client"],
        "scheme": scope["scheme"],
        "host": headers.get(b"host", b"").decode("latin-1"),
        "x_forwarded_for": headers.get(b"x-forwarded-for", b"").decode("latin-1"),
        "pid": os.getpid(),
    }
    if scope["path"] == "/sockets":
        report["sockets"] = _sockets()
    body = json.dumps(report).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


# ---------------------------------------------------------------------------- the pieces


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={HOST}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=WAIT,
    )
    return cert, key


def nginx_conf(
    prefix: Path, socket_path: Path, port: int, tls: tuple[int, Path, Path] | None, user: str | None = None
) -> str:
    """nginx.conf: the recipe, substituted, inside a minimal main/events/http frame."""
    site = recipe("nginx.conf")
    site = substitute(site, "/run/corral/corral.sock", str(socket_path), count=1)
    site = substitute_re(site, r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{port};")
    if tls is not None:
        tls_port, cert, key = tls
        site = substitute_re(site, r"^(\s*)#\s*listen 443 ssl;", rf"\1listen 127.0.0.1:{tls_port} ssl;")
        site = substitute_re(site, r"^(\s*)#\s*ssl_certificate\s+\S+;", rf"\1ssl_certificate {cert};")
        site = substitute_re(site, r"^(\s*)#\s*ssl_certificate_key\s+\S+;", rf"\1ssl_certificate_key {key};")
    return nginx_frame(prefix, site, f"{prefix}/access.log", user)


def nginx_frame(prefix: Path, site: str, access_log: str = "off", user: str | None = None) -> str:
    """A recipe (http-level directives) inside a minimal main/events/http frame whose temporary
    folders are under `prefix`; `user` is nginx's `user` directive (its workers' user, when started as root)."""
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir(exist_ok=True)
    # nginx started as root would run its workers as `nobody`, who cannot reach the test's folders.
    if user is not None:
        user = f"user {user};"
    else:
        user = "user root;" if os.geteuid() == 0 else ""
    return (
        textwrap.dedent(f"""\
        {user}
        worker_processes 1;
        events {{ worker_connections 512; }}
        http {{
            access_log {access_log};
            client_body_temp_path {temp["client_body"]};
            proxy_temp_path {temp["proxy"]};
            fastcgi_temp_path {temp["fastcgi"]};
            uwsgi_temp_path {temp["uwsgi"]};
            scgi_temp_path {temp["scgi"]};
        """)
        + textwrap.indent(site, "    ")
        + "}\n"
    )


class Nginx:
    """nginx in the foreground (`daemon off`), our child; stopped by pid, workers included."""

    def __init__(self, prefix: Path, conf: str) -> None:
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(conf)
        self.error_log = prefix / "error.log"
        directives = f"daemon off; pid {prefix}/nginx.pid; error_log {self.error_log} info;"
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(self.conf), "-e", str(self.error_log), "-g", directives],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.worker_pids: set[int] = set()

    def log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.log()}\n{self.conf.read_text()}")
        try:
            self.worker_pids.update(child.pid for child in psutil.Process(self.proc.pid).children())
        except psutil.Error:
            pass

    def stop(self) -> None:
        self.check_running_quietly()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_WAIT)
        leftovers = []
        for pid in self.worker_pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and "nginx" in proc.name():
                    proc.kill()
                    leftovers.append(proc)
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=STOP_WAIT)

    def check_running_quietly(self) -> None:
        try:
            self.check_running()
        except AssertionError:
            pass


class Stack:
    """serve (the recipe's command) behind nginx (the nginx recipe)."""

    def __init__(self, root: Path, trusted: bool, tls: bool) -> None:
        self.root = root
        self.master: Master | None = None
        self.nginx: Nginx | None = None
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        tls_config = None
        if tls:
            cert, key = make_certificate(root)
            tls_config = (self.tls_port, cert, key)
        (root / "proxyapp.py").write_text(LIFESPAN + APP)
        # A short folder for the socket (unix socket paths are limited to 107 bytes); removed by stop().
        self.run_dir = Path(tempfile.mkdtemp(prefix="corral-run-", dir="/tmp"))
        self.socket_path = self.run_dir / "corral.sock"
        self.pidfile = self.run_dir / "corral.pid"
        try:
            argv = localize_serve(serve_argv(), self.run_dir, "proxyapp:app")
            if not trusted:  # the default --forwarded-allow-ips (127.0.0.1,::1)
                index = argv.index("--forwarded-allow-ips")
                assert argv[index + 1] == "unix"
                del argv[index : index + 2]
            self.argv = argv
            self.conf = nginx_conf(root, self.socket_path, self.port, tls_config)
        except BaseException:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def start(self) -> Stack:
        self.master = Master([], self.root, pidfile=self.pidfile, argv=self.argv)
        self.master.wait_workers(WORKERS)
        self.nginx = Nginx(self.root, self.conf)
        wait_until(self._answers, "nginx to answer through corral")
        return self

    def _answers(self) -> bool:
        assert self.nginx is not None
        self.nginx.check_running()
        try:
            status, _ = self.get()
        except OSError:
            return False
        return status == 200

    def connection(self, https: bool = False) -> http.client.HTTPConnection:
        if https:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=WAIT, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)

    def get(self, path: str = "/", headers: dict[str, str] | None = None, https: bool = False) -> tuple[int, dict]:
        conn = self.connection(https)
        try:
            conn.request("GET", path, headers={"Host": HOST, **(headers or {})})
            response = conn.getresponse()
            body = response.read()
            return response.status, json.loads(body) if response.status == 200 else {"body": body.decode()}
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            if self.nginx is not None:
                self.nginx.stop()
        finally:
            try:
                if self.master is not None:
                    code = self.master.stop()
                    assert code == OK, f"serve exited with {code}:\n{self.master.output}"
            finally:
                shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def trusted(tmp_path_factory) -> Iterator[Stack]:
    """The recipes exactly: serve with --forwarded-allow-ips unix; nginx with its TLS lines switched on."""
    stack = Stack(tmp_path_factory.mktemp("nginx-trusted"), trusted=True, tls=OPENSSL is not None)
    try:
        yield stack.start()
    finally:
        stack.stop()


# ---------------------------------------------------------------------------- the tests


def test_trusted_socket_client_is_the_address_nginx_appends(trusted):
    status, seen = trusted.get()
    assert status == 200, seen
    assert seen["x_forwarded_for"] == "127.0.0.1"  # nginx's $proxy_add_x_forwarded_for: the peer it saw
    assert seen["client"] == ["127.0.0.1", 0]
    assert seen["scheme"] == "http"  # X-Forwarded-Proto $scheme on the plain listener
    assert seen["host"] == HOST


def test_trusted_socket_a_spoofed_x_forwarded_for_stays_on_the_left(trusted):
    status, seen = trusted.get(headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
    assert status == 200, seen
    assert seen["x_forwarded_for"] == "6.6.6.6, 127.0.0.1"
    assert seen["client"] == ["127.0.0.1", 0]  # the right-most untrusted entry, not the client's claim
    assert seen["scheme"] == "http"  # nginx replaced the client's X-Forwarded-Proto with $scheme


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed: no certificate for the TLS listener")
def test_trusted_socket_tls_terminated_by_nginx_is_https(trusted):
    status, seen = trusted.get(https=True, headers={"X-Forwarded-For": "6.6.6.6"})
    assert status == 200, seen
    assert seen["scheme"] == "https"
    assert seen["client"] == ["127.0.0.1", 0]
    assert seen["host"] == HOST


def test_thousand_keepalive_requests_reuse_upstream_connections(trusted):
    """1,000 requests on keep-alive connections to nginx, which keeps its connections to corral alive."""
    conn = trusted.connection()
    ok, connections, upstream_sockets, pids = 0, 1, set(), set()
    try:
        for number in range(1000):
            path = "/sockets" if number % 10 == 0 else "/"
            conn.request("GET", path, headers={"Host": HOST})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, (number, response.status, body)
            seen = json.loads(body)
            assert seen["client"] == ["127.0.0.1", 0] and seen["host"] == HOST, seen
            pids.add(seen["pid"])
            upstream_sockets.update(f"{seen['pid']}:{s}" for s in seen.get("sockets", ()))
            ok += 1
            if response.will_close:  # nginx's keepalive_requests: a new client connection, as browsers do
                conn.close()
                conn = trusted.connection()
                connections += 1
    finally:
        conn.close()
    assert ok == 1000
    # Every request on a new upstream connection would show ~100 distinct sockets in the sampled ones (each
    # sample sees its own fresh connection) plus the workers' listeners and channels; kept-alive
    # connections show the same few again and again.
    print(
        f"{ok} requests over {connections} client connection(s); workers {sorted(pids)}; "
        f"{len(upstream_sockets)} distinct sockets seen in the workers"
    )
    assert len(upstream_sockets) < 50, sorted(upstream_sockets)


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed: no certificate for the TLS listener")
def test_untrusted_socket_ignores_every_forwarded_header(tmp_path):
    """The default --forwarded-allow-ips (127.0.0.1,::1) does not cover a unix-socket peer."""
    stack = Stack(tmp_path, trusted=False, tls=True)
    try:
        stack.start()
        for https in (False, True):
            status, seen = stack.get(
                https=https, headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6;proto=https"}
            )
            assert status == 200, seen
            assert seen["x_forwarded_for"] == "6.6.6.6, 127.0.0.1"  # nginx sent it; corral did not use it
            assert seen["client"] is None  # a unix-socket peer has no address
            assert seen["scheme"] == "http"  # even on nginx's TLS listener (X-Forwarded-Proto: https)
    finally:
        stack.stop()


def test_reload_under_load_through_nginx_fails_no_request(trusted):
    """`systemctl reload` (HUP) twice while GETs and POSTs flow through nginx: new workers, not one failed
    request.

    A stopping worker serves a request nginx sends on one of its keep-alive connections (answering with
    `connection: close`) and closes an idle one only after a grace with nothing sent: no request needs a
    retry, so a POST is as safe as a GET (before, nginx answered 502 to a POST in that race).
    """
    stop = threading.Event()
    ok: list[int] = []
    failures: list[str] = []

    def load(method: str) -> None:
        conn = trusted.connection()
        payload = b"x" * 100 if method == "POST" else None  # nginx does not retry a POST: it must not fail
        while not stop.is_set():
            try:
                conn.request(method, "/", body=payload, headers={"Host": HOST})
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    ok.append(json.loads(body)["pid"])
                else:
                    failures.append(f"{response.status} {body[:200]!r}")
                if response.will_close:
                    conn.close()
                    conn = trusted.connection()
            except OSError as exc:  # nginx itself never goes away here: any error is a failure
                failures.append(repr(exc))
                conn.close()
                conn = trusted.connection()
        conn.close()

    threads = [threading.Thread(target=load, args=(method,), daemon=True) for method in ("GET", "POST", "POST")]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(ok) >= 100 or failures, "the load to get going")
        for _ in range(2):
            before = {w["pid"] for w in trusted.master.wait_workers(WORKERS)}
            served = len(ok)
            trusted.master.signal(signal.SIGHUP)
            after = {
                w["pid"] for w in trusted.master.wait_workers(WORKERS, lambda ws: not {w["pid"] for w in ws} & before)
            }
            wait_until(lambda: set(ok[served:]) & after or failures, "the new workers to serve")
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    print(f"{len(ok)} answers from workers {sorted(set(ok))}")
    assert failures == [], failures[:10]
    assert len(ok) > 100


# ---------------------------------------------------------------------------- the socket's mode


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx's workers run as another user only when it starts as root")
def test_nginx_running_as_another_user_reaches_the_default_socket(tmp_path):
    """The recipe's serve command binds its socket 0777 (gunicorn's --umask 0), so nginx's workers, running as
    `nobody` as a packaged nginx's run as www-data, connect; with -m 077 they get 502, the failure the default
    avoids (the deployment page's -m 007 with -g www-data keeps it to nginx's group)."""
    import grp
    import pwd
    import stat

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")
    run_dir = Path(tempfile.mkdtemp(prefix="corral-mode-", dir="/tmp"))
    os.chmod(run_dir, 0o755)  # searchable by nobody, as /run/corral is by www-data
    socket_path, port = run_dir / "corral.sock", free_port()
    (tmp_path / "proxyapp.py").write_text(LIFESPAN + APP)
    nginx_user = f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"
    nginx = None
    masters: list[Master] = []
    try:
        for extra, expected in (([], 200), (["-m", "077"], 502)):
            argv = localize_serve(serve_argv(), run_dir, "proxyapp:app")
            argv[-1:-1] = extra
            master = Master([], tmp_path, pidfile=run_dir / "corral.pid", argv=argv)
            masters.append(master)
            master.wait_workers(WORKERS)
            mode = stat.S_IMODE(os.stat(socket_path).st_mode)
            assert mode == (0o777 if not extra else 0o700)
            if nginx is None:
                nginx = Nginx(run_dir, nginx_conf(run_dir, socket_path, port, None, user=nginx_user))
            nginx.check_running()

            def answer() -> int | None:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
                    try:
                        conn.request("GET", "/", headers={"Host": HOST})
                        response = conn.getresponse()
                        response.read()
                        return response.status
                    finally:
                        conn.close()
                except OSError:
                    return None

            assert wait_until(answer, "nginx to answer") == expected, nginx.log()
            if expected == 502:
                assert "Permission denied" in nginx.log()
            assert master.stop() == OK
    finally:
        if nginx is not None:
            nginx.stop()
        for master in masters:
            master.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
