"""What gunicorn's hooks are handed, from a real `serve -w 2`: the server and worker objects with the
attributes gunicorn's hooks read (server.cfg, server.LISTENERS, server.WORKERS, worker.cfg.worker_connections,
worker.tmp, worker.nr, worker.nr_conns from a monitoring thread, ...), `worker.alive = False` ending a worker,
the app check's child going through worker_exit and child_exit as a worker does, and prometheus_client's
multiprocess mode with either cleanup recipe (mark_process_dead in child_exit, or in worker_exit) counting
exactly the live workers across HUPs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Master, complete_lines, free_port, get, wait_until

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
           booted=worker.booted, max_requests=worker.max_requests, log=worker.log.name, nr_conns=worker.nr_conns,
           own_worker_connections=worker.worker_connections, loop=worker.loop)


def post_worker_init(worker):
    import asyncio

    before = worker.tmp.last_update()
    time.sleep(0.01)
    worker.tmp.notify()  # a heartbeat, as gunicorn's workers send one
    worker.notify()
    record("post_worker_init", booted=worker.booted, app=type(worker.wsgi).__name__, nr=worker.nr,
           notified=worker.tmp.last_update() > before, alive=worker.alive, asgi=worker.asgi is worker.wsgi,
           loop=worker.loop is asyncio.get_running_loop())


def worker_exit(server, worker):
    record("worker_exit", pid=worker.pid, ppid=worker.ppid, age=worker.age, booted=worker.booted,
           alive=worker.alive, app=type(worker.wsgi).__name__, nr=worker.nr, nr_conns=worker.nr_conns)


def post_request(worker, req, environ, resp):
    record("post_request", path=req.path, nr=worker.nr)
    if req.path == "/retire":
        worker.alive = False  # gunicorn's way for a hook to end its worker


def child_exit(server, worker):
    record("child_exit", pid=worker.pid, age=worker.age, booted=worker.booted, nr=worker.nr,
           nr_conns=worker.nr_conns, remaining=sorted(server.WORKERS),
           ages=sorted(w.age for w in server.WORKERS.values()))
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
    """{pid: [dict, ...]} of what the hook `hook` recorded, complete lines only: a hook's open(..., "a") creates
    its file before the line is written, so a reader can see the file empty (or half-written) for a moment."""
    found = {}
    for entry in (folder / "records").glob(f"{hook}.*"):
        lines = complete_lines(entry)
        if lines is not None:
            found[int(entry.suffix[1:])] = [json.loads(line) for line in lines]
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
            assert post["own_worker_connections"] == 1000 and post["nr_conns"] == 0 and post["loop"] is None
            assert post["timeout"] == 20 and post["alive"] is True and post["booted"] is False
            assert post["max_requests"] == next(r["max_requests"] for r in forks if r["age"] == post["age"])
        inits = records(tmp_path, "post_worker_init")
        assert set(inits) == first
        assert all(
            lines
            == [
                {
                    "booted": True,
                    "app": "function",
                    "nr": 0,
                    "notified": True,
                    "alive": True,
                    "asgi": True,
                    "loop": True,
                }
            ]
            for lines in inits.values()
        )

        # The app check's child (before the workers were forked) went through a worker's exit hooks: worker_exit
        # in the child, with the app it imported, then child_exit in the master, for the same pid, age 0.
        ((checked, (check_exit,)),) = ((pid, lines) for pid, lines in records(tmp_path, "worker_exit").items())
        assert checked not in first | {master.pid}
        assert check_exit == {
            "pid": checked,
            "ppid": master.pid,
            "age": 0,
            "booted": False,
            "alive": False,
            "app": "function",
            "nr": 0,
            "nr_conns": 0,
        }
        check_reaped = [r for r in records(tmp_path, "child_exit")[master.pid] if r["pid"] == checked]
        assert [(r["age"], r["booted"], r["nr"], r["nr_conns"], r["remaining"]) for r in check_reaped] == [
            (0, False, 0, 0, [])
        ]

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
        assert exit_record["nr_conns"] == 0  # its last heartbeat: it stopped once its connections were done
        assert retired not in exit_record["remaining"] and len(exit_record["remaining"]) == 2
        assert exit_record["ages"] == sorted(exit_record["ages"]) and 3 in exit_record["ages"]
        # worker_exit ran in the retired worker itself, as gunicorn runs it
        (retired_exit,) = records(tmp_path, "worker_exit")[retired]
        assert retired_exit["pid"] == retired and retired_exit["ppid"] == master.pid
        assert retired_exit["booted"] is True and retired_exit["alive"] is False and retired_exit["nr"] >= 1

        # A HUP whose app check fails: its child still runs worker_exit (with no app), as gunicorn runs it in a
        # worker whose boot failed, and the master child_exit; the running workers stay.
        (tmp_path / "objapp.py").write_text("this is not python\n")
        master.signal(signal.SIGHUP)
        master.wait_for_line("Reload failed, keeping the running workers")
        ((failed, (failed_exit,)),) = (
            (pid, lines)
            for pid, lines in records(tmp_path, "worker_exit").items()
            if lines[0]["age"] == 0 and pid != checked
        )
        assert failed_exit["app"] == "NoneType" and failed_exit["ppid"] == master.pid
        assert any(r["pid"] == failed and r["age"] == 0 for r in records(tmp_path, "child_exit")[master.pid])
        assert {w["pid"] for w in master.status()["workers"]} == after
    finally:
        master.stop()


# PostHog's pattern: post_fork starts a monitoring thread that reads worker.nr_conns (gunicorn's gthread worker
# keeps it) for as long as the worker lives. This one writes each new value to a file.
NR_CONNS_CONF = """
import os, threading, time

bind = "127.0.0.1:{port}"
workers = 1
worker_class = "gthread"
threads = 8
pidfile = "serve.pid"


def post_fork(server, worker):
    path = os.path.abspath(f"nr_conns.{{worker.pid}}")

    def watch():
        last = None
        while True:
            now = worker.nr_conns
            if now != last:
                with open(path, "a") as fh:
                    fh.write(f"{{now}}\\n")
                last = now
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
"""

WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""


def test_worker_nr_conns_counts_open_connections_for_a_monitoring_thread(tmp_path):
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(NR_CONNS_CONF.format(port=port))
    (tmp_path / "connapp.py").write_text(WSGI_APP)
    master = Master(["connapp:app"], tmp_path, port, tmp_path / "serve.pid")
    clients: list[http.client.HTTPConnection] = []
    try:
        (worker,) = master.wait_workers(1)
        seen = tmp_path / f"nr_conns.{worker['pid']}"

        def last() -> int | None:
            lines = seen.read_text().split() if seen.exists() else []
            return int(lines[-1]) if lines else None

        wait_until(lambda: last() == 0, "the thread's first reading")
        for _ in range(3):  # kept-alive connections, each having had a response
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            client.request("GET", "/")
            assert client.getresponse().read() == b"ok"
            clients.append(client)
        wait_until(lambda: last() == 3, "3 open connections")
        for client in clients[:2]:
            client.close()
        wait_until(lambda: last() == 1, "1 open connection")
        clients[2].close()
        wait_until(lambda: last() == 0, "no open connection")
        assert next(int(n) for n in seen.read_text().split()) == 0  # read from post_fork on, before any server
    finally:
        for client in clients:
            client.close()
        master.stop()


MULTIPROC_CONF = """
from prometheus_client import multiprocess

bind = "127.0.0.1:{port}"
workers = 2
pidfile = "serve.pid"


def {hook}(server, worker):
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


@pytest.mark.parametrize("hook", ["child_exit", "worker_exit"])
def test_prometheus_livesum_counts_exactly_the_live_workers(tmp_path, hook):
    """prometheus_client's multiprocess mode, cleaning up with gunicorn's documented recipe (`child_exit`, in the
    master) or from `worker_exit` (in the process itself, as PostHog does): the gauge reads 2 with 2 workers,
    though the master forks a third process that imports the app (the app check) before them, and keeps
    reading the live ones across a worker's replacement and two HUPs (each forks another check)."""
    pytest.importorskip("prometheus_client")
    port = free_port()
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (tmp_path / "gunicorn.conf.py").write_text(MULTIPROC_CONF.format(port=port, hook=hook))
    (tmp_path / "liveapp.py").write_text(textwrap.dedent(MULTIPROC_APP))
    master = Master(
        ["liveapp:app"], tmp_path, port, tmp_path / "serve.pid", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    )

    def files() -> set[int]:
        return {int(p.stem.rsplit("_", 1)[1]) for p in metrics.glob("gauge_livesum_*.db")}

    try:
        current = {w["pid"] for w in master.wait_workers(2)}
        assert files() == current, (files(), current)  # the app check's child left nothing behind
        assert live_workers(metrics) == 2.0

        if hook == "child_exit":  # a worker killed -9 runs no worker_exit (under gunicorn neither): child_exit only
            victim = min(current)
            os.kill(victim, signal.SIGKILL)
            current = {w["pid"] for w in master.wait_workers(2, lambda ws: victim not in {w["pid"] for w in ws})}
            wait_until(lambda: files() == current, "the dead worker's file to go")
            assert live_workers(metrics) == 2.0

        for _ in range(2):  # a new app check, then new workers replace the old ones
            master.signal(signal.SIGHUP)
            current = {
                w["pid"] for w in master.wait_workers(2, lambda ws, old=current: not ({w["pid"] for w in ws} & old))
            }
            wait_until(lambda: files() == current, "only the new workers' files (the old ones' and the check's gone)")
            assert live_workers(metrics) == 2.0
        assert get(port)[0] == 200
    finally:
        master.stop()
