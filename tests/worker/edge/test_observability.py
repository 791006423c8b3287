"""The worker's side of observability, on a real in-process worker: what it counts (corral.worker.edge.counters),
the health path it answers itself (worker/edge/health.py), and the access log's WebSocket and JSON lines
(worker/edge/sessionlog.py).
"""

from __future__ import annotations

import json
import logging
import threading

import pytest
from websockets.sync.client import connect

from corral.shared.settings import Settings
from corral.worker.edge.accesslog import AccessLog
from corral.worker.edge.counters import METHOD_INDEX, STATUS_SLOTS, Counters, meter
from corral.worker.edge.sessionlog import JsonAccessLog, SessionLog
from corral.worker.serve.testing import call_in_loop, run_server
from websocket_helpers import echo_app, url
from worker_http_helpers import WAIT, Client, Gate, wait_until


def slot(method: str, status: int) -> int:
    return METHOD_INDEX[method] * STATUS_SLOTS + status


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def access_logger(name: str) -> tuple[logging.Logger, Records]:
    logger = logging.getLogger(name)
    logger.handlers[:] = []
    records = Records()
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, records


def counting_app(calls: list[str], gate: Gate | None = None):
    async def app(scope, receive, send):
        calls.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if gate is not None and scope["path"] == "/wait":
            await gate.wait()
        status = 404 if scope["path"] == "/missing" else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body or b"hello"})

    return app


def metered(server) -> Counters:
    counters = server.counters
    server.access_log = meter(counters)
    return counters


@pytest.mark.parametrize("where", ["hook", "protocol"])
def test_counts_requests_by_method_and_status_with_durations_and_bytes(where):
    calls: list[str] = []
    # hook: Counters as the access-log hook of a plain HttpProtocol; protocol: what `serve --metrics-bind`
    # runs (worker/serve/metered.py counts inline).
    config = Settings(metrics_bind="127.0.0.1:9") if where == "protocol" else Settings()
    with run_server(counting_app(calls), config) as (host, port, server):
        # (HTTP/2 detection, worker/http2/detect.py, wraps whichever class it is)
        chain = [cls.__name__ for cls in server.protocol_class.__mro__]
        assert ("MeteredHttpProtocol" in chain) == (where == "protocol") and "HttpProtocol" in chain
        counters = call_in_loop(server, lambda: metered(server))
        with Client(host, port) as client:
            for _ in range(3):
                assert client.get("/").status == 200
            assert client.get("/missing").status == 404
            client.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789")
            assert client.response().body == b"0123456789"
        snapshot = call_in_loop(server, counters.snapshot)
    assert snapshot["req"] == {str(slot("GET", 200)): 3, str(slot("GET", 404)): 1, str(slot("POST", 200)): 1}
    assert sum(snapshot["dur"]) == 5 and snapshot["dsum"] > 0
    assert snapshot["bout"] == 3 * 5 + 5 + 10  # response body bytes
    assert snapshot["bin"] > 10  # heads and the body read
    assert json.loads(json.dumps(snapshot)) == snapshot  # what the heartbeat carries is plain JSON


def test_pool_full_503_is_counted_as_rejected():
    gate = Gate()
    calls: list[str] = []
    with run_server(counting_app(calls, gate), Settings(max_applications=1, pool_full="503")) as (host, port, server):
        counters = call_in_loop(server, lambda: metered(server))
        with Client(host, port) as busy, Client(host, port) as other:
            busy.send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            assert other.get("/").status == 503
            gate.open(server)
            assert busy.response().status == 200
        snapshot = call_in_loop(server, counters.snapshot)
    assert snapshot["rej"] == 1
    assert snapshot["req"][str(slot("GET", 503))] == 1


def test_pool_full_503_of_a_wsgi_app_is_counted_as_rejected():
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/wait":
            entered.set()
            release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    settings = Settings(max_applications=1, pool_full="503")
    with run_server(app, settings, wsgi=True) as (host, port, server):
        counters = call_in_loop(server, lambda: metered(server))
        with Client(host, port) as busy, Client(host, port) as other:
            busy.send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            assert entered.wait(WAIT)
            assert other.get("/").status == 503
            release.set()
            assert busy.response().status == 200
        snapshot = call_in_loop(server, counters.snapshot)
    assert snapshot["rej"] == 1


def test_parked_requests_and_their_wait_are_counted():
    gate = Gate()
    calls: list[str] = []
    with run_server(counting_app(calls, gate), Settings(max_applications=1)) as (host, port, server):
        counters = call_in_loop(server, lambda: metered(server))
        with Client(host, port) as busy, Client(host, port) as parked:
            busy.send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            parked.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_until(lambda: call_in_loop(server, lambda: len(server.parked)) == 1, what="the parked request")
            assert call_in_loop(server, lambda: server.stats()["parked"]) == 1
            gate.open(server)
            assert busy.response().status == 200
            assert parked.response().status == 200
        snapshot = call_in_loop(server, counters.snapshot)
    assert snapshot["park"] == 1 and sum(snapshot["wait"]) == 1 and snapshot["wsum"] > 0


def test_health_path_is_answered_without_the_app_even_with_the_pool_full_and_503_when_draining():
    gate = Gate()
    calls: list[str] = []
    with run_server(counting_app(calls, gate), Settings(max_applications=1, health_path="/healthz")) as (
        host,
        port,
        server,
    ):
        with Client(host, port) as probe, Client(host, port) as busy:
            response = probe.get("/healthz")
            assert (response.status, response.body) == (200, b"OK\n")
            assert response.header("cache-control") == "no-store"
            busy.send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            assert call_in_loop(server, lambda: server.pool_full)
            assert probe.get("/healthz").status == 200  # no pool slot needed
            assert probe.get("/healthz?x=1").status == 200  # the path, whatever the query
            # Draining: the graceful stop waits for /wait; the probe's idle connection is kept for the grace.
            server.stop_grace = WAIT * 3
            call_in_loop(server, lambda: server.request_stop(True))
            wait_until(lambda: call_in_loop(server, lambda: server.stopping), what="the stop")
            draining = probe.get("/healthz")
            assert (draining.status, draining.body) == (503, b"draining\n")
            assert draining.header("connection") == "close"
            gate.open(server)
            assert busy.response().status == 200
    assert calls == ["/wait"]  # the application never saw a health check


def test_websocket_counted_and_logged_once_at_close_with_code_duration_and_bytes():
    logger, records = access_logger("test.corral.access.ws")
    with run_server(echo_app()) as (host, port, server):
        log = SessionLog(AccessLog("%(r)s %(s)s %(b)s %(ws_close)s %(ws_in)s %(ws_out)s", logger))
        counters = call_in_loop(server, lambda: server.counters)
        server.access_log = meter(counters, log)
        with connect(url(host, port)) as ws:
            ws.send("hello")
            assert ws.recv(WAIT) == "hello"
            ws.send(b"\x00" * 10)
            assert ws.recv(WAIT) == b"\x00" * 10
            assert records.lines == []  # the handshake's 101 is not a line of its own
            ws.send("close-me")  # the app closes with 4001
            wait_until(lambda: records.lines, what="the close line")
        snapshot = call_in_loop(server, counters.snapshot)
    assert len(records.lines) == 1, records.lines
    assert records.lines[0] == "GET /ws HTTP/1.1 101 15 4001 23 15"
    assert snapshot["wso"] == 1 and snapshot["wsc"] == {"4001": 1}
    assert (snapshot["wmi"], snapshot["wmo"]) == (3, 2)
    assert snapshot["req"] == {str(slot("GET", 101)): 1}  # the handshake, counted as a request


def test_json_access_log_lines():
    logger, records = access_logger("test.corral.access.json")
    calls: list[str] = []
    with run_server(counting_app(calls)) as (host, port, server):
        server.access_log = JsonAccessLog(AccessLog("json", logger))  # the text log object writes its lines
        with Client(host, port) as client:
            assert client.get("/missing?q=1", headers="User-Agent: probe/1\r\n").status == 404
        wait_until(lambda: records.lines, what="the line")
    line = json.loads(records.lines[0])
    assert line["method"] == "GET" and line["path"] == "/missing" and line["query"] == "q=1"
    assert line["status"] == 404 and line["bytes"] == 5 and line["user_agent"] == "probe/1"
    assert line["remote"] == "127.0.0.1" and line["duration_ms"] >= 0 and line["protocol"] == "HTTP/1.1"
