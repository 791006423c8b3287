"""Three corral "hosts" behind nginx and HAProxy, run from the "Many hosts" recipes (docs/recipes/many-hosts-*).

Each host is a network namespace joined to the others by a bridge, running the recipe's `serve -w 2`
command; nginx and HAProxy (the recipes) run in the root namespace, the bridge's address being the
balancers' own. A steady, bounded load goes through both balancers while the test does a rolling restart
(TERM a host, start it again, next host), a HUP on every host and a kill -9 of a whole host, and counts
what was sent, answered and failed in each scenario. Only addresses, ports, paths and the app are swapped
in the recipes (`recipes.substitute`, which fails when a recipe drifts).

Network namespaces need root (or CAP_NET_ADMIN): elsewhere the test is skipped, saying so; CI runs as
root. Everything is torn down by name and pid whatever happens.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipes import command_line, local_serve, recipe, substitute, substitute_re
from serve_harness import LIFESPAN, STOP_WAIT, WAIT, Master, free_port, kill_pids, wait_until
from test_nginx import NGINX, Nginx, nginx_frame

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
IP = shutil.which("ip")
RECIPE_NET = "10.0.1."  # the recipes' addresses: hosts .11-.13, the balancer .2
HOSTS = ("h1", "h2", "h3")
THREADS = 4  # load threads per balancer
REPORT = os.environ.get("CORRAL_MANY_HOSTS_REPORT")  # a file for the figures (the closing note's)


def _netns_refusal() -> str | None:
    if IP is None:
        return "iproute2's `ip` is not installed"
    if NGINX is None or HAPROXY is None:
        return "nginx and haproxy are needed (.ci/run installs them)"
    name = f"corralprobe{os.getpid()}"
    probe = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return (
            f"the kernel refuses network namespaces here ({probe.stderr.strip() or 'ip netns add failed'}): "
            "this test needs root or CAP_NET_ADMIN"
        )
    subprocess.run([IP, "netns", "del", name], capture_output=True)
    return None


REFUSAL = _netns_refusal()
pytestmark = pytest.mark.skipif(REFUSAL is not None, reason=REFUSAL or "")

APP = """
import asyncio, json, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    await asyncio.sleep(0.005)  # a little work: requests are in flight when a host goes
    body = json.dumps({"host": os.environ["TEST_HOST"], "client": scope["client"][0] if scope["client"] else None,
                       "pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=WAIT)  # type: ignore[list-item]  # IP is found, or the module skips
    if check and result.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {result.stderr}")
    return result


class Network:
    """A bridge in the root namespace (the balancers' address) and one namespace per host on it."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.net = f"10.231.{tag % 200 + 20}."
        self.bridge = f"crbr{tag}"
        self.namespaces = {host: f"corral{tag}{host}" for host in HOSTS}
        self.veths = {host: f"crv{tag}{host}" for host in HOSTS}
        self.balancer = self.net + "2"
        self.addresses = {host: self.net + str(11 + i) for i, host in enumerate(HOSTS)}

    def up(self) -> None:
        run("link", "add", self.bridge, "type", "bridge")
        run("addr", "add", self.balancer + "/24", "dev", self.bridge)
        run("link", "set", self.bridge, "up")
        for host in HOSTS:
            ns, veth = self.namespaces[host], self.veths[host]
            run("netns", "add", ns)
            run("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("link", "set", veth, "master", self.bridge, "up")
            run("-n", ns, "addr", "add", self.addresses[host] + "/24", "dev", "eth0")
            run("-n", ns, "link", "set", "eth0", "up")
            run("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for host in HOSTS:
            ns = self.namespaces[host]
            pids = run("netns", "pids", ns, check=False).stdout.split()
            kill_pids({int(pid) for pid in pids if pid.isdigit()})
            run("link", "del", self.veths[host], check=False)
            run("netns", "del", ns, check=False)
        run("link", "del", self.bridge, check=False)


def recipe_serve(net: Network, host: str, pidfile: Path) -> list[str]:
    command = substitute(command_line("many-hosts-serve.sh"), RECIPE_NET, net.net)
    command = substitute(command, f"{net.net}11:8000", f"{net.addresses[host]}:8000", count=1)
    command = substitute(command, "-w 4", "-w 2", count=1)  # two workers a host on a 2-core machine
    argv = shlex.split(command)
    assert argv[0] == "/srv/app/.venv/bin/serve"
    argv = [*local_serve(), *argv[1:]]
    argv[-1:] = ["--pid", str(pidfile), "hostapp:app"]  # the recipe's app spec is the last argument
    return argv


class Host:
    def __init__(self, net: Network, name: str, root: Path) -> None:
        self.net, self.name, self.root = net, name, root
        self.pidfile = root / f"{name}.pid"
        self.master: Master | None = None
        self.masters: list[Master] = []

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.net.namespaces[self.name], *recipe_serve(self.net, self.name, self.pidfile)]
        self.master = Master([], self.root, pidfile=self.pidfile, env={"TEST_HOST": self.name}, argv=argv)
        self.masters.append(self.master)
        try:
            self.master.wait_workers(2)
        except AssertionError as exc:
            raise AssertionError(f"{self.name} did not start: {exc}\n{self.master.output}") from None

    def workers(self) -> set[int]:
        assert self.master is not None
        return {w["pid"] for w in self.master.wait_workers(2)}

    def stop_all(self) -> None:
        for master in self.masters:
            master.stop()


class HAProxy:
    def __init__(self, root: Path, net: Network, port: int) -> None:
        self.socket = root / "haproxy.sock"
        conf = recipe("many-hosts-haproxy.cfg")
        conf = substitute(conf, "/run/haproxy/admin.sock", str(self.socket), count=1)
        conf = substitute_re(conf, r"^(\s*)bind :80$", rf"\1bind 127.0.0.1:{port}")
        conf = substitute(conf, RECIPE_NET, net.net)
        self.conf = root / "haproxy.cfg"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.conf)],
            stdin=subprocess.DEVNULL,  # type: ignore[list-item]  # the binary is found, or the module skips
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(self.socket))
            sock.sendall(text.encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode()

    def states(self) -> dict[str, str]:
        """Each server's status in the backend (UP, DOWN, ...)."""
        try:
            lines = self.command("show stat").splitlines()
        except OSError:
            return {}
        header = lines[0].lstrip("# ").split(",")
        found = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "corral_hosts" and row.get("svname") in HOSTS:
                found[row["svname"]] = row["status"].split(" ")[0]
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_WAIT)


def nginx_conf(prefix: Path, net: Network, port: int) -> str:
    site = recipe("many-hosts-nginx.conf")
    site = substitute(site, RECIPE_NET, net.net)
    site = substitute_re(site, r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{port};")
    return nginx_frame(prefix, site)


class Load:
    """Bounded steady load through one balancer: THREADS keep-alive clients, one request in flight each."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.sent = self.answered = 0
        self.failures: list[str] = []
        self.clients: set[str] = set()
        self.hosts: dict[str, int] = {}
        self.running = True
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while self.running:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
            with self.lock:
                self.sent += 1
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise AssertionError(f"status {response.status}: {body[:100]!r}")
                seen = json.loads(body)
                with self.lock:
                    self.answered += 1
                    self.clients.add(seen["client"])
                    self.hosts[seen["host"]] = self.hosts.get(seen["host"], 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.sent, self.answered, len(self.failures)

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def cluster(tmp_path) -> Iterator[dict[str, Any]]:
    (tmp_path / "hostapp.py").write_text(LIFESPAN + textwrap.dedent(APP))
    net = Network()
    hosts = {name: Host(net, name, tmp_path) for name in HOSTS}
    nginx = haproxy = None
    try:
        net.up()
        for host in hosts.values():
            host.start()
        nginx_port, haproxy_port = free_port(), free_port()
        (tmp_path / "nginx").mkdir()
        nginx = Nginx(tmp_path / "nginx", nginx_conf(tmp_path / "nginx", net, nginx_port))
        haproxy = HAProxy(tmp_path, net, haproxy_port)
        wait_until(lambda: haproxy.states() == dict.fromkeys(HOSTS, "UP"), "HAProxy to see every host UP")
        yield {
            "net": net,
            "hosts": hosts,
            "nginx": nginx,
            "haproxy": haproxy,
            "nginx_port": nginx_port,
            "haproxy_port": haproxy_port,
        }
    finally:
        if haproxy is not None:
            haproxy.stop()
        if nginx is not None:
            nginx.stop()
        for host in hosts.values():
            host.stop_all()
        net.down()


def scenario(loads: dict[str, Load], action) -> dict[str, dict[str, int]]:
    before = {name: load.snapshot() for name, load in loads.items()}
    extra = action()
    sent_by_now = {name: load.snapshot()[0] for name, load in loads.items()}

    def settled() -> bool:  # every request sent so far is answered or failed (the clients' timeout bounds it)
        return all(sum(load.snapshot()[1:]) >= sent_by_now[name] for name, load in loads.items())

    wait_until(settled, "the requests sent during the action to be answered or failed", timeout=WAIT * 2)
    counts = {}
    for name, load in loads.items():
        sent, answered, failed = (a - b for a, b in zip(load.snapshot(), before[name]))
        counts[name] = {"sent": sent, "answered": answered, "failed": failed}
    return {"counts": counts, **(extra or {})}


def test_rolling_restart_hup_and_kill9_behind_nginx_and_haproxy(cluster):
    hosts: dict[str, Host] = cluster["hosts"]
    haproxy: HAProxy = cluster["haproxy"]
    loads = {"nginx": Load(cluster["nginx_port"]), "haproxy": Load(cluster["haproxy_port"])}
    results: dict[str, Any] = {}
    try:
        wait_until(lambda: all(load.snapshot()[1] > 50 for load in loads.values()), "load flowing")

        def rolling() -> dict[str, Any]:
            marked_down = {}
            for name, host in hosts.items():
                assert host.master is not None
                start = time.monotonic()
                host.master.signal(signal.SIGTERM)
                wait_until(
                    lambda: haproxy.states().get(name) not in (None, "UP"),
                    f"HAProxy to mark {name} down",
                    interval=0.02,
                )
                marked_down[name] = round(time.monotonic() - start, 2)
                assert host.master.wait(STOP_WAIT + 30) == 0
                host.start()
                wait_until(lambda: haproxy.states().get(name) == "UP", f"HAProxy to see {name} UP again")
            return {"term_to_marked_down_s": marked_down}

        results["rolling restart"] = scenario(loads, rolling)

        def hup() -> None:
            for host in hosts.values():
                assert host.master is not None
                old = host.workers()
                host.master.signal(signal.SIGHUP)
                wait_until(lambda: not (host.workers() & old), "new workers to replace the old ones")

        results["HUP on every host"] = scenario(loads, hup)

        def kill9() -> dict[str, Any]:
            victim = hosts["h2"]
            assert victim.master is not None
            pids = {victim.master.pid, *victim.workers()}
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            wait_until(
                lambda: (
                    not any(
                        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids
                    )
                ),
                "the killed host's processes to go",
            )
            wait_until(lambda: haproxy.states().get("h2") not in (None, "UP"), "HAProxy to mark h2 down")
            victim.master.wait(STOP_WAIT)
            victim.start()
            wait_until(lambda: haproxy.states().get("h2") == "UP", "HAProxy to see h2 UP again")
            return {}

        results["kill -9 of a host"] = scenario(loads, kill9)
    finally:
        for load in loads.values():
            load.stop()
    report = {
        "scenarios": results,
        "clients_seen": {name: sorted(load.clients) for name, load in loads.items()},
        "hosts_serving": {name: load.hosts for name, load in loads.items()},
        "failures": {name: load.failures[:10] for name, load in loads.items()},
    }
    print(json.dumps(report, indent=2))
    if REPORT:
        Path(REPORT).write_text(json.dumps(report, indent=2))
    for name in ("rolling restart", "HUP on every host"):
        for balancer, counts in results[name]["counts"].items():
            assert counts["failed"] == 0, (name, balancer, counts, report["failures"])
            assert counts["answered"] > 0
    for balancer, counts in results["kill -9 of a host"]["counts"].items():
        # Only requests in flight on the killed host may fail, and the recipes retry those.
        assert counts["failed"] <= THREADS, (balancer, counts, report["failures"])
    for balancer, load in loads.items():
        # The real client (this test, 127.0.0.1), not the balancer's address on the bridge: through PROXY v2
        # for HAProxy, X-Forwarded-For for nginx.
        assert load.clients == {"127.0.0.1"}, (balancer, load.clients)
        assert set(load.hosts) == set(HOSTS), (balancer, load.hosts)
