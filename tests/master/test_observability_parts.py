"""The master's observability parts on their own: totals kept across worker exits, the exposition format (read
back strictly with prometheus_client's text and OpenMetrics parsers, and promtool when installed), quantiles,
statsd lines over UDP and a unix datagram socket, sd_notify, and the /metrics server's answers - real
sockets, no serve process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from corral.master.observe.exposition import Exposition, families
from corral.master.observe.metrics import MasterCounts, Totals, quantile
from corral.master.observe.metrics_http import MetricsServer
from corral.master.observe.sdnotify import Notifier
from corral.master.observe.statsd import StatsdClient, prefix_of, statsd_lines
from corral.worker.edge.counters import DURATION_BOUNDS, METHOD_INDEX, STATUS_SLOTS, Counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import promtext  # tests/promtext.py: the strict reading of a /metrics page


class FakeWorker:
    def __init__(self, number: int, snapshot: dict, requests: int) -> None:
        self.pid = 1000 + number
        self.number = number
        self.born = time.monotonic()
        self.ready = True
        self.stats = {"m": snapshot, "requests": requests, "instances": 2, "max_applications": 10}
        self.process = psutil.Process()  # this test process stands in for a worker (RSS, CPU)


def snapshot(get200: int, post500: int, fast: int) -> dict:
    counters = Counters()
    counters.requests[METHOD_INDEX["GET"] * STATUS_SLOTS + 200] = get200
    counters.requests[METHOD_INDEX["POST"] * STATUS_SLOTS + 500] = post500
    counters.durations[0] = fast
    counters.durations[-1] = get200 + post500 - fast
    counters.duration_sum = 1.5
    counters.count_close(1000)
    return counters.snapshot()


def page(counts: MasterCounts, workers: list, accept: str = "", collecting: bool = True) -> tuple[str, str]:
    exposition = Exposition(
        lambda: families(counts, workers, target=len(workers), backoff=0.0, started=1.0, collecting=collecting)
    )
    body, content_type = exposition.render(accept)
    return body.decode(), content_type


def parse(text: str) -> dict:
    return promtext.samples(promtext.families(text))


def test_totals_survive_a_worker_exit_and_render_as_valid_exposition_format():
    counts = MasterCounts()
    a, b = FakeWorker(1, snapshot(10, 2, 5), 12), FakeWorker(2, snapshot(4, 0, 4), 4)

    def render(workers):
        return parse(page(counts, workers)[0])

    before = render([a, b])
    assert before[("corral_http_requests_total", (("method", "GET"), ("status", "2xx")))] == 14
    assert before[("corral_http_requests_total", (("method", "POST"), ("status", "5xx")))] == 2
    assert before[("corral_http_request_duration_seconds_count", ())] == 16
    assert before[("corral_http_request_duration_seconds_bucket", (("le", "0.0005"),))] == 9
    assert before[("corral_websocket_closed_total", (("code", "1000"),))] == 2
    counts.worker_gone(a.stats, "crash")  # a is gone: its counts stay, its replacement starts at 0
    c = FakeWorker(3, Counters().snapshot(), 0)
    after = render([b, c])
    for key, value in before.items():
        if key[0].endswith(("_total", "_count", "_bucket", "_sum")) and not key[0].startswith("corral_worker_"):
            assert after[key] >= value, key
    assert after[("corral_http_requests_total", (("method", "GET"), ("status", "2xx")))] == 14
    assert after[("corral_requests_served_total", ())] == 16
    assert after[("corral_worker_exits_total", (("cause", "crash"),))] == 1


#: Every family of the page, as prometheus_client names it, and its type: the names users' dashboards use
#: (a counter's samples add `_total`, a histogram's `_bucket`, `_sum`, `_count`).
FAMILIES = {
    "corral_http_requests": "counter",
    "corral_http_request_duration_seconds": "histogram",
    "corral_http_request_bytes": "counter",
    "corral_http_response_bytes": "counter",
    "corral_pool_rejected": "counter",
    "corral_pool_wait_seconds": "histogram",
    "corral_websocket_opened": "counter",
    "corral_websocket_closed": "counter",
    "corral_websocket_messages_received": "counter",
    "corral_websocket_messages_sent": "counter",
    "corral_log_messages": "counter",
    "corral_http_requests_in_flight": "gauge",
    "corral_pool_parked": "gauge",
    "corral_websocket_open": "gauge",
    "corral_requests_served": "counter",
    "corral_worker_pool_size": "gauge",
    "corral_worker_pool_in_use": "gauge",
    "corral_worker_resident_memory_bytes": "gauge",
    "corral_worker_cpu_seconds": "counter",
    "corral_worker_event_loop_lag_seconds": "gauge",
    "corral_worker_age_seconds": "gauge",
    "corral_workers": "gauge",
    "corral_workers_target": "gauge",
    "corral_worker_starts": "counter",
    "corral_worker_exits": "counter",
    "corral_worker_boot_failures": "counter",
    "corral_worker_backoff_seconds": "gauge",
    "corral_reloads": "counter",
    "corral_master_start_time_seconds": "gauge",
}
#: Only collected when --metrics-bind or --statsd-host asks the workers to count requests.
REQUEST_FAMILIES = set(list(FAMILIES)[:11])


def test_the_page_round_trips_through_prometheus_client_in_both_formats():
    counts = MasterCounts()
    gone = FakeWorker(1, snapshot(7, 1, 3), 8)
    counts.worker_gone(gone.stats, "crash")
    workers = [FakeWorker(2, snapshot(10, 2, 5), 12), FakeWorker(3, snapshot(4, 0, 4), 4)]
    text, content_type = page(counts, workers)
    assert content_type.startswith("text/plain; version=0.0.4")
    by_name = promtext.families(text)
    assert {name: f.type for name, f in by_name.items()} == FAMILIES
    # The text format names a counter's family with its `_total` (what Prometheus reads HELP and TYPE from).
    assert "# TYPE corral_http_requests_total counter\n" in text
    requests = by_name["corral_http_requests"].samples
    assert {s.name for s in requests} == {"corral_http_requests_total"}
    assert sum(s.value for s in requests) == 7 + 1 + 10 + 2 + 4  # the gone worker's too
    text_samples = promtext.samples(by_name)
    assert text_samples[("corral_worker_exits_total", (("cause", "crash"),))] == 1
    assert len([k for k in text_samples if k[0] == "corral_worker_resident_memory_bytes"]) == 2
    promtool_ran = promtext.promtool_check(text)
    print("promtool check metrics:", "passed" if promtool_ran else "not installed")

    # OpenMetrics when the scraper asks for it (Prometheus does by default), read by its stricter parser.
    om, om_type = page(counts, workers, accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert om_type.startswith("application/openmetrics-text;")  # (its version is the library's)
    assert om.endswith("# EOF\n")
    om_families = promtext.families(om, openmetrics=True)
    assert {name: f.type for name, f in om_families.items()} == FAMILIES
    assert om_families["corral_http_request_duration_seconds"].unit == "seconds"
    assert om_families["corral_http_response_bytes"].unit == "bytes"
    om_samples = promtext.samples(om_families)
    assert om_samples.keys() == text_samples.keys()
    moving = ("corral_worker_age_seconds", "corral_worker_resident_memory_bytes", "corral_worker_cpu_seconds_total")
    assert {k: v for k, v in om_samples.items() if k[0] not in moving} == {
        k: v for k, v in text_samples.items() if k[0] not in moving
    }

    # Without request counting: the master's own families only, as strict.
    idle = promtext.families(page(counts, workers, collecting=False)[0])
    assert set(idle) == set(FAMILIES) - REQUEST_FAMILIES


def test_prometheus_client_is_imported_only_with_metrics_bind():
    """`serve` start-up does not pay for prometheus_client unless --metrics-bind is set."""
    script = """
import selectors, sys
import corral.master.cli
from corral.master.observe.observer import Observer
from corral.shared.settings import Settings

class Arbiter:
    workers = {}
    num_workers = 1
    spawn_after = 0.0
    started = 0.0

selector = selectors.DefaultSelector()
plain = Observer(Arbiter(), Settings(statsd_host="127.0.0.1:9"))
plain.start(selector)
plain.close()
print("prometheus_client" in sys.modules)
metered = Observer(Arbiter(), Settings(metrics_bind="127.0.0.1:0"))
metered.start(selector)
body, content_type = metered.metrics_server.render("")
metered.close()
print("prometheus_client" in sys.modules, b"# TYPE corral_workers gauge" in body)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


def test_quantile_interpolates_inside_the_bucket():
    counts = [0] * (len(DURATION_BOUNDS) + 1)
    counts[DURATION_BOUNDS.index(0.001)] = 100  # all between 0.5 ms and 1 ms
    assert quantile(0.5, counts, DURATION_BOUNDS) == pytest.approx(0.00075)
    assert quantile(0.99, counts, DURATION_BOUNDS) == pytest.approx(0.000995)
    assert quantile(0.5, [0] * len(counts), DURATION_BOUNDS) is None
    counts[-1] = 1000  # mostly above the last bound: the last bound is all we know
    assert quantile(0.99, counts, DURATION_BOUNDS) == DURATION_BOUNDS[-1]


def test_statsd_lines_are_deltas_and_timer_sample_rates_add_up():
    before, now = Totals(), Totals()
    before.add(snapshot(10, 0, 10))
    now.add(snapshot(110, 3, 60))
    counts = MasterCounts()
    counts.starts = 4
    lines = statsd_lines(
        "app.", "gunicorn", now, before, counts, {"worker.starts": 1}, {"workers": 4, "pool.in_use": 2}
    )
    assert "app.gunicorn.requests:103|c" in lines
    assert "app.gunicorn.request.status.200:100|c" in lines and "app.gunicorn.request.status.500:3|c" in lines
    assert "app.corral.worker.starts:3|c" in lines and "app.gunicorn.workers:4|g" in lines
    assert "app.corral.pool.in_use:2|g" in lines
    timers = [line for line in lines if line.startswith("app.gunicorn.request.duration:")]
    represented = sum(1 / float(line.split("|@")[1]) if "|@" in line else 1 for line in timers)
    assert round(represented) == 103
    assert not any(":0|c" in line for line in lines)
    assert statsd_lines("app", "gunicorn", now, now, counts, {"worker.starts": 4}, {}) == []


def test_statsd_naming_corral_and_no_prefix():
    now = Totals()
    now.add(snapshot(5, 0, 5))
    counts = MasterCounts()
    counts.logs["error"] = 2  # the master's own error-log records count in log.error too, as in gunicorn
    lines = statsd_lines("", "corral", now, Totals(), counts, {}, {"workers": 1})
    assert "corral.requests:5|c" in lines and "corral.workers:1|g" in lines
    assert "corral.log.error:2|c" in lines and "corral.master.log.error:2|c" in lines
    lines = statsd_lines("", "gunicorn", now, Totals(), counts, {}, {"workers": 1})
    assert "gunicorn.requests:5|c" in lines and "gunicorn.log.error:2|c" in lines


@contextlib.contextmanager
def gunicorn_statsd(**settings):
    """gunicorn's own Statsd logger for a Config with `settings` (its logging set-up undone afterwards)."""
    statsd = pytest.importorskip("gunicorn.instrument.statsd")
    gunicorn_config = pytest.importorskip("gunicorn.config")
    cfg = gunicorn_config.Config()
    for name, value in settings.items():
        cfg.set(name, value)
    saved = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in ("gunicorn.error", "gunicorn.access")
    }
    theirs = statsd.Statsd(cfg)
    try:
        yield theirs
    finally:
        if theirs.sock is not None:
            theirs.sock.close()
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if handler not in handlers:
                    logger.removeHandler(handler)
            logger.propagate = propagate


@pytest.mark.parametrize("prefix", ["", "app1", "app1.", "app1..", "a", "svc.web"])
def test_statsd_prefix_is_gunicorns(prefix):
    with gunicorn_statsd(statsd_prefix=prefix) as theirs:
        assert prefix_of(prefix) == theirs.prefix
    now = Totals()
    now.add(snapshot(1, 0, 1))
    lines = statsd_lines(prefix, "gunicorn", now, Totals(), MasterCounts(), {}, {})
    assert f"{prefix_of(prefix)}gunicorn.requests:1|c" in lines


def test_statsd_names_and_types_are_gunicorns():
    """gunicorn's own Statsd logger, fed one request, one error and the arbiter's workers gauge, sends names
    and types that corral's lines for the same events have too."""
    import datetime
    from types import SimpleNamespace

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    try:
        with gunicorn_statsd(statsd_host=f"127.0.0.1:{listener.getsockname()[1]}") as theirs:
            theirs.access(
                SimpleNamespace(status="200 OK", sent=2, headers=[]),
                SimpleNamespace(headers=[]),
                {"REQUEST_METHOD": "GET", "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.1"},
                datetime.timedelta(milliseconds=3),
            )
            theirs.error("trouble")
            theirs.debug("2 workers", extra={"metric": "gunicorn.workers", "value": 2, "mtype": "gauge"})
            received = [listener.recv(65536).decode() for _ in range(5)]
    finally:
        listener.close()

    def kinds(lines):
        return {(line.split(":", 1)[0], line.split("|")[1]) for line in lines}

    now = Totals()
    now.add(snapshot(1, 0, 1))
    counts = MasterCounts()
    counts.logs["error"] = 1
    ours = statsd_lines("", "gunicorn", now, Totals(), counts, {}, {"workers": 2})
    assert kinds(received) == {
        ("gunicorn.request.duration", "ms"),
        ("gunicorn.requests", "c"),
        ("gunicorn.request.status.200", "c"),
        ("gunicorn.log.error", "c"),
        ("gunicorn.workers", "g"),
    }
    assert kinds(received) <= kinds(ours)


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_statsd_client_sends_tagged_datagrams(tmp_path, transport):
    if transport == "udp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{listener.getsockname()[1]}"
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(tmp_path / "dsd.sock"))
        address = f"unix:{tmp_path / 'dsd.sock'}"
    listener.settimeout(5)
    client = StatsdClient(address, "env:test, app:x")
    try:
        client.send([f"corral.line{i}:{i}|c" for i in range(200)])  # more than one datagram's worth
        received = []
        while len(received) < 200:
            packet = listener.recv(65536).decode()
            assert len(packet) <= 1432
            received += packet.split("\n")
        assert received == [f"corral.line{i}:{i}|c|#env:test,app:x" for i in range(200)]
    finally:
        client.close()
        listener.close()


def test_statsd_without_a_listener_never_raises(tmp_path):
    client = StatsdClient(f"unix:{tmp_path / 'nobody.sock'}")
    client.send(["corral.requests:1|c"])
    client.send(["corral.requests:1|c"])
    assert client.errors == 2
    client.close()


def test_sd_notify_messages_and_watchdog(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"})
    try:
        notifier.ready("2 workers serving")
        assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=2 workers serving"]
        notifier.reloading()
        lines = sock.recv(4096).decode().split("\n")
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
        notifier.watchdog(100.0)
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.watchdog(100.5)  # not due yet (every WATCHDOG_USEC / 2)
        notifier.watchdog(101.0)
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        notifier.close()
        sock.close()
    assert not Notifier({}).enabled
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval == 0  # the watchdog is another process's business
    other.close()


def test_metrics_server_answers_in_the_selector_loop():
    selector = selectors.DefaultSelector()
    accepts: list[str] = []

    def render(accept: str) -> tuple[bytes, str]:
        accepts.append(accept)
        return b"corral_x 1\n", "text/plain; version=0.0.4"

    server = MetricsServer("127.0.0.1:0", render)
    server.register(selector)
    port = server.sock.getsockname()[1]

    def ask(raw: bytes) -> bytes:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(raw)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for key, _ in selector.select(0.05):
                key.data(key)
            client.setblocking(False)
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
        client.close()
        return data

    try:
        ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\ncorral_x 1\n")
        assert b"\r\ncontent-type: text/plain; version=0.0.4\r\n" in ok and b"\r\nvary: accept\r\n" in ok
        # The Accept header reaches render (several lines joined); "" without one.
        ask(
            b"GET /metrics HTTP/1.1\r\nACCEPT: application/openmetrics-text; version=1.0.0\r\n"
            b"Accept: text/plain;q=0.5\r\n\r\n"
        )
        assert accepts == ["", "application/openmetrics-text; version=1.0.0, text/plain;q=0.5"]
        assert ask(b"HEAD /metrics HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")
        assert ask(b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
        assert ask(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert ask(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
        # A client that never finishes its head is closed at its deadline by the loop's sweep.
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /metrics")
        for key, _ in selector.select(1):
            key.data(key)
        assert len(server.conns) == 1
        server.sweep(time.monotonic() + 60)
        assert not server.conns
        try:
            assert slow.recv(10) == b""  # closed (a reset when its bytes were still unread)
        except ConnectionResetError:
            pass
        slow.close()
    finally:
        server.close()
        selector.close()


def test_a_reload_keeps_the_metrics_settings_the_master_started_with(caplog):
    from corral.master.observe.observer import Observer
    from corral.shared.settings import Settings

    class Arbiter:
        workers: ClassVar[dict] = {}
        num_workers = 1
        spawn_after = 0.0
        started = 0.0

    observer = Observer(Arbiter(), Settings(statsd_host="127.0.0.1:8125"))
    kept = observer.reload_begun(Settings(statsd_host="127.0.0.1:9999", workers=3, naming="corral"))
    assert kept.statsd_host == "127.0.0.1:8125" and kept.workers == 3 and kept.naming == "gunicorn"
    assert "--statsd-host, --naming changes need a restart" in caplog.text
    assert observer.counts.reloads == 1
    observer.close()


def test_the_sample_grafana_dashboard_uses_only_metrics_corral_exports():
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bcorral_[a-z_]+", expr)}
    text, _ = page(MasterCounts(), [FakeWorker(1, snapshot(1, 1, 1), 2)])
    exported = {name for name, _ in parse(text)}
    assert used and used <= exported, used - exported
