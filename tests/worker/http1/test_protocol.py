"""HTTP/1.1 behaviour of the worker, end to end on a real server: framing, keep-alive, pipelining, scope."""

from __future__ import annotations

import email.utils
import json

from worker_http_helpers import WAIT, Client, run_server, settings, wait_until


async def read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        if not message["more_body"]:
            return body


async def echo_app(scope, receive, send):
    """Answers with a JSON description of the request (and its body)."""
    body = await read_body(receive)
    payload = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "body": body.decode("latin-1"),
            "client_port": scope["client"][1] if scope["client"] else None,
            "http_version": scope["http_version"],
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def as_json(response) -> dict:
    assert response.status == 200, response
    return json.loads(response.body)


def test_keep_alive_reuses_the_connection():
    with run_server(echo_app) as (host, port, server), Client(host, port) as client:
        ports = {as_json(client.get(f"/{i}"))["client_port"] for i in range(3)}
        assert len(ports) == 1
        assert server.stats()["requests"] == 3


def test_pipelined_requests_are_answered_in_order():
    with run_server(echo_app) as (host, port, _), Client(host, port) as client:
        client.send(
            b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /three?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        answers = [as_json(client.response()) for _ in range(3)]
        assert [a["path"] for a in answers] == ["/one", "/two", "/three"]
        assert answers[1]["body"] == "hello"
        assert answers[2]["query"] == "x=1"


def test_chunked_request_body():
    with run_server(echo_app) as (host, port, _), Client(host, port) as client:
        client.send(
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
        )
        assert as_json(client.response())["body"] == "hello, world"
        assert as_json(client.get("/after"))["path"] == "/after"  # the connection is still usable


async def streaming_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"part1,", "more_body": True})
    await send({"type": "http.response.body", "body": b"part2", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_chunked_response_without_content_length():
    with run_server(streaming_app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.header("transfer-encoding") == "chunked"
        assert response.header("content-length") is None
        assert response.body == b"part1,part2"
        assert client.get().body == b"part1,part2"


def test_http10_streaming_response_is_close_delimited():
    with run_server(streaming_app) as (host, port, _), Client(host, port) as client:
        response = client.get(version="1.0")
        assert response.header("transfer-encoding") is None
        assert response.header("connection") == "close"
        assert response.body == b"part1,part2"  # read until the close


def test_single_body_message_gets_content_length():
    with run_server(echo_app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.header("content-length") == str(len(response.body))
        assert response.header("transfer-encoding") is None


def test_expect_100_continue_sent_when_the_app_reads_the_body():
    with run_server(echo_app) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = client.response()
        assert interim.status == 100
        client.send(b"data")
        assert as_json(client.response())["body"] == "data"


async def no_read_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


def test_expect_100_continue_not_sent_when_the_app_does_not_read():
    with run_server(no_read_app) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        response = client.response()
        assert response.status == 401
        assert b"100 Continue" not in response.raw_head
        # The body never came: the connection cannot be reused and is closed.
        assert client.closed()


async def fixed_app(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-custom", b"yes")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


def test_head_has_headers_but_no_body():
    with run_server(fixed_app) as (host, port, _), Client(host, port) as client:
        client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        response = client.response(head_request=True)
        assert response.status == 200
        assert response.header("content-length") == "5"
        assert response.header("x-custom") == "yes"
        # If a body had been sent, it would be read as the next response's status line.
        assert client.get().body == b"hello"


def test_disconnect_delivered_when_the_client_closes_mid_request(events, caplog):
    async def app(scope, receive, send):
        while True:
            message = await receive()
            events.put(message)
            if message["type"] == "http.disconnect":
                return  # no response: fine once the client is gone, and not worth an error log

    with run_server(app) as (host, port, server):
        client = Client(host, port)
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        first = events.get(timeout=WAIT)
        assert first == {"type": "http.request", "body": b"abc", "more_body": True}
        client.close()
        assert events.get(timeout=WAIT) == {"type": "http.disconnect"}
        wait_until(lambda: server.stats()["instances"] == 0, what="the application to return")
    assert not [r for r in caplog.records if r.name == "corral.error"]


def test_receive_after_response_returns_disconnect(events):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        events.put(await receive())

    with run_server(app) as (host, port, _), Client(host, port) as client:
        assert client.get().status == 204
        assert events.get(timeout=WAIT) == {"type": "http.disconnect"}


def test_http10_without_keep_alive_closes():
    with run_server(fixed_app) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        response = client.response()
        assert response.body == b"hello"
        assert response.header("connection") == "close"
        assert client.closed()


def test_http10_with_keep_alive_stays_open():
    with run_server(fixed_app) as (host, port, _), Client(host, port) as client:
        for _ in range(2):
            response = client.get(headers="Connection: keep-alive\r\n", version="1.0")
            assert response.body == b"hello"
            assert response.header("connection") == "keep-alive"


def test_connection_close_request_closes():
    with run_server(fixed_app) as (host, port, _), Client(host, port) as client:
        response = client.get(headers="Connection: close\r\n")
        assert response.header("connection") == "close"
        assert client.closed()


def test_date_and_server_headers():
    with run_server(fixed_app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.header("server") == "corral"
        assert email.utils.parsedate_to_datetime(response.header("date")) is not None
    with run_server(fixed_app, settings(server_header=False, date_header=False)) as (host, port, _):
        with Client(host, port) as client:
            response = client.get()
            assert response.header("server") is None and response.header("date") is None


def test_scope(events):
    async def app(scope, receive, send):
        scope["state"]["mutated"] = True  # a copy: must not leak into the server's state
        events.put(scope)
        await fixed_app(scope, receive, send)

    state = {"db": "conn"}
    with run_server(app, settings(root_path="/api"), lifespan_state=state) as (host, port, _):
        with Client(host, port) as client:
            client.send(b"GET /a%20b/caf%C3%A9?q=%20x HTTP/1.1\r\nHost: t\r\nX-Thing: One\r\nx-thing: two\r\n\r\n")
            assert client.response().status == 200
            scope = events.get(timeout=WAIT)
            local_port = client.sock.getsockname()[1]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/a b/café"
    assert scope["raw_path"] == b"/a%20b/caf%C3%A9"
    assert scope["query_string"] == b"q=%20x"
    assert scope["root_path"] == "/api"
    assert scope["headers"] == [(b"host", b"t"), (b"x-thing", b"One"), (b"x-thing", b"two")]
    assert scope["client"] == ("127.0.0.1", local_port)
    assert scope["server"] == ("127.0.0.1", port)
    assert scope["extensions"] == {}
    assert scope["state"] == {"db": "conn", "mutated": True}
    assert state == {"db": "conn"}


def test_latin1_fallback_and_absolute_form(events):
    async def app(scope, receive, send):
        events.put((scope["path"], scope["raw_path"], scope["query_string"]))
        await fixed_app(scope, receive, send)

    with run_server(app) as (host, port, _), Client(host, port) as client:
        client.send(b"GET /%E9t%E9 HTTP/1.1\r\nHost: t\r\n\r\n")
        client.response()
        assert events.get(timeout=WAIT) == ("/été", b"/%E9t%E9", b"")
        client.send(b"GET http://example.com/abs?k=v HTTP/1.1\r\nHost: example.com\r\n\r\n")
        client.response()
        assert events.get(timeout=WAIT) == ("/abs", b"/abs", b"k=v")


def test_unix_socket(tmp_path, events):
    import socket

    async def app(scope, receive, send):
        events.put((scope["client"], scope["server"]))
        await fixed_app(scope, receive, send)

    path = str(tmp_path / "corral.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    with run_server(app, sock=sock) as (host, port, _), Client(host, port) as client:
        assert client.get().body == b"hello"
        assert events.get(timeout=WAIT) == (None, (path, None))


def test_a_stopping_worker_leaves_the_unix_socket_to_the_others(tmp_path):
    # The socket file is the master's (or systemd's) and the other workers accept on it: a worker that stops
    # (reload, recycling, scale-down) must not remove it, as Python 3.13's create_unix_server does by default.
    import socket

    path = str(tmp_path / "corral.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    with run_server(fixed_app, sock=sock):
        with run_server(fixed_app, sock=sock.dup()) as (host, _, _), Client(host, None) as client:
            assert client.get().body == b"hello"
        # The second worker has stopped; the first still serves at the same path.
        with Client(path, None) as client:
            assert client.get().body == b"hello"


def test_httpx_client_round_trip():
    import httpx

    with run_server(echo_app) as (host, port, _):
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=WAIT) as http:
            for i in range(3):
                response = http.post("/x", content=b"payload-%d" % i)
                assert response.json()["body"] == f"payload-{i}"
            response = http.post("/gen", content=iter([b"a", b"b", b"c"]))  # chunked upload
            assert response.json()["body"] == "abc"
