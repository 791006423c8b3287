"""Metrics from a real `serve`: /metrics read back strictly with prometheus_client's parsers (every sample
under its typed, documented family; OpenMetrics too; promtool when installed), and statsd received by a UDP
listener of the test's own, checked against exactly what the client sent - across a kill -9 of a worker and
a HUP, with no counter ever going backwards.
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
import textwrap
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # bench
import promtext  # tests/promtext.py: the strict reading of a /metrics page
from bench.replay import StatsdListener as _BenchStatsdListener
from serve_harness import LIFESPAN, WAIT, Master, free_port, wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0"

APP = """
import os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "bye":
                await send({"type": "websocket.close", "code": 4001})
                return
            await send({"type": "websocket.send", "text": message.get("text")})
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/boom":
        raise RuntimeError("boom")  # a 500, and a traceback in the error log (log.exception)
    status = 404 if scope["path"] == "/missing" else 200
    answer = body if scope["method"] == "POST" else str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": answer})
"""


class Client:
    """Exact counts of what the server answered, per (method, status class), and the body bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: Counter[tuple[str, str]] = Counter()
        self.body_bytes = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def run(self, requests: int, threads: int = 4) -> None:
        workers = [threading.Thread(target=self._one, args=(requests,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT * 2)

    def _one(self, requests: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        for i in range(requests):
            method, path, body = (
                ("POST", "/echo", b"x" * 100)
                if i % 7 == 3
                else (("GET", "/missing", None) if i % 11 == 5 else ("GET", "/", None))
            )
            try:
                conn.request(method, path, body=body)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                # A keep-alive connection closed by a retiring worker before it read our request: nothing
                # was answered (so nothing counted); say so, the reload tests require it never happens.
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
                with self.lock:
                    self.failures.append(repr(exc))
                continue
            with self.lock:
                self.sent[(method, f"{response.status // 100}xx")] += 1
                self.body_bytes += len(data)
        conn.close()

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def fetch(port: int, accept: str | None = None) -> tuple[str, str]:
    """The /metrics page and its content type."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return response.read().decode(), response.headers["content-type"]


def scrape(port: int, accept: str | None = None) -> dict[tuple[str, tuple], Any]:
    """The page's samples, read strictly (tests/promtext.py); `("__types__", ())`: sample name -> family type."""
    text, content_type = fetch(port, accept)
    openmetrics = accept is not None and accept.startswith("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text" if openmetrics else "text/plain; version=0.0.4")
    families = promtext.families(text, openmetrics)
    samples: dict[tuple[str, tuple], Any] = promtext.samples(families)
    samples[("__types__", ())] = {s.name: f.type for f in families.values() for s in f.samples}
    return samples


def request_total(samples: dict) -> float:
    return sum(value for (name, _), value in samples.items() if name == "corral_http_requests_total")


def requests_by_class(samples: dict) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == "corral_http_requests_total":
            d = dict(labels)
            out[(d["method"], d["status"])] += int(value)
    return out


class Monotonic:
    """Every scrape's counters (and histogram buckets) must be >= the previous scrape's.

    Threads may share one (the HUP test's scraper and its main thread): `scrape` reads the page and checks it
    under one lock, so pages are checked in the order the master answered them. Without the lock a page
    answered first could be checked after a later one and read as a counter going backwards.
    """

    def __init__(self) -> None:
        self.last: dict = {}
        self.lock = threading.Lock()

    def scrape(self, port: int) -> dict:
        with self.lock:
            return self.check(scrape(port))

    def check(self, samples: dict) -> dict:
        types = samples[("__types__", ())]
        for key, value in samples.items():
            name = key[0]
            if types.get(name) not in ("counter", "histogram") or name.startswith("corral_worker_cpu"):
                continue  # (per-worker CPU is a counter per worker pid: a new worker is a new series)
            if key in self.last:
                assert value >= self.last[key], f"{key} went backwards: {self.last[key]} -> {value}"
        self.last = {k: v for k, v in samples.items() if k[0] != "__types__"}
        return samples


class StatsdListener(_BenchStatsdListener):
    """bench.replay's UDP listener, read as statsd lines."""

    @property
    def lines(self) -> list[str]:
        return [line for datagram in list(self.datagrams) for line in datagram.splitlines()]

    def counter(self, name: str) -> int:
        total = 0
        for line in self.lines:
            metric, _, rest = line.partition(":")
            if metric == name and "|c" in rest:
                total += int(rest.split("|")[0])
        return total

    def stop(self) -> None:
        self.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mapp.py").write_text(LIFESPAN + textwrap.dedent(APP))
    return tmp_path


def test_metrics_exact_across_kill_and_hup(workdir: Path):
    port, metrics_port = free_port(), free_port()
    statsd = StatsdListener()
    pidfile = workdir / "m.pid"
    master = Master(
        [
            "-w",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "--metrics-bind",
            f"127.0.0.1:{metrics_port}",
            "--statsd-host",
            f"127.0.0.1:{statsd.port}",
            "--dogstatsd-tags",
            "env:test",
            "--pid",
            str(pidfile),
            "mapp:app",
        ],
        workdir,
        port=port,
        pidfile=pidfile,
    )
    monotonic = Monotonic()
    try:
        before = {w["pid"] for w in master.wait_workers(4)}
        client = Client(port)
        client.run(150)
        assert not client.failures
        boom = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        boom.request("GET", "/boom")
        assert boom.getresponse().status == 500
        boom.close()
        client.sent[("GET", "5xx")] += 1
        # (the server's own 500 page is not a response body of the application's: not in the bytes)
        expected = client.total

        def settled() -> dict | None:
            samples = monotonic.scrape(metrics_port)
            return samples if requests_by_class(samples) == client.sent else None

        samples = wait_until(settled, "the metrics to count every request")
        assert samples[("corral_http_request_duration_seconds_count", ())] == expected
        assert samples[("corral_http_request_duration_seconds_bucket", (("le", "+Inf"),))] == expected
        assert samples[("corral_http_response_bytes_total", ())] == client.body_bytes
        # (the heartbeat's served count, kept without metrics: responses the application completed)
        assert samples[("corral_requests_served_total", ())] == expected - 1
        assert samples[("corral_worker_starts_total", ())] == 4
        assert samples[("corral_workers", ())] == 4
        pool = [v for (name, _), v in samples.items() if name == "corral_worker_pool_size"]
        assert sorted(pool) == [250, 250, 250, 250]  # --max-applications 1000 over 4 workers
        assert samples[("corral_log_messages_total", (("level", "exception"),))] == 1  # /boom's traceback

        # WebSockets: the handshake is a request (GET 1xx); opened, closed by code, messages both ways.
        for index in range(3):
            with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT) as ws:
                for n in range(4):
                    ws.send(f"m{n}")
                    assert ws.recv(WAIT) == f"m{n}"
                if index == 0:
                    ws.send("bye")  # the application closes with 4001
                    with pytest.raises(ConnectionClosed):
                        ws.recv(WAIT)
            client.sent[("GET", "1xx")] += 1
        samples = wait_until(settled, "the WebSocket handshakes to be counted")
        samples = wait_until(
            lambda: (
                (s := monotonic.scrape(metrics_port))[("corral_websocket_closed_total", (("code", "1000"),))] == 2 and s
            ),
            "the WebSocket closes",
        )
        assert samples[("corral_websocket_opened_total", ())] == 3
        assert samples[("corral_websocket_closed_total", (("code", "4001"),))] == 1
        assert samples[("corral_websocket_messages_received_total", ())] == 13
        assert samples[("corral_websocket_messages_sent_total", ())] == 12
        expected = client.total

        # kill -9 a worker: its totals stay (kept by the master), the replacement starts from zero.
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        master.wait_workers(4, lambda ws: victim not in {w["pid"] for w in ws})
        samples = wait_until(
            lambda: (
                (s := monotonic.scrape(metrics_port))[("corral_worker_exits_total", (("cause", "crash"),))] == 1 and s
            ),
            "the crash to be counted",
        )
        assert requests_by_class(samples) == client.sent
        assert samples[("corral_worker_starts_total", ())] == 5

        # A HUP under load: every old worker's last counts reach the master before it exits.
        scraping = threading.Event()
        scrape_errors: list[str] = []

        def keep_scraping() -> None:
            while not scraping.is_set():
                try:
                    monotonic.scrape(metrics_port)
                except AssertionError as exc:
                    scrape_errors.append(str(exc))
                    return

        scraper = threading.Thread(target=keep_scraping)
        scraper.start()
        current = {w["pid"] for w in master.wait_workers(4)}
        load = threading.Thread(target=client.run, args=(150,))
        load.start()
        master.signal(signal.SIGHUP)
        load.join(WAIT * 2)
        master.wait_workers(4, lambda ws: not {w["pid"] for w in ws} & current)
        wait_until(lambda: master.status()["metrics"]["exits"].get("reload") == 4, "the old workers to exit")
        samples = wait_until(settled, "the metrics to count every request across the HUP")
        scraping.set()
        scraper.join(WAIT)
        assert not scrape_errors, scrape_errors
        assert not client.failures, client.failures
        assert client.total > expected
        assert samples[("corral_http_request_duration_seconds_count", ())] == client.total
        assert samples[("corral_worker_exits_total", (("cause", "reload"),))] == 4
        assert samples[("corral_reloads_total", (("result", "ok"),))] == 1
        assert samples[("corral_worker_starts_total", ())] == 9

        # statsd got the same totals (gunicorn's names for gunicorn's metrics, corral.* for corral's own,
        # DogStatsD tags on every line).
        wait_until(lambda: statsd.counter("gunicorn.requests") == client.total, "statsd to count every request")
        assert statsd.counter("gunicorn.request.status.404") == sum(
            n for (m, s), n in client.sent.items() if s == "4xx"
        )
        assert statsd.counter("corral.worker.exits.crash") == 1
        assert statsd.counter("gunicorn.log.exception") == 1  # the worker's traceback of /boom
        assert statsd.counter("corral.master.log.warning") >= 1  # "Worker ... died with signal 9"
        assert statsd.counter("gunicorn.log.warning") >= statsd.counter("corral.master.log.warning")
        assert all(line.endswith("|#env:test") for line in statsd.lines), statsd.lines[:5]
        assert any(line.startswith("gunicorn.request.duration:") and "|ms" in line for line in statsd.lines)
        assert any(line.startswith("gunicorn.workers:") and "|g" in line for line in statsd.lines)
        assert not any(line.startswith(("corral.requests", "corral.workers")) for line in statsd.lines)

        # serve status shows the same figures.
        document = master.status()
        assert document["metrics"]["requests"] == client.total
        assert document["metrics"]["exits"] == {"crash": 1, "reload": 4}
        assert document["metrics"]["p99_ms"] is not None
    finally:
        master.stop()
        statsd.stop()


def test_request_counter_is_exact_and_never_goes_back_across_kill_9(workdir: Path, masters):
    """`serve -w 2 --metrics-bind`: after exactly N requests the typed counter family's `_total` samples add
    up to N (text format, OpenMetrics, promtool when installed), and a kill -9 of a worker takes nothing off."""
    metrics_port = free_port()
    master = masters(workdir, "-w", "2", "--metrics-bind", f"127.0.0.1:{metrics_port}", "mapp:app")
    before = {w["pid"] for w in master.wait_workers(2)}
    client = Client(master.port)
    client.run(75)  # 4 threads x 75
    assert not client.failures, client.failures
    n = client.total
    assert n == 300
    monotonic = Monotonic()

    def counted(total: int) -> dict | None:
        samples = monotonic.scrape(metrics_port)
        return samples if request_total(samples) == total else None

    samples = wait_until(lambda: counted(n), "the metrics to count every request")
    assert samples[("__types__", ())]["corral_http_requests_total"] == "counter"
    assert requests_by_class(samples) == client.sent
    assert request_total(scrape(metrics_port, OPENMETRICS)) == n
    promtext.promtool_check(fetch(metrics_port)[0])

    # kill -9 a worker while a scraper reads the page in a loop: no scrape may see fewer than N.
    seen: list[float] = []
    errors: list[str] = []
    done = threading.Event()

    def keep_scraping() -> None:
        mine = Monotonic()
        while not done.is_set():
            try:
                seen.append(request_total(mine.scrape(metrics_port)))
            except AssertionError as exc:
                errors.append(str(exc))
                return

    scraper = threading.Thread(target=keep_scraping)
    scraper.start()
    try:
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        master.wait_workers(2, lambda ws: victim not in {w["pid"] for w in ws})
        samples = wait_until(
            lambda: (
                (s := monotonic.scrape(metrics_port))[("corral_worker_exits_total", (("cause", "crash"),))] == 1 and s
            ),
            "the crash to be counted",
        )
        assert request_total(samples) == n
        # The replacement's requests add to the kept total.
        client.run(25)
        assert not client.failures, client.failures
        assert client.total == n + 100
        samples = wait_until(lambda: counted(n + 100), "the replacement's requests to be counted")
        assert requests_by_class(samples) == client.sent
    finally:
        done.set()
        scraper.join(WAIT)
    assert not errors, errors
    assert seen and min(seen) >= n, (len(seen), min(seen, default=None))
    assert request_total(scrape(metrics_port, OPENMETRICS)) == n + 100
