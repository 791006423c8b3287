"""A gunicorn user's server hooks, run unchanged by `serve`: a typical production gunicorn.conf.py found
without -c (every hook with an observable effect, in the process gunicorn runs it in; raw_env, worker_class),
prometheus_client's multiprocess mode with its child_exit hook, and hooks that raise."""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from serve_harness import Master, complete_lines, free_port, get, wait_until, write_apps

# A typical production gunicorn.conf.py: every hook leaves a file named after itself and the pid it ran in.
HOOKS_CONF = """
import os

bind = "127.0.0.1:{port}"
workers = 2
worker_class = "gthread"
threads = 4
raw_env = ["GREETING=hello from raw_env", "SECOND=2"]
pidfile = "serve.pid"
accesslog = "-"
worker_tmp_dir = "/dev/shm"   # common in Docker images; nothing to do in corral (a warning says so)

MARKS = os.path.abspath("marks")
os.makedirs(MARKS, exist_ok=True)


def mark(name, text=""):
    with open(os.path.join(MARKS, f"{{name}}.{{os.getpid()}}"), "a") as fh:
        fh.write(text + "\\n")


def on_starting(server):
    mark("on_starting", str(server.pid))


def when_ready(server):
    mark("when_ready", f"{{server.num_workers}} {{server.cfg.workers}}")


def pre_fork(server, worker):
    mark("pre_fork", f"{{worker.age}} {{worker.pid}}")


def post_fork(server, worker):
    mark("post_fork", f"{{worker.age}} {{worker.pid}}")


def post_worker_init(worker):
    mark("post_worker_init", f"{{worker.pid}} {{os.environ.get('GREETING')}}")


def pre_request(worker, req):
    mark("pre_request", f"{{req.method}} {{req.path}} {{req.uri}} {{dict(req.headers).get('X-PROBE')}}")


def post_request(worker, req, environ, resp):
    mark("post_request", f"{{req.path}} {{resp.status}} {{environ['REQUEST_METHOD']}} {{environ.get('app.mark')}}")


def worker_int(worker):
    mark("worker_int", str(worker.pid))


def worker_exit(server, worker):
    mark("worker_exit", str(worker.pid))


def child_exit(server, worker):
    mark("child_exit", str(worker.pid))


def nworkers_changed(server, new_value, old_value):
    mark("nworkers_changed", f"{{new_value}} {{old_value}}")


def on_reload(server):
    mark("on_reload")


def on_exit(server):
    mark("on_exit")
"""

WSGI_APP = """
import os

def application(environ, start_response):
    environ["app.mark"] = "native"  # post_request gets this very environ (the native WSGI path)
    start_response("200 OK", [("content-type", "text/plain")])
    return [f"{os.environ.get('GREETING')}|{environ['wsgi.multithread']}".encode()]
"""


def marks(folder, name):
    """{pid: [lines]} of the files the hook `name` wrote, complete lines only: a hook's open(..., "a") creates
    its file before the line is written, so a reader can see the file empty (or half-written) for a moment."""
    found = {}
    for entry in (folder / "marks").glob(f"{name}.*"):
        lines = complete_lines(entry)
        if lines is not None:
            found[int(entry.suffix[1:])] = lines
    return found


def test_gunicorn_conf_in_the_working_folder_runs_every_hook(tmp_path):
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(HOOKS_CONF.format(port=port))
    (tmp_path / "wsgiapp.py").write_text(WSGI_APP)
    master = Master(["wsgiapp"], tmp_path, port, tmp_path / "serve.pid")  # no -c: found in the folder
    try:
        first = {w["pid"] for w in master.wait_workers(2)}
        assert get(port, "/a%20b?x=1", headers={"X-Probe": "yes"}) == (200, "hello from raw_env|True")
        master.wait_for_line('"GET /a%20b?x=1 HTTP/1.1" 200')  # access log on stdout ('-')
        assert f"Loaded config file {tmp_path / 'gunicorn.conf.py'}" in master.output
        assert "gunicorn's 'worker_tmp_dir' is ignored: liveness is a heartbeat" in master.output

        assert list(marks(tmp_path, "on_starting")) == [master.pid]
        assert marks(tmp_path, "when_ready") == {master.pid: ["2 2"]}
        assert sorted(marks(tmp_path, "pre_fork")[master.pid]) == ["1 [booting]", "2 [booting]"]  # gunicorn's
        assert set(marks(tmp_path, "post_fork")) == first  # ran in each worker
        assert {line.split()[0] for line in marks(tmp_path, "post_fork")[next(iter(first))]} <= {"1", "2"}
        inits = marks(tmp_path, "post_worker_init")
        assert set(inits) == first and all(lines == [f"{pid} hello from raw_env"] for pid, lines in inits.items())
        wait_until(lambda: marks(tmp_path, "post_request"), "post_request")
        ((served_by, pre),) = marks(tmp_path, "pre_request").items()
        assert served_by in first and pre == ["GET /a b /a%20b?x=1 yes"]
        assert marks(tmp_path, "post_request") == {served_by: ["/a b 200 OK GET native"]}

        master.signal(signal.SIGTTIN)
        master.wait_workers(3)
        assert marks(tmp_path, "nworkers_changed") == {master.pid: ["3 2"]}
        master.signal(signal.SIGHUP)  # the config file says workers = 2 again
        master.wait_workers(2, lambda ws: not ({w["pid"] for w in ws} & first))
        assert marks(tmp_path, "on_reload") == {master.pid: [""]}
        assert marks(tmp_path, "nworkers_changed")[master.pid] == ["3 2", "2 3"]
        wait_until(lambda: set(marks(tmp_path, "worker_exit")) >= first, "the replaced workers' worker_exit")
        wait_until(
            lambda: {int(x) for x in marks(tmp_path, "child_exit").get(master.pid, [])} >= first,
            "child_exit for the replaced workers",
        )
        last = {w["pid"] for w in master.wait_workers(2)}

        master.signal(signal.SIGINT)  # quick stop: the workers get SIGQUIT, so worker_int runs
        assert master.wait() == OK
        assert set(marks(tmp_path, "worker_int")) == last
        exited = {int(x) for x in marks(tmp_path, "child_exit")[master.pid]}
        assert exited >= first | last
        assert set(marks(tmp_path, "worker_exit")) >= first | last
        assert list(marks(tmp_path, "on_exit")) == [master.pid]
    finally:
        master.stop()


PROMETHEUS_CONF = """
import os
from prometheus_client import multiprocess

bind = "127.0.0.1:{port}"
workers = 2
worker_class = "uvicorn.workers.UvicornWorker"
raw_env = ["APP_ROLE=metrics-demo"]
pidfile = "serve.pid"


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""

PROMETHEUS_APP = """
import os
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess

REQUESTS = Counter("app_requests", "requests served")
IN_WORKER = Gauge("app_worker_up", "1 per live worker", multiprocess_mode="livesum")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":  # set at startup (test_gunicorn_objects.py sets one at import)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                IN_WORKER.set(1)
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/metrics":
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        REQUESTS.inc()
        body = os.environ["APP_ROLE"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_prometheus_multiprocess_with_child_exit(tmp_path):
    pytest.importorskip("prometheus_client")
    port = free_port()
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (tmp_path / "gunicorn.conf.py").write_text(PROMETHEUS_CONF.format(port=port))
    (tmp_path / "promapp.py").write_text(PROMETHEUS_APP)
    # As prometheus_client's docs say for gunicorn: the folder is set before the server starts (the config
    # file imports prometheus_client, which reads it at import).
    master = Master(
        ["promapp:app"], tmp_path, port, tmp_path / "serve.pid", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    )
    try:
        workers = {w["pid"] for w in master.wait_workers(2)}
        for _ in range(6):
            assert get(port, "/") == (200, "metrics-demo")
        status, text = get(port, "/metrics")
        assert status == 200 and metric(text, "app_requests_total") == 6.0
        wait_until(lambda: metric(get(port, "/metrics")[1], "app_worker_up") == 2.0, "both workers' gauges")
        victim = min(workers)
        assert (metrics / f"gauge_livesum_{victim}.db").exists()
        os.kill(victim, signal.SIGTERM)  # the master replaces it; child_exit marks it dead
        wait_until(lambda: not (metrics / f"gauge_livesum_{victim}.db").exists(), "child_exit's mark_process_dead")
        master.wait_workers(2, lambda ws: victim not in {w["pid"] for w in ws})
        wait_until(lambda: metric(get(port, "/metrics")[1], "app_worker_up") == 2.0, "the live gauge to count 2")
        assert metric(get(port, "/metrics")[1], "app_requests_total") == 6.0  # counters survive the death
    finally:
        master.stop()


def test_raising_hooks_are_logged_and_post_fork_fails_the_boot(tmp_path):
    """A master hook that raises is logged and the master goes on; a post_fork that raises fails the worker's
    boot (exit 3), so the boot retries, the backoff and the crash-loop halt apply."""
    import subprocess

    from corral.shared.exitcodes import HALT_CRASH_LOOP

    apps = write_apps(tmp_path)
    (apps / "gunicorn.conf.py").write_text(
        textwrap.dedent("""
        def when_ready(server):
            raise RuntimeError("when_ready bug")

        def post_fork(server, worker):
            raise RuntimeError(f"no database for worker {worker.age}")
    """)
    )
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "corral.master", "-b", f"127.0.0.1:{port}", "apps:app"],
        cwd=apps,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == HALT_CRASH_LOOP, result.stderr
    assert "Server hook when_ready raised" in result.stderr and "RuntimeError: when_ready bug" in result.stderr
    assert result.stderr.count("Server hook post_fork raised") == 3  # --worker-boot-retries 3
    assert "its post_fork hook raised" in result.stderr and "no database for worker 1" in result.stderr
    assert "3 workers in a row failed to boot" in result.stderr
