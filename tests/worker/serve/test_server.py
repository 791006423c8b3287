"""WorkerServer: application errors, send() validation, backpressure, 503 mode, graceful stop, flow control,
access log, heartbeat and the proxy hook."""

from __future__ import annotations

import logging
import threading

import pytest

from corral.worker.conn.flow import BODY
from worker_http_helpers import WAIT, Client, Gate, call_in_loop, run_server, settings, wait_until


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


# ---------------------------------------------------------------------------- application errors


def test_exception_before_response_start_is_500_and_logged(caplog):
    async def app(scope, receive, send):
        raise ValueError("boom before start")

    caplog.set_level(logging.ERROR, logger="corral.error")
    with run_server(app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.status == 500
        assert client.closed()
        wait_until(
            lambda: any(
                "boom before start" in (r.exc_text or "") or (r.exc_info and "boom before start" in str(r.exc_info[1]))
                for r in caplog.records
                if r.name == "corral.error"
            ),
            what="error log",
        )


def test_exception_after_response_start_closes_the_connection(caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after start")

    caplog.set_level(logging.ERROR, logger="corral.error")
    with run_server(app) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = client.read_to_eof()  # the chunked body never terminates: the close says it is incomplete
        assert data.startswith(b"HTTP/1.1 200 OK")
        assert b"partial" in data and not data.endswith(b"0\r\n\r\n")
        wait_until(lambda: any(r.name == "corral.error" for r in caplog.records), what="error log")


def test_app_returning_without_response_is_500(caplog):
    async def app(scope, receive, send):
        return None

    caplog.set_level(logging.ERROR, logger="corral.error")
    with run_server(app) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 500
        assert client.closed()
    assert any("without starting response" in r.getMessage() for r in caplog.records)


def test_app_returning_mid_body_closes():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})

    with run_server(app) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_to_eof().endswith(b"\r\n\r\n12345")


def test_send_after_complete_and_out_of_order_raise_in_the_app(events):
    async def app(scope, receive, send):
        if scope["path"] == "/body-first":
            try:
                await send({"type": "http.response.body", "body": b"x"})
            except RuntimeError as exc:
                events.put(("body-first", str(exc)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except RuntimeError as exc:
            events.put(("double-start", str(exc)))
        await send({"type": "http.response.body", "body": b"done"})
        try:
            await send({"type": "http.response.body", "body": b"more"})
        except RuntimeError as exc:
            events.put(("after-complete", str(exc)))

    with run_server(app) as (host, port, _), Client(host, port) as client:
        assert client.get("/body-first").body == b"done"
        seen = dict(events.get(timeout=WAIT) for _ in range(3))
        assert set(seen) == {"body-first", "double-start", "after-complete"}
        assert "after response already completed" in seen["after-complete"]
        assert client.get().body == b"done"  # the connection is fine


def test_body_longer_than_content_length_is_an_error(events):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        try:
            await send({"type": "http.response.body", "body": b"toolong"})
        except RuntimeError as exc:
            events.put(str(exc))
            raise

    with run_server(app) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = client.read_to_eof()
        assert b"toolong" not in data
        assert "longer than Content-Length" in events.get(timeout=WAIT)


def test_header_injection_is_refused(events):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-evil", b"a\r\nset-cookie: b")]})
        try:
            await send({"type": "http.response.body", "body": b""})
        except RuntimeError as exc:
            events.put(str(exc))
            raise

    with run_server(app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.status == 500
        assert "CR or LF" in events.get(timeout=WAIT)


# ---------------------------------------------------------------------------- backpressure


def gated_app(gate: Gate):
    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            await gate.wait()
        await ok_app(scope, receive, send)

    return app


def test_backpressure_parks_requests_until_a_slot_frees():
    gate = Gate()
    with run_server(gated_app(gate), settings(max_applications=1)) as (host, port, server):
        with Client(host, port) as first, Client(host, port) as second:
            first.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            second.send(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_until(lambda: server.stats()["parked"] == 1, what="the second request to park")
            assert not server.stats()["accepting"]
            gate.open(server)
            assert first.response().body == b"/slow"
            assert second.response().body == b"/second"
            wait_until(lambda: server.stats()["accepting"], what="accepting to resume")
            with Client(host, port) as third:
                assert third.get("/third").body == b"/third"


def test_parked_requests_run_in_fifo_order(events):
    gate = Gate()

    async def app(scope, receive, send):
        events.put(scope["path"])
        await gated_app(gate)(scope, receive, send)

    with run_server(app, settings(max_applications=1)) as (host, port, server):
        clients = [Client(host, port) for _ in range(4)]
        try:
            # Once a request parks the server stops accepting: open every connection before that.
            wait_until(lambda: server.stats()["connections"] == 4, what="connections to be accepted")
            clients[0].send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            for i, client in enumerate(clients[1:], 1):
                client.send(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
                wait_until(lambda i=i: server.stats()["parked"] == i, what="parking")
            gate.open(server)
            for client in clients:
                assert client.response().status == 200
        finally:
            for client in clients:
                client.close()
    assert [events.get(timeout=WAIT) for _ in range(4)] == ["/slow", "/1", "/2", "/3"]


def test_pool_full_503_mode():
    gate = Gate()
    with run_server(gated_app(gate), settings(max_applications=1, pool_full="503")) as (host, port, server):
        with Client(host, port) as first, Client(host, port) as second:
            first.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            rejected = second.get("/other")
            assert rejected.status == 503
            assert rejected.header("retry-after") == "1"
            assert server.stats()["instances"] == 1  # the 503 took no slot
            gate.open(server)
            assert first.response().body == b"/slow"
            # The instance leaves the pool just after its response is out.
            wait_until(lambda: server.stats()["instances"] == 0, what="the slot to free")
            assert second.get("/other").status == 200  # same connection, now there is room


def test_max_applications_raised_live_unparks():
    gate = Gate()
    with run_server(gated_app(gate), settings(max_applications=1)) as (host, port, server):
        with Client(host, port) as first, Client(host, port) as second:
            first.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            second.send(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_until(lambda: server.stats()["parked"] == 1, what="parking")
            call_in_loop(server, lambda: setattr(server, "max_applications", 2))
            assert second.response().body == b"/second"
            gate.open(server)
            assert first.response().body == b"/slow"


# ---------------------------------------------------------------------------- stopping


def test_graceful_stop_lets_in_flight_requests_finish():
    gate = Gate()
    with run_server(gated_app(gate), graceful_exit=True) as (host, port, server):
        with Client(host, port) as busy, Client(host, port) as idle:
            assert idle.get("/idle").status == 200
            busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            call_in_loop(server, server.request_stop)
            assert idle.closed()  # idle keep-alive connections are closed after a short grace
            gate.open(server)
            response = busy.response()
            assert response.body == b"/slow"
            assert response.header("connection") == "close"
            assert busy.closed()
            wait_until(lambda: server.stats()["connections"] == 0, what="connections to close")


def test_graceful_timeout_closes_what_is_left():
    gate = Gate()
    with run_server(gated_app(gate), settings(graceful_timeout=0.2)) as (host, port, server):
        with Client(host, port) as busy:
            busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert gate.entered.wait(WAIT)
            call_in_loop(server, server.request_stop)
            assert busy.read_to_eof() == b""  # never answered: closed after the graceful timeout


class StopHold:
    """Hold a graceful stop at its first step (it stops accepting), the server's loop blocked there (bounded):
    a test puts bytes in a socket buffer meanwhile, so the stop decides about a connection whose bytes the
    loop has not read yet. The order is fixed by events, not by sleeps."""

    def __init__(self, server) -> None:
        self.server = server
        self.held = threading.Event()
        self.release = threading.Event()
        original = server._set_accepting

        def hold(want: bool) -> None:
            if server.stopping and not self.held.is_set():
                self.held.set()
                self.release.wait(WAIT)
            original(want)

        server._set_accepting = hold

    def __enter__(self) -> StopHold:
        self.server.loop.call_soon_threadsafe(self.server.request_stop, True)
        assert self.held.wait(WAIT)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()


POST = b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"


def stopping(server) -> bool:
    return call_in_loop(server, lambda: server.stopping)


def assert_last_post_served(client) -> None:
    """The POST in flight is answered, as the connection's last response: `connection: close`, then closed."""
    response = client.response()
    assert (response.status, response.body) == (200, b"/post")
    assert response.header("connection") == "close"
    assert client.closed()


def test_graceful_stop_serves_a_request_already_in_an_idle_connections_buffer():
    """An idle keep-alive connection whose next request is in the socket buffer when the stop begins."""
    with run_server(ok_app, graceful_exit=True) as (host, port, server), Client(host, port) as client:
        assert client.get("/first").header("connection") is None  # keep-alive: now idle
        with StopHold(server):
            client.send(POST)
        assert_last_post_served(client)


def test_graceful_stop_serves_a_just_accepted_connection():
    """A connection accepted before the stop, its request still unread in the socket buffer."""
    with run_server(ok_app, graceful_exit=True) as (host, port, server), Client(host, port) as client:
        wait_until(lambda: call_in_loop(server, lambda: len(server.connections)) == 1, what="the accept")
        with StopHold(server):
            client.send(POST)
        assert_last_post_served(client)


def test_graceful_stop_serves_a_request_head_in_progress():
    with run_server(ok_app, graceful_exit=True) as (host, port, server), Client(host, port) as client:
        client.send(b"POST /post HTTP/1.1\r\nHost: t\r\n")
        wait_until(
            lambda: call_in_loop(server, lambda: any(p.state.url for p in server.connections)), what="the head to begin"
        )
        call_in_loop(server, server.request_stop)
        wait_until(lambda: stopping(server), what="the stop")
        client.send(b"Content-Length: 5\r\n\r\nhello")
        assert_last_post_served(client)


def test_keepalive_request_during_the_stop_grace_is_served_with_connection_close():
    with run_server(ok_app, graceful_exit=True) as (host, port, server), Client(host, port) as client:
        server.stop_grace = WAIT  # the idle connection is kept this long: plenty for the test to send
        client.send(POST)
        assert client.response().header("connection") is None
        call_in_loop(server, server.request_stop)
        wait_until(lambda: stopping(server), what="the stop")
        client.send(POST)  # the second POST on the idle connection, during the grace
        assert_last_post_served(client)


def test_idle_connections_are_closed_after_the_stop_grace():
    with run_server(ok_app, settings(graceful_timeout=60), graceful_exit=True) as (host, port, server):
        with Client(host, port) as idle, Client(host, port) as fresh:
            assert idle.get().status == 200
            wait_until(lambda: call_in_loop(server, lambda: len(server.connections)) == 2, what="the accepts")
            server.stop_grace = 0.05
            call_in_loop(server, server.request_stop)
            assert idle.closed() and fresh.closed()  # long before the graceful timeout (60 s)
            wait_until(server.loop.is_closed, what="the server to stop")


def test_response_begun_with_keepalive_before_the_stop_keeps_the_connection_for_the_grace():
    gate = Gate()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"o", "more_body": True})
        if scope["path"] == "/slow":
            await gate.wait()
        await send({"type": "http.response.body", "body": b"k"})

    with run_server(app, graceful_exit=True) as (host, port, server), Client(host, port) as client:
        server.stop_grace = WAIT
        client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert gate.entered.wait(WAIT)
        call_in_loop(server, server.request_stop)
        wait_until(lambda: stopping(server), what="the stop")
        gate.open(server)
        response = client.response()
        assert response.body == b"ok" and response.header("connection") is None  # said before the stop
        client.send(POST)  # so the client may send again: it is served, and told to close
        response = client.response()
        assert (response.status, response.header("connection")) == (200, "close")
        assert client.closed()


# ---------------------------------------------------------------------------- flow control


def test_unconsumed_request_body_pauses_reading():
    gate = Gate()

    async def app(scope, receive, send):
        await gate.wait()  # does not read the body until the gate opens
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % total})

    size = 8 * 1024 * 1024

    def reading_paused() -> bool:
        return any(p.flow.read_paused & BODY for p in list(server.connections))

    with run_server(app) as (host, port, server), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        sender = threading.Thread(target=lambda: client.sock.sendall(b"x" * size), daemon=True)
        sender.start()
        wait_until(lambda: call_in_loop(server, reading_paused), what="reading to pause")
        # The rest waits in the kernel (or the client): the server holds about one high-water mark.
        held = call_in_loop(server, lambda: [len(p.state.active.body) for p in server.connections])
        assert held and held[0] <= 1024 * 1024
        gate.open(server)
        sender.join(WAIT)
        assert client.response().body == b"%d" % size
        # Reading resumed for the next request (the last body chunk had paused it again).
        gate.open(server)
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n" + b"z" * 300000)
        assert client.response().body == b"300000"
        assert client.get().body == b"0"


def test_large_response_to_a_slow_reader():
    size = 10 * 1024 * 1024
    chunk = b"y" * (1024 * 1024)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        for i in range(10):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < 9})

    def writing_paused() -> bool:
        return any(p.flow.write_paused for p in list(server.connections))

    with run_server(app) as (host, port, server), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: call_in_loop(server, writing_paused), what="writing to pause")
        response = client.response()
        assert len(response.body) == size
        assert client.get().status == 200


# ---------------------------------------------------------------------------- hooks


def test_access_log_receives_each_response(events):
    def access_log(scope, status, size, duration, headers):
        events.put((scope["path"], status, size, duration >= 0, list(headers)))

    with run_server(ok_app, access_log=access_log) as (host, port, _), Client(host, port) as client:
        client.get("/logged")
        assert events.get(timeout=WAIT) == ("/logged", 200, 7, True, [])


def test_heartbeat_calls_notify():
    beats = threading.Event()
    with run_server(ok_app, notify=beats.set) as (_host, _port, server):
        assert beats.wait(WAIT)
        stats = server.stats()
        assert stats["max_applications"] == 1000
        assert stats["connections"] == 0


def test_proxy_apply_sees_each_scope(events):
    class Proxy:
        def apply(self, scope):
            scope["client"] = ("203.0.113.9", 1234)

    async def app(scope, receive, send):
        events.put(scope["client"])
        await ok_app(scope, receive, send)

    with run_server(app, proxy=Proxy()) as (host, port, _), Client(host, port) as client:
        client.get()
        assert events.get(timeout=WAIT) == ("203.0.113.9", 1234)


@pytest.mark.parametrize("graceful", [True, False])
def test_stop_with_nothing_running(graceful):
    with run_server(ok_app, graceful_exit=graceful) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 200


def test_pipelined_request_pauses_reading_until_its_turn():
    from corral.worker.conn.flow import PIPELINE

    gate = Gate()

    def pipeline_paused() -> bool:
        return any(p.flow.read_paused & PIPELINE for p in list(server.connections))

    with run_server(gated_app(gate)) as (host, port, server), Client(host, port) as client:
        client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        assert gate.entered.wait(WAIT)
        wait_until(lambda: call_in_loop(server, pipeline_paused), what="reading to pause")
        gate.open(server)
        assert client.response().body == b"/slow"
        assert client.response().body == b"/next"
        assert not call_in_loop(server, pipeline_paused)
        assert client.get("/again").body == b"/again"


def test_non_graceful_stop_cancels_in_flight_requests(events):
    gate = Gate()

    async def app(scope, receive, send):
        try:
            await gate.wait()
        except BaseException as exc:
            events.put(type(exc).__name__)
            raise

    with run_server(app) as (host, port, server), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert gate.entered.wait(WAIT)
        call_in_loop(server, lambda: server.request_stop(False))
        assert client.read_to_eof() == b""
        assert events.get(timeout=WAIT) == "CancelledError"


def test_ipv6_scope(events):
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.bind(("::1", 0))
    except OSError:
        sock.close()
        pytest.skip("no ::1")
    sock.listen(16)
    port = sock.getsockname()[1]

    async def app(scope, receive, send):
        events.put((scope["client"], scope["server"]))
        await ok_app(scope, receive, send)

    with run_server(app, sock=sock) as (_host, _, _server):
        with socket.create_connection(("::1", port), timeout=WAIT) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 200")
            client_port = raw.getsockname()[1]
        assert events.get(timeout=WAIT) == (("::1", client_port), ("::1", port))


def test_wildcard_bind_scope_has_the_connections_local_address(events):
    """On a wildcard bind the local address is per connection (asked of the transport, not the listener)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)
    port = sock.getsockname()[1]

    async def app(scope, receive, send):
        events.put((scope["client"], scope["server"]))
        await ok_app(scope, receive, send)

    with run_server(app, sock=sock):
        for _ in range(2):  # the second connection reuses the first one's `server` tuple
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert raw.recv(100).startswith(b"HTTP/1.1 200")
                client_port = raw.getsockname()[1]
            assert events.get(timeout=WAIT) == (("127.0.0.1", client_port), ("127.0.0.1", port))


def test_upgrade_request_is_served_as_plain_http_then_closed():
    with run_server(ok_app) as (host, port, _), Client(host, port) as client:
        # (Upgrade: websocket is a WebSocket handshake now: tests/worker/websocket/)
        client.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x81\x80")
        response = client.response()
        assert response.body == b"/ws"
        assert response.header("connection") == "close"
        assert client.closed()


def test_failing_proxy_hook_is_400_and_logged(caplog):
    class Proxy:
        def apply(self, scope):
            raise ValueError("bad forwarded header")

    caplog.set_level(logging.ERROR, logger="corral.error")
    with run_server(ok_app, proxy=Proxy()) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 400
        assert client.closed()
    assert any("proxy" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("allow, expected", [("127.0.0.1", "203.0.113.7"), ("10.1.2.3", "127.0.0.1")])
def test_real_proxy_headers_trust_decided_per_connection(events, allow, expected):
    from corral.worker.edge.proxy_headers import make_proxy_headers

    async def app(scope, receive, send):
        events.put(scope["client"][0])
        await ok_app(scope, receive, send)

    proxy = make_proxy_headers(settings(forwarded_allow_ips=allow))
    with run_server(app, proxy=proxy) as (host, port, _), Client(host, port) as client:
        for _ in range(2):
            client.get(headers="X-Forwarded-For: 203.0.113.7\r\n")
            assert events.get(timeout=WAIT) == expected
