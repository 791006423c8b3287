"""HTTP load benchmark: one corral worker next to its peers, in the same run, interleaved rounds, medians.

    python bench/http_load.py [--rounds 5] [--duration 5] [--connections 64] [--quick] [--json FILE]

Scenarios (servers pinned to --server-cpu, every client to --client-cpu):
  asgi         bench.apps:hello on one corral worker vs uvicorn (uvloop, httptools, 1 worker): wrk keep-alive
  asgi-close   the same with `Connection: close` on every request (one connection per request)
  wsgi         bench.apps:hello_wsgi on one corral worker (threads=4) vs gunicorn gthread (--threads 4 -w 1)
  rss          worker RSS idle and holding N idle keep-alive connections; KiB per idle connection
  latency      p50/p99 of sequential requests on one keep-alive connection (raw-socket client)

Every round runs each server once, in turn (A B A B ...); the tables give the median over rounds with the
min-max. wrk must be installed (`wrk -t1 -cN -dDs --latency`, pinned with taskset). Every server this
script starts is stopped, whatever happens (try/finally, atexit, SIGTERM/SIGHUP/SIGINT handlers); each runs
in its own session so a Ctrl-C reaches only this script, which then stops them.
Run it from anywhere: `python bench/http_load.py` or `python -m bench.http_load` (from the repository root).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0] and a module of it could shadow the standard library (kept for safety).
_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import atexit  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable  # noqa: E402

try:
    import psutil
except ImportError:  # psutil is a corral dependency; without it the RSS scenario is skipped
    psutil = None

PYTHON = sys.executable
HOST = "127.0.0.1"
ASGI_APP = "bench.apps:hello"
WSGI_APP = "bench.apps:hello_wsgi"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LATENCY_BLOCKS = 5  # sequential requests run in this many blocks per round, alternating between servers
NOFILE = 65536  # wanted RLIMIT_NOFILE for servers and this client (capped at the hard limit)


# ============================================================================ the servers' command lines


#: True (--corral-serve): run corral as `serve -w 1` (a master and one worker) instead of bench/launch.py.
CORRAL_SERVE = False


def corral_command(app: str, port: int) -> list[str]:
    """One corral worker serving `app` on HOST:port: the one place the corral command line is made.

    bench/launch.py runs a worker in the process itself (no master); with --corral-serve it is the real
    command line, `serve -w 1` (the worker is then the master's child: RSS is measured on it)."""
    if CORRAL_SERVE:
        return [PYTHON, "-m", "corral.master", app, "-w", "1", "-b", f"{HOST}:{port}", "--log-level", "warning"]
    return [PYTHON, os.path.join(_HERE, "launch.py"), app, "--host", HOST, "--port", str(port)]


def uvicorn_command(app: str, port: int, keepalive: float | None = None) -> list[str]:
    argv = [PYTHON, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", "--workers", "1"]
    if keepalive is not None:
        argv += ["--timeout-keep-alive", str(int(keepalive))]
    return argv


def gunicorn_command(app: str, port: int, threads: int) -> list[str]:
    return [PYTHON, "-m", "gunicorn", "-k", "gthread", "--threads", str(threads), "-w", "1",
            "-b", f"{HOST}:{port}", "--log-level", "warning", app]


# ============================================================================ process bookkeeping

_live: list[subprocess.Popen] = []  # every child this script started and has not reaped yet
_cleaning = False


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


try:
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None

_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _preexec(cpu: int | None) -> Callable[[], None]:
    def run() -> None:
        # spawn() blocks these signals around fork: the child must not inherit the mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        _raise_nofile()
        if _prctl is not None:
            _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: even a SIGKILLed bench leaves no server behind

    return run


def _stop_process(proc: subprocess.Popen, graceful: bool = True) -> None:
    """SIGTERM, bounded wait, then SIGKILL to its process group (it runs in its own session)."""
    try:
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group is the child's own (start_new_session)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(STOP_TIMEOUT)
        else:
            # The leader is gone: kill any of its group left behind (e.g. a gunicorn worker).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    except Exception as exc:  # cleanup must go on with the others
        print(f"\nwarning: could not stop pid {proc.pid}: {exc}", file=sys.stderr)
    finally:
        if proc in _live:
            _live.remove(proc)


def stop_all() -> None:
    global _cleaning
    if _cleaning:
        return
    _cleaning = True
    try:
        for proc in list(_live):
            _stop_process(proc)
    finally:
        _cleaning = False


class Interrupted(SystemExit):
    pass


_signalled: list[int] = []


def _on_signal(signum: int, frame: Any) -> None:
    _signalled.append(signum)
    raise Interrupted(128 + signum)


def check_signalled() -> None:
    """Raise again for a signal whose exception something swallowed (called between runs)."""
    if _signalled:
        raise Interrupted(128 + _signalled[0])


def spawn(argv: list[str], cpu: int | None, env: dict[str, str] | None = None, log: Any = None,
          **kwargs: Any) -> subprocess.Popen:
    # Signals are blocked while the child is made and registered, so an interrupt cannot orphan it.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, preexec_fn=_preexec(cpu), start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL, **kwargs,
        )
        _live.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return proc


# ============================================================================ a server under test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


@dataclass
class Server:
    name: str
    make_argv: Callable[[int], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    cpu: int | None = 0
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: str = ""
    _log: Any = None

    def start(self, logdir: str) -> Server:
        self.port = free_port()
        self.log_path = os.path.join(logdir, f"{self.name}-{self.port}.log")
        self._log = open(self.log_path, "wb")
        self.proc = spawn(self.make_argv(self.port), self.cpu, base_env(self.env), log=self._log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                status, _ = one_request(self.port, timeout=1.0)
                if status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT:g}s:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pid(self) -> int:
        """The process that serves: the server's only child when it has one (a master with one worker,
        gunicorn -w 1), else the server process itself (bench/launch.py, uvicorn --workers 1)."""
        if psutil is not None:
            try:
                children = psutil.Process(self.pid).children()
            except psutil.Error:
                children = []
            if len(children) == 1:
                return children[0].pid
        return self.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")


class Servers:
    """Servers started together and always stopped together (a context manager)."""

    def __init__(self, servers: list[Server], logdir: str, notes: dict[str, str]) -> None:
        self.servers = servers
        self.logdir = logdir
        self.notes = notes

    def __enter__(self) -> list[Server]:
        try:
            for server in self.servers:
                server.start(self.logdir)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.servers

    def __exit__(self, *exc: Any) -> None:
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is not None and server.proc in _live:
                self.notes[f"{server.name} (port {server.port})"] = (
                    f"exited by itself with code {server.proc.returncode}")
            server.stop()
            tail = "\n".join(line for line in server.log_tail().splitlines()
                             if line.strip() and not line.startswith("listening on "))
            if tail:
                key = f"{server.name} (port {server.port}) log"
                self.notes[key] = tail


# ============================================================================ raw-socket HTTP client

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: corral-bench\r\n\r\n"


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bool]:
    """Read one response (Content-Length framed) from `sock`; returns (status, server closes)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a complete response head")
        buf += chunk
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    total = end + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a response body")
        buf += chunk
    del buf[:total]
    closes = re.search(rb"\r\nconnection:\s*close", head) is not None or head.startswith(b"http/1.0")
    return status, closes


def one_request(port: int, timeout: float = 5.0) -> tuple[int, bool]:
    with connect(port, timeout) as sock:
        sock.sendall(REQUEST)
        return read_response(sock, bytearray())


def sequential_samples(port: int, requests: int, warmup: int) -> tuple[list[float], int, int]:
    """Latencies (µs) of `requests` sequential requests on one keep-alive connection, reconnects, errors."""
    samples: list[float] = []
    reconnects = errors = 0
    sock = connect(port)
    buf = bytearray()
    clock = time.perf_counter_ns
    try:
        for i in range(warmup + requests):
            t0 = clock()
            sock.sendall(REQUEST)
            status, closes = read_response(sock, buf)
            t1 = clock()
            if i >= warmup:
                samples.append((t1 - t0) / 1000)
            if status != 200:
                errors += 1
            if closes:  # the server ended the connection (e.g. a per-connection request limit)
                sock.close()
                sock = connect(port)
                buf.clear()
                if i >= warmup:
                    reconnects += 1
    finally:
        sock.close()
    return samples, reconnects, errors


def latency_summary(samples: list[float], reconnects: int, errors: int) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "p50_us": percentile(ordered, 50), "p99_us": percentile(ordered, 99),
        "mean_us": statistics.fmean(ordered), "max_us": ordered[-1],
        "reconnects": reconnects, "errors": errors, "requests": len(ordered),
    }


def sequential_latency(port: int, requests: int, warmup: int) -> dict[str, Any]:
    return latency_summary(*sequential_samples(port, requests, warmup))


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ============================================================================ idle keep-alive connections


async def _hold_idle(port: int, count: int, measure: Callable[[], dict[str, Any]], settle: float,
                     concurrency: int = 200) -> dict[str, Any]:
    """Open `count` connections, one request each, keep them open; call `measure()`; close them all."""
    held: list[asyncio.StreamWriter] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
            except Exception as exc:
                errors.append(f"connect: {type(exc).__name__}: {exc}")
                return
            held.append(writer)
            try:
                writer.write(REQUEST)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                match = re.search(rb"\r\ncontent-length:\s*(\d+)", head.lower())
                await asyncio.wait_for(reader.readexactly(int(match.group(1)) if match else 0), 10)
                if head[9:12] != b"200":
                    errors.append(f"status {head[9:12].decode()}")
            except Exception as exc:
                errors.append(f"request: {type(exc).__name__}: {exc}")

    try:
        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(count)))
        opened = time.monotonic() - t0
        await asyncio.sleep(settle)
        result = measure()
        result.update(open_s=opened, client_errors=len(errors), error_samples=sorted(set(errors))[:5])
        return result
    finally:
        for writer in held:
            writer.transport.abort()
        await asyncio.sleep(0)


def server_rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def established(pid: int, port: int) -> int:
    """Established TCP connections the server process holds on `port`."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except AttributeError:  # psutil < 6
        conns = psutil.Process(pid).connections(kind="tcp")
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


def settled_rss(pid: int, wait: float = 3.0) -> int:
    """RSS once it stops moving (two equal samples 0.2 s apart) or after `wait` seconds."""
    deadline = time.monotonic() + wait
    last = server_rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = server_rss(pid)
        if now == last:
            break
        last = now
    return last


def measure_rss(server: Server, connections: int) -> dict[str, Any]:
    # Warm up (lazy imports, first-request allocations) on one connection, then let it go idle.
    sequential_latency(server.port, 200, 0)
    time.sleep(0.3)
    pid = server.worker_pid()
    idle = settled_rss(pid)

    def measure() -> dict[str, Any]:
        rss = settled_rss(pid)
        return {"rss_with": rss, "server_established": established(pid, server.port)}

    result = asyncio.run(_hold_idle(server.port, connections, measure, settle=0.5))
    time.sleep(0.5)
    result.update(rss_idle=idle, rss_after_close=settled_rss(pid), connections=connections, pid=pid,
                  kib_per_conn=(result["rss_with"] - idle) / connections / 1024)
    return result


# ============================================================================ other load on the machine

_TICK = os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """Seconds of user+nice+system CPU on all cores, and of steal, since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / _TICK, (fields[7] if len(fields) > 7 else 0) / _TICK


def _own_cpu() -> float:
    """CPU seconds of this process, its reaped children, and the children it still runs (and theirs)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    if psutil is not None:
        for proc in list(_live):
            try:
                top = psutil.Process(proc.pid)
                for p in [top] + top.children(recursive=True):
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                pass
    return total


class OtherLoad:
    """How many cores processes other than ours kept busy (and how much was stolen) between start and stop.

    The machine is shared: a round during which someone else ran tests is visible here, and in the tables.
    Kernel work done on our behalf outside our processes (softirq) is not counted as busy.
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = _machine_cpu()
        self.own0 = _own_cpu()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.t0, 1e-6)
        busy, steal = _machine_cpu()
        own = _own_cpu()
        return {"other_cores": max(0.0, (busy - self.busy0 - (own - self.own0)) / wall),
                "steal_cores": (steal - self.steal0) / wall}


def wait_quiet(limit: float, threshold: float = 0.25, window: float = 5.0) -> float:
    """Wait (at most `limit` seconds) for a `window` during which other processes use < `threshold` cores."""
    deadline = time.monotonic() + limit
    while True:
        meter = OtherLoad()
        time.sleep(window)
        other = meter.stop()["other_cores"]
        if other < threshold or time.monotonic() + window > deadline:
            return other
        sys.stderr.write(f"waiting for a quiet machine: other processes use {other:.2f} cores\n")


# ============================================================================ wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {"socket_errors": {}, "non_2xx": 0}
    match = re.search(r"Requests/sec:\s*([\d.]+)", output)
    if not match:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    result["rps"] = float(match.group(1))
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{q}(?:\.000)?%\s+(\S+)", output, re.M)
        if m:
            result[f"p{q}_ms"] = _ms(m.group(1))
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", output)
    if m:
        result["avg_ms"], result["max_ms"] = _ms(m.group(1)), _ms(m.group(3))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        result["non_2xx"] = int(m.group(1))
    return result


def run_wrk(url: str, duration: int, connections: int, cpu: int | None, close: bool) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = spawn(argv, None, log=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    finally:
        _stop_process(proc, graceful=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out}")
    result = parse_wrk(out)
    result["raw"] = out
    # wrk's own CPU: near 1 core (one thread) means the client, not the server, set the pace.
    result["wrk_cores"] = wrk_cpu / max(time.monotonic() - t0, 1e-6)
    return result


# ============================================================================ progress and tables


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def step(self, message: str) -> None:
        self.done += 1
        self.show(f"[{self.done}/{self.total}] {message}")

    def show(self, message: str) -> None:
        line = f"{time.monotonic() - self.t0:6.1f}s {message}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(med(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def wrk_table(title: str, runs: dict[str, list[dict[str, Any]]], baseline: str) -> str:
    names = list(runs)
    base = med([r["rps"] for r in runs[baseline]])
    lines = [
        f"### {title}", "",
        "| server | req/s median (min-max) | p50 ms | p99 ms | ratio to " + baseline
        + " (per-round min-max) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        rs = runs[name]
        rps = [r["rps"] for r in rs]
        if name == baseline:
            ratio = "1.00 (baseline)"
        else:
            paired = [a["rps"] / b["rps"] for a, b in zip(rs, runs[baseline])]
            ratio = f"**{med(rps) / base:.2f}** ({min(paired):.2f}-{max(paired):.2f})"
        errs: dict[str, int] = {}
        for r in rs:
            for k, v in r["socket_errors"].items():
                errs[k] = errs.get(k, 0) + v
            errs["non-2xx"] = errs.get("non-2xx", 0) + r["non_2xx"]
        err = ", ".join(f"{k} {v}" for k, v in errs.items() if v) or "0"
        lines.append(
            f"| {name} | {spread(rps, ',.0f')} | {spread([r.get('p50_ms', float('nan')) for r in rs], '.2f')} | "
            f"{spread([r.get('p99_ms', float('nan')) for r in rs], '.2f')} | {ratio} | {err} |"
        )
    other = [r["other_cores"] for rs in runs.values() for r in rs if "other_cores" in r]
    steal = [r["steal_cores"] for rs in runs.values() for r in rs if "steal_cores" in r]
    wrk = {name: med([r["wrk_cores"] for r in rs if "wrk_cores" in r]) for name, rs in runs.items()}
    if other:
        lines.append(f"\nOther processes on the machine during the runs: median {med(other):.2f} cores, "
                     f"max {max(other):.2f}; steal max {max(steal):.2f} cores. wrk's own CPU (1.00 = its one "
                     "thread saturated): " + ", ".join(f"{k} {v:.2f}" for k, v in wrk.items()) + ".")
    return "\n".join(lines)


def rss_table(title: str, runs: dict[str, list[dict[str, Any]]], baseline: str) -> str:
    mib = 1 / (1024 * 1024)
    conns = next(iter(runs.values()))[0]["connections"]
    base = med([r["kib_per_conn"] for r in runs[baseline]])
    lines = [
        f"### {title}", "",
        f"| server | RSS idle MiB | RSS with {conns:,} idle conns MiB | KiB per idle conn | ratio to {baseline} "
        "| conns held by server | RSS after close MiB | client errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        kib = [r["kib_per_conn"] for r in rs]
        ratio = "1.00 (baseline)" if name == baseline else f"**{med(kib) / base:.2f}**"
        lines.append(
            f"| {name} | {spread([r['rss_idle'] * mib for r in rs], '.1f')} | "
            f"{spread([r['rss_with'] * mib for r in rs], '.1f')} | {spread(kib, '.2f')} | {ratio} | "
            f"{spread([r['server_established'] for r in rs], ',.0f')} | "
            f"{spread([r['rss_after_close'] * mib for r in rs], '.1f')} | {sum(r['client_errors'] for r in rs)} |"
        )
    return "\n".join(lines)


def latency_table(title: str, runs: dict[str, list[dict[str, Any]]], baseline: str) -> str:
    base = med([r["p50_us"] for r in runs[baseline]])
    lines = [
        f"### {title}", "",
        f"| server | p50 µs median (min-max) | p99 µs | mean µs | ratio p50 to {baseline} | reconnects | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        p50 = [r["p50_us"] for r in rs]
        ratio = "1.00 (baseline)" if name == baseline else f"**{med(p50) / base:.2f}**"
        lines.append(
            f"| {name} | {spread(p50, '.1f')} | {spread([r['p99_us'] for r in rs], '.1f')} | "
            f"{spread([r['mean_us'] for r in rs], '.1f')} | {ratio} | {sum(r['reconnects'] for r in rs)} | "
            f"{sum(r['errors'] for r in rs)} |"
        )
    other = [r["other_cores"] for rs in runs.values() for r in rs if "other_cores" in r]
    if other:
        lines.append(f"\nOther processes on the machine during the rounds: median {med(other):.2f} cores, "
                     f"max {max(other):.2f}.")
    return "\n".join(lines)


# ============================================================================ the run


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for module in ("uvicorn", "gunicorn", "uvloop", "httptools"):
        try:
            found[module] = __import__(module).__version__
        except Exception:
            found[module] = "not installed"
    digest = hashlib.sha1()
    for folder in ("worker", "shared"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                with open(os.path.join(ROOT, folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    found["worker+shared sources sha1"] = digest.hexdigest()[:10]  # the exact code measured, commit or not
    try:
        found["corral"] = subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10,
        ).stdout.strip() or "?"
    except Exception:
        found["corral"] = "?"
    return found


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.startswith("CORRAL_"):
            raise SystemExit(f"--corral-env wants CORRAL_NAME=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, colon, pairs = text.partition(":")
    if not colon or not label:
        raise SystemExit(f"--variant wants LABEL:CORRAL_NAME=VALUE[,...], got {text!r}")
    return label, parse_env_pairs([p for p in pairs.split(",") if p])


def run(args: argparse.Namespace) -> dict[str, Any]:
    scpu, ccpu = (None if args.server_cpu < 0 else args.server_cpu), (None if args.client_cpu < 0 else args.client_cpu)
    if ccpu is not None:
        os.sched_setaffinity(0, {ccpu})  # this process is a client too (latency, idle connections)
    extra = parse_env_pairs(args.corral_env)
    variants = [parse_variant(v) for v in args.variant]
    scenarios = args.scenarios
    logdir = tempfile.mkdtemp(prefix="corral-bench-")
    notes: dict[str, str] = {}
    discarded: list[dict[str, Any]] = []  # rounds run again because the machine was busy
    disturbed_kept: list[dict[str, Any]] = []  # rounds kept although still disturbed (retries used up)
    results: dict[str, Any] = {"scenarios": {}, "notes": notes, "discarded_rounds": discarded,
                               "disturbed_rounds_kept": disturbed_kept}
    rounds, duration, conns = args.rounds, args.duration, args.connections

    asgi_modes = [m for m in ("asgi", "asgi-close") if m in scenarios]
    asgi_servers = 2 + len(variants)
    total = (len(asgi_modes) * asgi_servers + ("wsgi" in scenarios) * 2 + ("latency" in scenarios) * asgi_servers) * rounds
    total += ("rss" in scenarios and psutil is not None) * 2 * args.rss_rounds
    progress = Progress(total)

    def wrk_once(server: Server, mode: str) -> dict[str, Any]:
        check_signalled()
        other = OtherLoad()
        result = run_wrk(server.url, duration, conns, ccpu, close=mode.endswith("close"))
        result.update(other.stop())
        if not server.alive():
            raise RuntimeError(f"{server.name} died during the run:\n{server.log_tail()}")
        return result

    def steady(label: str, attempt: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Run one round (every server once); run it again, up to --retry-disturbed times, while other
        processes kept more than --disturbed cores busy during it. Keeps the least disturbed attempt."""
        attempts: list[tuple[float, list[dict[str, Any]]]] = []
        for tries in range(args.retry_disturbed + 1):
            got = attempt()
            worst = max(r["other_cores"] for r in got)
            attempts.append((worst, got))
            if worst <= args.disturbed:
                break
            if tries < args.retry_disturbed:
                progress.show(f"{label}: other processes used {worst:.2f} cores; running the round again")
        kept = min(attempts, key=lambda a: a[0])
        for worst, got in attempts:
            if got is not kept[1]:
                discarded.append({"round": label, "other_cores": worst, "results": got})
        if kept[0] > args.disturbed:
            disturbed_kept.append({"round": label, "other_cores": kept[0]})
        return kept[1]

    def wrk_round(servers: list[Server], mode: str, rnd: int, store: dict[str, list]) -> None:
        results = steady(f"{mode} round {rnd}", lambda: [wrk_once(server, mode) for server in servers])
        for server, result in zip(servers, results):
            store.setdefault(server.name, []).append(result)
            errs = sum(result["socket_errors"].values()) + result["non_2xx"]
            progress.step(f"{mode} round {rnd}/{rounds} {server.name}: {result['rps']:,.0f} req/s, "
                          f"p99 {result.get('p99_ms', float('nan')):.2f} ms" + (f", {errs} errors" if errs else "")
                          + f", wrk {result['wrk_cores']:.2f} cores, other load {result['other_cores']:.2f} cores")

    def warm(server: Server, close: bool = False) -> None:
        progress.show(f"warming up {server.name}")
        run_wrk(server.url, args.warmup, conns, ccpu, close=close)

    # -- 1 + 4: ASGI hello-world, keep-alive and Connection: close; sequential latency on the same servers
    if asgi_modes or "latency" in scenarios:
        servers = [Server("corral", lambda p: corral_command(ASGI_APP, p), dict(extra), scpu),
                   Server("uvicorn", lambda p: uvicorn_command(ASGI_APP, p), {}, scpu)]
        for label, env in variants:
            servers.append(Server(f"corral[{label}]", lambda p: corral_command(ASGI_APP, p), {**extra, **env}, scpu))
        stores: dict[str, dict[str, list]] = {m: {} for m in asgi_modes}
        latency: dict[str, list] = {}
        with Servers(servers, logdir, notes):
            for server in servers:
                if args.warmup:
                    warm(server)
            for rnd in range(1, rounds + 1):
                for mode in asgi_modes:
                    wrk_round(servers, mode, rnd, stores[mode])
                if "latency" in scenarios:
                    def latency_round() -> list[dict[str, Any]]:
                        # Blocks of requests, alternating between the servers, so a noisy moment hits all.
                        got: dict[str, list] = {server.name: [[], 0, 0] for server in servers}
                        meter = OtherLoad()
                        for _ in range(LATENCY_BLOCKS):
                            for server in servers:
                                check_signalled()
                                samples, reconnects, errors = sequential_samples(
                                    server.port, max(1, args.sequential // LATENCY_BLOCKS), warmup=50)
                                acc = got[server.name]
                                acc[0] += samples
                                acc[1] += reconnects
                                acc[2] += errors
                        other = meter.stop()
                        return [{**latency_summary(*got[server.name]), **other} for server in servers]

                    for server, res in zip(servers, steady(f"latency round {rnd}", latency_round)):
                        latency.setdefault(server.name, []).append(res)
                        progress.step(f"latency round {rnd}/{rounds} {server.name}: p50 {res['p50_us']:.1f} µs, "
                                      f"p99 {res['p99_us']:.1f} µs, other load {res['other_cores']:.2f} cores")
        for mode in asgi_modes:
            results["scenarios"][mode] = stores[mode]
        if latency:
            results["scenarios"]["latency"] = latency

    # -- 2: WSGI hello-world
    if "wsgi" in scenarios:
        servers = [Server("corral", lambda p: corral_command(WSGI_APP, p),
                          {"CORRAL_THREADS": str(args.threads), **extra}, scpu),
                   Server("gunicorn-gthread", lambda p: gunicorn_command(WSGI_APP, p, args.threads), {}, scpu)]
        store: dict[str, list] = {}
        with Servers(servers, logdir, notes):
            for server in servers:
                if args.warmup:
                    warm(server)
            for rnd in range(1, rounds + 1):
                wrk_round(servers, "wsgi", rnd, store)
        results["scenarios"]["wsgi"] = store

    # -- 3: RSS, idle and with N idle keep-alive connections; fresh servers each round
    if "rss" in scenarios:
        if psutil is None:
            notes["rss"] = "skipped: psutil is not installed"
        else:
            _raise_nofile()
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if limit < args.idle_connections + 100:
                raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {args.idle_connections} connections")
            keep = str(args.idle_keepalive)
            store = {}
            for rnd in range(1, args.rss_rounds + 1):
                for server in (
                    Server("corral", lambda p: corral_command(ASGI_APP, p),
                           {"CORRAL_KEEPALIVE": keep, **extra}, scpu),
                    Server("uvicorn", lambda p: uvicorn_command(ASGI_APP, p, keepalive=args.idle_keepalive),
                           {}, scpu),
                ):
                    check_signalled()
                    with Servers([server], logdir, notes):
                        res = measure_rss(server, args.idle_connections)
                    store.setdefault(server.name, []).append(res)
                    progress.step(f"rss round {rnd}/{args.rss_rounds} {server.name}: {res['kib_per_conn']:.2f} KiB/conn, "
                                  f"{res['server_established']} held, {res['client_errors']} client errors")
            results["scenarios"]["rss"] = store
    progress.end()
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    sc = results["scenarios"]
    head = f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved round(s), medians"
    parts = []
    if "asgi" in sc:
        parts.append(wrk_table(f"Hello-world ASGI, keep-alive ({head})", sc["asgi"], "uvicorn"))
    if "asgi-close" in sc:
        parts.append(wrk_table(f"Hello-world ASGI, Connection: close ({head})", sc["asgi-close"], "uvicorn"))
    if "wsgi" in sc:
        parts.append(wrk_table(f"Hello-world WSGI, threads={args.threads}, keep-alive ({head})", sc["wsgi"],
                               "gunicorn-gthread"))
    if "rss" in sc:
        parts.append(rss_table(f"Worker RSS, {args.idle_connections:,} idle keep-alive connections "
                               f"({args.rss_rounds} round(s), fresh servers, medians)", sc["rss"], "uvicorn"))
    if "latency" in sc:
        parts.append(latency_table(f"Sequential requests on one keep-alive connection ({args.sequential:,} per "
                                   f"round, {args.rounds} round(s))", sc["latency"], "uvicorn"))
    return "\n\n".join(parts)


SCENARIOS = ("asgi", "asgi-close", "wsgi", "rss", "latency")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 2 s, 1,000 idle connections, short warm-up: well under a minute")
    parser.add_argument("--json", help="also write the results (with wrk's raw output) to this file")
    parser.add_argument("--only", help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--threads", type=int, default=4, help="WSGI threads for both servers (default 4)")
    parser.add_argument("--idle-connections", type=int, default=5000, help="idle keep-alive connections (5000)")
    parser.add_argument("--idle-keepalive", type=int, default=60, help="keep-alive timeout for the RSS servers (60)")
    parser.add_argument("--rss-rounds", type=int, default=None, help="RSS rounds (default: --rounds, at most 3)")
    parser.add_argument("--sequential", type=int, default=5000,
                        help="sequential requests per server per round, in blocks alternating servers (5000)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk per server before round 1; 0: none (2)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core the servers run on; -1: unpinned (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core wrk and the clients run on; -1: unpinned (1)")
    parser.add_argument("--corral-env", action="append", default=[], metavar="CORRAL_NAME=VALUE",
                        help="extra setting for the corral workers (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:CORRAL_NAME=VALUE[,...]",
                        help="also run a corral worker with these settings in the ASGI scenarios, as "
                             "'corral[LABEL]' (repeatable), e.g. --variant nolimit:CORRAL_MAX_REQUESTS_PER_CONNECTION=0")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to SECONDS for 5 s in which other processes use < 0.25 cores")
    parser.add_argument("--disturbed", type=float, default=0.15, metavar="CORES",
                        help="a round during which other processes used more than CORES cores is disturbed (0.15)")
    parser.add_argument("--retry-disturbed", type=int, default=2, metavar="N",
                        help="run a disturbed round again up to N times, keeping the least disturbed (2)")
    parser.add_argument("--corral-serve", action="store_true",
                        help="run corral as `python -m corral.master APP -w 1` instead of bench/launch.py")
    args = parser.parse_args(argv)
    global CORRAL_SERVE
    CORRAL_SERVE = args.corral_serve
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
        args.idle_connections = min(args.idle_connections, 1000)
        args.sequential = min(args.sequential, 1000)
    if args.rss_rounds is None:
        args.rss_rounds = min(args.rounds, 3)
    args.scenarios = SCENARIOS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None and set(args.scenarios) & {"asgi", "asgi-close", "wsgi"}:
        parser.error("wrk is not installed (apt-get install wrk)")
    cpus = os.sched_getaffinity(0)
    for cpu in (args.server_cpu, args.client_cpu):
        if cpu >= 0 and cpu not in cpus:
            parser.error(f"cpu {cpu} is not available here (available: {sorted(cpus)}); use -1 to not pin")

    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    interrupted = 0
    try:
        quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
        started = time.time()
        load = os.getloadavg()
        results = run(args)
    except KeyboardInterrupt:
        interrupted = 130
    except Interrupted as exc:
        interrupted = int(exc.code or 1)
    finally:
        stop_all()
    if interrupted:
        print("\ninterrupted: every server started was stopped", file=sys.stderr)
        return interrupted

    command = "python bench/http_load.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "command": command.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1), "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
        "other_cores_before": quiet, "cpus": os.cpu_count(), "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
        "versions": versions(), "corral_env": parse_env_pairs(args.corral_env), "corral_command":
        " ".join(corral_command(ASGI_APP, 0)),
    }
    text = report(results, args)
    print(f"`{meta['command']}` — {meta['started']}, {meta['seconds']}s, load {load[0]:.2f} -> "
          f"{meta['loadavg_at_end'][0]:.2f}, servers on cpu {args.server_cpu}, clients on cpu {args.client_cpu}; "
          + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "\n")
    print(text)
    if results["discarded_rounds"]:
        print(f"\n{len(results['discarded_rounds'])} round(s) were run again because other processes kept more than "
              f"{args.disturbed:g} cores busy: " + ", ".join(
                  f"{d['round']} ({d['other_cores']:.2f})" for d in results["discarded_rounds"]))
    if results["disturbed_rounds_kept"]:
        print(f"\n{len(results['disturbed_rounds_kept'])} round(s) kept although other processes were busy "
              "(retries used up): " + ", ".join(
                  f"{d['round']} ({d['other_cores']:.2f})" for d in results["disturbed_rounds_kept"]))
    if results["notes"]:
        print("\nNotes (server output, unexpected exits):")
        for key, value in results["notes"].items():
            print(f"- {key}:\n```\n{value}\n```")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **results}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
