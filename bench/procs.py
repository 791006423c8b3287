"""Start, pin, measure and always stop the processes a benchmark runs (servers and load generators).

Every child is started in its own session with a parent-death signal (SIGTERM), registered before signals
are let through again, and stopped by pid: SIGTERM, a bounded wait, then SIGKILL to its process group and to
every descendant seen. `install()` adds the atexit hook and the SIGTERM/SIGHUP/SIGINT handlers.
"""

from __future__ import annotations

import atexit
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP_TIMEOUT = 10.0
NOFILE = 65536

_live: list[subprocess.Popen] = []  # every child started and not reaped yet
_seen: dict[int, dict[int, psutil.Process]] = {}  # child pid -> descendants seen (killed too, whatever happens)
started: set[int] = set()  # every pid started or seen under one: results.json lists them (tests check them)
_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

try:
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def parse_cpus(text: str | None) -> set[int] | None:
    """'0', '0,2', '0-3' -> a set of cores; '' / None / '-1' -> None (not pinned)."""
    if not text or text.strip() in ("-1", "none"):
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    available = os.sched_getaffinity(0)
    if not cpus <= available:
        raise ValueError(f"cpus {sorted(cpus - available)} are not available here (available: {sorted(available)})")
    return cpus


def cpu_list(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus))) if cpus else "any"


def _preexec(cpus: set[int] | None) -> Callable[[], None]:
    def run() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)  # spawn() blocks them around fork
        if cpus:
            os.sched_setaffinity(0, cpus)
        raise_nofile()
        if _prctl is not None:
            _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: even a SIGKILLed bench leaves no server behind

    return run


def spawn(
    argv: list[str], cpus: set[int] | None = None, env: dict[str, str] | None = None, log: Any = None, **kwargs: Any
) -> subprocess.Popen:
    """Start `argv` in its own session, pinned to `cpus`; registered for stop_all() before any signal lands."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            preexec_fn=_preexec(cpus),  # noqa: PLW1509 - pins the server's cores; the children it runs start no thread
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            **kwargs,
        )
        _live.append(proc)
        _seen[proc.pid] = {}
        started.add(proc.pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return proc


def descendants(pid: int) -> list[psutil.Process]:
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    if pid in _seen:
        _seen[pid].update((p.pid, p) for p in found)
        started.update(p.pid for p in found)
    return found


def _kill_seen(pid: int) -> None:
    # Descendants that outlived their parent (re-parented away). psutil checks the creation time before
    # signalling, so a recycled pid is never hit.
    for proc in _seen.pop(pid, {}).values():
        try:
            proc.kill()
        except psutil.Error:
            pass


def stop(proc: subprocess.Popen, graceful: bool = True, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, bounded wait, SIGKILL to its group and to every descendant seen; never raises."""
    try:
        descendants(proc.pid)
        if proc.poll() is None and graceful:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group (its own session)
        except (ProcessLookupError, PermissionError):
            pass
        _kill_seen(proc.pid)
    except Exception as exc:  # noqa: BLE001 - cleanup must go on with the others
        print(f"\nwarning: could not stop pid {proc.pid}: {exc}", file=sys.stderr)
    finally:
        if proc in _live:
            _live.remove(proc)


def stop_all() -> None:
    for proc in list(_live):  # noqa: PERF101 - a copy: stop() removes from _live
        stop(proc, graceful=True, timeout=5.0)


def live_pids() -> list[int]:
    return [p.pid for p in _live]


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


def install() -> None:
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)


# ---------------------------------------------------------------------------- measuring a server's processes

_SKIP = ("resource_tracker", "semaphore_tracker", "forkserver")


def workers(pid: int) -> list[psutil.Process]:
    """The processes that serve: the descendants of `pid` (helpers such as multiprocessing's resource tracker
    left out), or `pid` itself when it has none (a single-process server)."""
    found = []
    for proc in descendants(pid):
        try:
            if not any(s in " ".join(proc.cmdline()) for s in _SKIP):
                found.append(proc)
        except psutil.Error:
            pass
    if found:
        # A worker is a process without children of its own (granian/hypercorn may nest a level).
        parents = set()
        for q in found:
            try:
                parents.add(q.ppid())
            except psutil.Error:  # exited meanwhile (a reload, a crash)
                pass
        leaves = [p for p in found if p.pid not in parents]
        return leaves or found
    try:
        return [psutil.Process(pid)]
    except psutil.Error:
        return []


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its descendants still alive."""
    total = 0.0
    try:
        procs = [psutil.Process(pid), *descendants(pid)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def rss_per_worker(pid: int) -> float:
    """Mean resident memory of the serving processes, in bytes."""
    sizes = []
    for proc in workers(pid):
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes) / len(sizes) if sizes else float("nan")


class CpuMeter:
    """Cores a server's process tree used between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.c0 = tree_cpu(pid)

    def stop(self) -> float:
        return (tree_cpu(self.pid) - self.c0) / max(time.monotonic() - self.t0, 1e-6)


_TICK = os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / _TICK


def _own_cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for proc in list(_live):  # noqa: PERF101 - a copy: another thread may start or stop a server meanwhile
        total += tree_cpu(proc.pid)
    return total


class OtherLoad:
    """How many cores processes other than ours kept busy between start and stop (the machine is shared)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = _machine_cpu()
        self.own0 = _own_cpu()

    def stop(self) -> float:
        wall = max(time.monotonic() - self.t0, 1e-6)
        return max(0.0, (_machine_cpu() - self.busy0 - (_own_cpu() - self.own0)) / wall)


def _cores_busy(cpus: set[int]) -> float:
    """CPU seconds (user + nice + system) spent on `cpus` since boot."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                fields = [int(x) for x in rest.split()]
                total += fields[0] + fields[1] + fields[2]
    return total / _TICK


class CoreLoad:
    """Cores that processes other than server `pid` kept busy on the server's own `cpus` (pinned runs): what
    steals from the server directly. None when the servers are not pinned."""

    def __init__(self, cpus: set[int] | None, pid: int) -> None:
        self.cpus, self.pid = cpus, pid
        self.t0 = time.monotonic()
        if cpus:
            self.busy0, self.own0 = _cores_busy(cpus), tree_cpu(pid)

    def stop(self) -> float | None:
        if not self.cpus:
            return None
        wall = max(time.monotonic() - self.t0, 1e-6)
        return max(0.0, (_cores_busy(self.cpus) - self.busy0 - (tree_cpu(self.pid) - self.own0)) / wall)
