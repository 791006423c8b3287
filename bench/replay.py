"""Replay a real gunicorn deployment (its config files and start command, kept verbatim in a folder) under a
server, and observe what a user would: does it start, does it answer on IPv4 and IPv6, how many workers, do
its hooks run, where do its logs go and under which names, what do its access lines look like, which statsd
names arrive.

A deployment folder holds the project's files unchanged, a SOURCE.md (where they come from, their licence,
what was swapped) and a `replay.toml` saying how the project starts it:

    run = ["sh", "start.sh"]            # the project's command; `gunicorn` in it is the server replayed
    [env]                               # the environment the project sets (placeholders below)
    PORT = "{port}"
    [apps]                              # the app modules it names, swapped for bench/replay_app.py
    "netbox.wsgi" = "wsgi:application"  # module -> kind:attribute (kind: wsgi, asgi, wsgi-factory)
    [expect]                            # what a correct run shows (tests/e2e/test_real_configs.py checks it)
    workers = 2

`gunicorn` on the PATH of the run is a two-line shim that records its pid and execs the server: corral's
`serve` (the one word a user changes) or gunicorn itself. Placeholders in `run` and `env`: {port} (a free
port), {tmp} (the run's copy of the folder), {statsd} (host:port of a UDP listener), {statsd_port},
{python}. Everything a run starts is in its own session and is stopped by pid, with bounded waits.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import tomllib

START_WAIT = 60.0  # importing on a busy 2-core machine
SETTLE_WAIT = 30.0
STOP_WAIT = 30.0
HERE = Path(__file__).resolve().parent

SHIMS = {
    "serve": 'exec {python} -m corral.master "$@"',
    # its console script, not `python -m gunicorn`: a project's config named gunicorn.py (NetBox's) in the
    # working folder would shadow the package
    "gunicorn": "exec {python} " + os.path.join(os.path.dirname(sys.executable), "gunicorn") + ' "$@"',
}

#: Headers every probe request carries: access-log atoms read them (%(a)s, %(f)s, %({x-request-id}i)s).
PROBE_HEADERS = {
    "User-Agent": "replay-client/1.0",
    "Referer": "http://example.test/from",
    "X-Request-Id": "req-4242",
    "X-Forwarded-For": "203.0.113.9",
}
PROBE_PATH = "/replay/probe?x=1&y=two"

_TIMESTAMP = re.compile(r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]")
_ERROR_LINE = re.compile(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4}\] \[\d+\] \[[A-Z]+\] ")


@dataclass
class Deployment:
    name: str
    folder: Path
    run: list[str]
    env: dict[str, str] = field(default_factory=dict)
    apps: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)
    stop_signal: str = "TERM"
    cwd: str = "."
    command_from: dict[str, Any] = field(default_factory=dict)
    extract: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    mkdirs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> Deployment:
        spec = tomllib.loads((folder / "replay.toml").read_text())
        return cls(
            folder.name,
            folder,
            list(spec.get("run", [])),
            dict(spec.get("env", {})),
            dict(spec.get("apps", {})),
            dict(spec.get("expect", {})),
            spec.get("stop_signal", "TERM"),
            spec.get("cwd", "."),
            dict(spec.get("command_from", {})),
            list(spec.get("extract", [])),
            dict(spec.get("files", {})),
            list(spec.get("mkdirs", [])),
        )

    def command(self, root: Path) -> list[str]:
        """`run`, or the command line taken from one of the project's files: a Dockerfile's shell-form CMD
        (run as Docker runs it, `/bin/sh -c`) or a systemd unit's ExecStart (split as systemd splits it),
        with `command_from.replace` applied (paths of the image or host the replay runs without)."""
        if not self.command_from:
            return list(self.run)
        source = self.command_from
        text = (root / source["file"]).read_text()
        line = next(line for line in text.splitlines() if line.startswith(source["prefix"]))
        command = line[len(source["prefix"]) :]
        for old, new in source.get("replace", {}).items():
            command = command.replace(old, new)
        return ["/bin/sh", "-c", command] if source.get("shell") else shlex.split(command)

    def prepare(self, root: Path) -> None:
        """Code blocks the project documents as files (a docs page's gunicorn config), stand-in files and
        folders the deployment expects to exist."""
        for block in self.extract:
            text = (root / block["from"]).read_text()
            code = next(c for c in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if block["contains"] in c)
            (root / block["to"]).write_text(code)
        for name, content in self.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(content)
        for name in self.mkdirs:
            (root / name).mkdir(parents=True, exist_ok=True)


def deployments(root: Path) -> list[Deployment]:
    return [Deployment.load(d) for d in sorted(root.iterdir()) if (d / "replay.toml").is_file()]


@dataclass
class Observation:
    """What one run of a deployment under one server showed."""

    server: str
    started: bool = False
    ipv4: bool | None = None
    ipv6: bool | None = None
    long_url: int | None = None  # status of a request with a 20,000-byte URL (when expected)
    workers: int | None = None
    processes: int | None = None  # the master and everything under it
    stdout: str = ""
    stderr: str = ""
    statsd: list[str] = field(default_factory=list)  # datagrams received
    files: dict[str, bool] = field(default_factory=dict)
    exit_code: int | None = None
    bodies: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def access_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if "/replay/probe" in line or "GET /metrics" in line]

    def access_shapes(self) -> list[str]:
        """The access lines with what differs between two runs (time, durations, pids, ports) masked."""
        shapes = []
        for line in self.access_lines():
            line = _TIMESTAMP.sub("[TIME]", line)
            line = re.sub(r'"(?:timestamp|time|asctime)": "[^"]*"', '"time": "T"', line)
            line = re.sub(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\S*", "T", line)
            shapes.append(re.sub(r"\d+", "N", line))
        return shapes

    def loggers(self) -> set[str]:
        """gunicorn.* logger names that appear in the output (where a log config prints them)."""
        return set(re.findall(r"\bgunicorn\.(?:access|error)\b", self.output))

    def statsd_names(self) -> set[str]:
        names = set()
        for datagram in self.statsd:
            for metric in datagram.splitlines():
                name, _, rest = metric.partition(":")
                kind = rest.split("|")[1] if "|" in rest else "?"
                names.add(f"{name}|{kind}")
        return names

    def error_log_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if _ERROR_LINE.match(line)]

    def warnings(self) -> list[str]:
        return [
            line
            for line in self.output.splitlines()
            if re.search(r"\bwarning\b", line, re.IGNORECASE) and "/replay/probe" not in line
        ]


class StatsdListener:
    """A UDP socket on 127.0.0.1 collecting datagrams in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams.append(data.decode("utf-8", "replace"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def free_port() -> int:
    """A port free on 127.0.0.1 and ::1 right now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6) as sock6:
                sock6.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


def _write_app_shims(root: Path, apps: dict[str, str]) -> None:
    shutil.copy(HERE / "replay_app.py", root / "replay_app.py")
    for module, target in apps.items():
        kind, _, attribute = target.partition(":")
        base, _, module = module.rpartition("/")  # "netbox/netbox.wsgi": module netbox.wsgi under ./netbox
        base_dir = root / base if base else root
        base_dir.mkdir(parents=True, exist_ok=True)
        # next to the module (the server puts the folder it runs from, or --chdir's, on the import path)
        shutil.copy(HERE / "replay_app.py", base_dir / "replay_app.py")
        parts = module.split(".")
        folder = base_dir.joinpath(*parts[:-1])
        folder.mkdir(parents=True, exist_ok=True)
        for depth in range(1, len(parts)):
            init = base_dir.joinpath(*parts[:depth], "__init__.py")
            if not init.exists():
                init.write_text("")
        leaf = folder / parts[-1]
        path = leaf / "__init__.py" if leaf.is_dir() else folder / f"{parts[-1]}.py"
        source = {
            "wsgi": f"from replay_app import wsgi_app as {attribute}\n",
            "asgi": f"from replay_app import asgi_app as {attribute}\n",
            "wsgi-factory": f"from replay_app import create_wsgi_app as {attribute}\n",
        }[kind]
        path.write_text(path.read_text() + source if path.exists() else source)


def _request(host: str, port: int, path: str = PROBE_PATH, timeout: float = 10.0) -> tuple[int, str] | None:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers=PROBE_HEADERS)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()
    except OSError:
        return None


def _wait(condition, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children() if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


def replay(deployment: Deployment, server: str, workdir: Path | None = None) -> Observation:
    """Run `deployment` with `gunicorn` meaning `server` ("serve" or "gunicorn") and observe it."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix=f"replay-{deployment.name}-"))
    root = tmp / "project"
    shutil.copytree(deployment.folder, root)
    _write_app_shims(root, deployment.apps)
    deployment.prepare(root)
    bindir = tmp / "bin"
    bindir.mkdir()
    pidfile = tmp / "master.pid"
    shim = bindir / "gunicorn"
    shim.write_text(f"#!/bin/sh\necho $$ > {pidfile}\n" + SHIMS[server].format(python=sys.executable) + "\n")
    shim.chmod(0o755)
    statsd = StatsdListener()
    port = free_port()
    values = {
        "port": str(port),
        "tmp": str(root),
        "statsd": f"127.0.0.1:{statsd.port}",
        "statsd_port": str(statsd.port),
        "python": sys.executable,
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CORRAL_", "GUNICORN_", "PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"))
        or k == "CORRAL_NO_EXTENSIONS"  # corral's pure-Python request parser: kept, as something to run
    }
    env.update({k: v.format(**values) for k, v in deployment.env.items()})
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    observed = Observation(server)
    argv = [a.replace("{tmp}", str(root)).replace("{port}", str(port)) for a in deployment.command(root)]
    proc = subprocess.Popen(
        argv,
        cwd=root / deployment.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=lambda s=s, b=b: b.extend(iter(s.readline, b"")), daemon=True)
        for s, b in ((proc.stdout, out), (proc.stderr, err))
    ]
    for reader in readers:
        reader.start()
    master = None
    try:
        expect = deployment.expect
        v6 = bool(expect.get("ipv6"))
        host = "::1" if v6 and not expect.get("ipv4", True) else "127.0.0.1"

        def answers() -> bool:
            return proc.poll() is None and (_request(host, port, "/", timeout=2) or (0,))[0] == 200

        observed.started = bool(_wait(answers, START_WAIT, 0.2))
        if pidfile.exists():
            master = int(pidfile.read_text().strip() or 0) or None
        if observed.started:
            for family, address in (("ipv4", "127.0.0.1"), ("ipv6", "::1")):
                answer = _request(address, port)
                setattr(observed, family, answer is not None and answer[0] == 200)
                if answer is not None:
                    observed.bodies.append(answer[1])
            if expect.get("long_url"):
                answer = _request(host, port, "/replay/long?q=" + "x" * 20_000)
                observed.long_url = answer[0] if answer else None
            if expect.get("metrics_path"):
                answer = _request(host, port, expect["metrics_path"])
                if answer is not None:
                    observed.bodies.append(answer[1])
            want = expect.get("workers")
            if master is not None:
                if want:
                    _wait(lambda: len(_children(master)) == want, SETTLE_WAIT, 0.1)
                observed.workers = len(_children(master))
                try:
                    observed.processes = 1 + len(
                        [
                            p
                            for p in psutil.Process(master).children(recursive=True)
                            if p.status() != psutil.STATUS_ZOMBIE
                        ]
                    )
                except psutil.Error:
                    observed.processes = None
            answered = sum(1 for value in (observed.ipv4, observed.ipv6) if value)
            if expect.get("access", True):
                _wait(lambda: sum(b"/replay/probe" in line for line in out + err) >= answered, 10)
            if expect.get("statsd"):
                names = [name.partition("|")[0] + ":" for name in expect["statsd"]]
                _wait(lambda: all(any(name in d for d in statsd.datagrams) for name in names), 10)
            for name in expect.get("files_before_stop", []):
                observed.files[name] = bool(_wait(lambda n=name: (root / n).exists(), 10))
    finally:
        observed.exit_code = _stop(proc, master, deployment.stop_signal)
        for reader in readers:
            reader.join(STOP_WAIT)
        statsd.close()
    observed.stdout = b"".join(out).decode("utf-8", "replace")
    observed.stderr = b"".join(err).decode("utf-8", "replace")
    observed.statsd = list(statsd.datagrams)
    for name in deployment.expect.get("files", []):
        observed.files[name] = (root / name).exists()
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return observed


def _stop(proc: subprocess.Popen, master: int | None, stop_signal: str) -> int | None:
    """The deployment's stop signal to the master, a bounded wait for it and its script, then SIGKILL to what
    is left of the session this run started (its process group, by id)."""
    sig = getattr(signal, f"SIG{stop_signal}")
    target = master if master is not None else proc.pid
    code = None
    try:
        master_proc = psutil.Process(target)
        seen = [master_proc, *master_proc.children(recursive=True)]
        master_proc.send_signal(sig)
        if target == proc.pid:
            code = proc.wait(STOP_WAIT)
        else:
            code = master_proc.wait(STOP_WAIT)
    except (psutil.Error, subprocess.TimeoutExpired):
        seen = []
    try:
        proc.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for leftover in seen:
        try:
            leftover.kill()
        except psutil.Error:
            pass
    if proc.poll() is None:
        proc.wait(STOP_WAIT)
    return code if code is not None else proc.returncode
