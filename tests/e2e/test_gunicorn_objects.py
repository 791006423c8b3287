"""What gunicorn's hooks are handed, from a real `serve -w 2`: the server and worker objects with the
attributes gunicorn's hooks read (server.cfg, server.LISTENERS, server.WORKERS, worker.cfg.worker_connections,
worker.tmp, worker.nr, ...), `worker.alive = False` ending a worker, and prometheus_client's multiprocess
mode with gunicorn's documented child_exit recipe counting exactly the live workers."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Master, free_port, get, wait_until

# Every hook writes what it saw as one JSON line to records/<hook>.<pid>.
OBJECTS_CONF = """
import json, os, time

bind = ["127.0.0.1:{port}", "unix:{sock}"]
workers = 2
max_requests = 1000
max_requests_jitter = 10
timeout = 40
raw_env = ["STAGE=test"]
pidfile = "serve.pid"
RECORDS = os.path.abspath("records")
os.makedirs(RECORDS, exist_ok=True)


def record(hook, **values):
    with open(os.path.join(RECORDS, f"{{hook}}.{{os.getpid()}}"), "a") as fh:
        fh.write(json.dumps(values) + "\\n")


def when_ready(server):
    cfg = server.cfg
    record("when_ready", pid=server.pid, listeners=[str(s) for s in server.LISTENERS],
           names=[s.getsockname() for s in server.LISTENERS], fds=[s.fileno() > 2 for s in server.LISTENERS],
           workers=len(server.WORKERS), num_workers=server.num_workers, cfg_workers=cfg.workers,
           worker_connections=cfg.worker_connections, address=cfg.address, env=cfg.env, uid=cfg.uid,
           is_ssl=bool(cfg.is_ssl), keepalive=cfg.keepalive, proc_name=cfg.proc_name, timeout=server.timeout,
           sendfile=cfg.sendfile, worker_tmp_dir=cfg.worker_tmp_dir, bind=cfg.bind, master_name=server.master_name,
           settings_workers=cfg.settings["workers"].value, reexec_pid=server.reexec_pid,
           worker_class=cfg.worker_class_str)


def pre_fork(server, worker):
    record("pre_fork", pid=worker.pid, age=worker.age, max_requests=worker.max_requests)


def post_fork(server, worker):
    record("post_fork", pid=worker.pid, ppid=worker.ppid, age=worker.age, sockets=[str(s) for s in worker.sockets],
           worker_connections=worker.cfg.worker_connections, timeout=worker.timeout, alive=worker.alive,
           booted=worker.booted, max_requests=worker.max_requests, log=worker.log.name)


def post_worker_init(worker):
    before = worker.tmp.last_update()
    time.sleep(0.01)
    worker.tmp.notify()  # a heartbeat, as gunicorn's workers send one
    worker.notify()
    record("post_worker_init", booted=worker.booted, app=type(worker.wsgi).__name__, nr=worker.nr,
           notified=worker.tmp.last_update() > before, alive=worker.alive)


def post_request(worker, req, environ, resp):
    record("post_request", path=req.path, nr=worker.nr)
    if req.path == "/retire":
        worker.alive = False  # gunicorn's way for a hook to end its worker


def child_exit(server, worker):
    record("child_exit", pid=worker.pid, age=worker.age, booted=worker.booted, nr=worker.nr,
           remaining=sorted(server.WORKERS), ages=sorted(w.age for w in server.WORKERS.values()))
"""

APP = """
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def records(folder, hook):
    """{pid: [dict, ...]} of what the hook `hook` recorded."""
    found = {}
    for entry in (folder / "records").glob(f"{hook}.*"):
        found[int(entry.suffix[1:])] = [json.loads(line) for line in entry.read_text().splitlines()]
    return found


def test_hooks_get_gunicorns_server_and_worker_attributes(tmp_path):
    port = free_port()
    sock = tmp_path / "s.sock"
    (tmp_path / "gunicorn.conf.py").write_text(OBJECTS_CONF.format(port=port, sock=sock))
    (tmp_path / "objapp.py").write_text(APP)
    master = Master(["objapp:app"], tmp_path, port, tmp_path / "serve.pid")
    try:
        first = {w["pid"] for w in master.wait_workers(2)}

        (ready,) = records(tmp_path, "when_ready")[master.pid]
        assert ready["pid"] == master.pid and ready["master_name"] == "Master"
        assert ready["listeners"] == [f"http://127.0.0.1:{port}", f"unix:{sock}"]
        assert ready["names"] == [["127.0.0.1", port], str(sock)] and all(ready["fds"])
        assert (ready["workers"], ready["num_workers"], ready["cfg_workers"]) == (0, 2, 2)
        assert ready["worker_connections"] == 1000  # gunicorn's default: corral has no such setting
        assert ready["address"] == [["127.0.0.1", port], str(sock)] and ready["bind"] == [
            f"127.0.0.1:{port}",
            f"unix:{sock}",
        ]
        assert ready["env"] == {"STAGE": "test"} and ready["uid"] == os.geteuid() and ready["is_ssl"] is False
        assert ready["keepalive"] == 5.0 and ready["proc_name"] == "objapp:app" and ready["timeout"] == 40
        assert ready["sendfile"] is False and ready["worker_tmp_dir"] is None and ready["reexec_pid"] == 0
        assert ready["settings_workers"] == 2 and ready["worker_class"] == "asgi"

        forks = sorted((r for lines in records(tmp_path, "pre_fork").values() for r in lines), key=lambda r: r["age"])
        assert [(r["pid"], r["age"]) for r in forks] == [("[booting]", 1), ("[booting]", 2)]
        assert all(1000 <= r["max_requests"] <= 1010 for r in forks)
        posts = records(tmp_path, "post_fork")
        assert set(posts) == first
        for pid, (post,) in posts.items():
            assert post["pid"] == pid and post["ppid"] == master.pid and post["age"] in (1, 2)
            assert post["sockets"] == ready["listeners"] and post["worker_connections"] == 1000
            assert post["timeout"] == 20 and post["alive"] is True and post["booted"] is False
            assert post["max_requests"] == next(r["max_requests"] for r in forks if r["age"] == post["age"])
        inits = records(tmp_path, "post_worker_init")
        assert set(inits) == first
        assert all(
            lines == [{"booted": True, "app": "function", "nr": 0, "notified": True, "alive": True}]
            for lines in inits.values()
        )

        assert get(port, "/one")[0] == 200
        wait_until(lambda: records(tmp_path, "post_request"), "post_request")
        ((_served_by, seen),) = records(tmp_path, "post_request").items()
        assert seen == [{"path": "/one", "nr": 1}]

        # worker.alive = False: the master starts a replacement, then stops that worker gracefully
        status, body = get(port, "/retire")
        retired = int(body)
        assert status == 200 and retired in first
        master.wait_for_line(f"(pid {retired}) asks to be replaced (a hook set worker.alive = False)")
        after = {w["pid"] for w in master.wait_workers(2, lambda ws: retired not in {w["pid"] for w in ws})}
        assert len(after & first) == 1
        wait_until(
            lambda: any(r["pid"] == retired for r in records(tmp_path, "child_exit").get(master.pid, [])),
            "child_exit for the retired worker",
        )
        exit_record = next(r for r in records(tmp_path, "child_exit")[master.pid] if r["pid"] == retired)
        assert exit_record["booted"] is True and exit_record["nr"] >= 1 and exit_record["age"] in (1, 2)
        assert retired not in exit_record["remaining"] and len(exit_record["remaining"]) == 2
        assert exit_record["ages"] == sorted(exit_record["ages"]) and 3 in exit_record["ages"]
    finally:
        master.stop()


MULTIPROC_CONF = """
from prometheus_client import multiprocess

bind = "127.0.0.1:{port}"
workers = 2
pidfile = "serve.pid"


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""

MULTIPROC_APP = """
import os
from prometheus_client import Gauge

# Set at import, as apps commonly do: every process that imports the app is a "live" one to prometheus_client
LIVE = Gauge("app_live_workers", "processes serving the app", multiprocess_mode="livesum")
LIVE.set(1)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def live_workers(folder) -> float:
    """The livesum gauge as prometheus_client's MultiProcessCollector aggregates the folder's files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    value = registry.get_sample_value("app_live_workers")
    return 0.0 if value is None else value


def test_prometheus_livesum_counts_exactly_the_live_workers(tmp_path):
    """prometheus_client's multiprocess mode with gunicorn's documented child_exit recipe: the gauge reads 2 with
    2 workers, though the master forks a third process that imports the app (the app check) before them, and
    keeps reading the live ones across a worker's replacement and a HUP (whose check forks another)."""
    pytest.importorskip("prometheus_client")
    port = free_port()
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (tmp_path / "gunicorn.conf.py").write_text(MULTIPROC_CONF.format(port=port))
    (tmp_path / "liveapp.py").write_text(textwrap.dedent(MULTIPROC_APP))
    master = Master(
        ["liveapp:app"], tmp_path, port, tmp_path / "serve.pid", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    )
    try:
        workers = {w["pid"] for w in master.wait_workers(2)}
        files = {int(p.stem.rsplit("_", 1)[1]) for p in metrics.glob("gauge_livesum_*.db")}
        assert files == workers, (files, workers)  # the app check's child left nothing behind
        assert live_workers(metrics) == 2.0

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        now = {w["pid"] for w in master.wait_workers(2, lambda ws: victim not in {w["pid"] for w in ws})}
        wait_until(
            lambda: live_workers(metrics) == 2.0 and not (metrics / f"gauge_livesum_{victim}.db").exists(),
            "the dead worker's file to go",
        )

        master.signal(signal.SIGHUP)  # a new app check, then new workers replace the old ones
        master.wait_workers(2, lambda ws: not ({w["pid"] for w in ws} & now))
        wait_until(lambda: live_workers(metrics) == 2.0, "exactly the two new workers to count")
        files = {int(p.stem.rsplit("_", 1)[1]) for p in metrics.glob("gauge_livesum_*.db")}
        assert files == {w["pid"] for w in master.status()["workers"]}
        assert get(port)[0] == 200
    finally:
        master.stop()
