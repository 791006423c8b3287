"""A read that is one ordinary request made into its request in one step (corral.worker.http1.direct), against
the general way it stands in for, over real sockets, on an ASGI application.

Two servers run the same application, one with the direct way and one without it; the same requests go to
both and must get the same responses (the Date header aside), the application the same scope and body, the
connection the same fate. A counter on `read_request` shows which requests took the direct way, so that the
comparison is known to compare something. (The WSGI side: tests/worker/wsgi/test_direct.py.)
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack

import pytest

from corral.shared import native
from corral.worker.edge.proxy_headers import make_proxy_headers
from corral.worker.http1 import direct, protocol
from worker_http_helpers import Client, run_server, settings

# The direct way exists only with the compiled modules: skipped without them (not built, or turned off with
# CORRAL_NO_EXTENSIONS=1, as CI's second run of the suite does); where CI requires them, missing ones fail.
pytestmark = pytest.mark.skipif(
    not direct.available() and not (os.environ.get("REQUIRE_NATIVE") and native.enabled()),
    reason="no compiled request parser (not built at install, or CORRAL_NO_EXTENSIONS is set)",
)


async def scope_app(scope, receive, send):
    """Answers with the scope it got (what two servers can share) and the body it read."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    seen = {k: v for k, v in scope.items() if k not in ("server", "client", "state")}
    seen["client_host"] = scope["client"][0]
    seen["server_host"] = scope["server"][0]
    seen["state"] = scope["state"]
    scope["state"]["mutated"] = True  # the request's own copy: the next request must not see it
    seen["body"] = body
    answer = json.dumps(seen, sort_keys=True, default=repr).encode()
    headers = [(b"content-type", b"application/json"), (b"x-path", scope["path"].encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def taken(monkeypatch):
    """How many reads the direct way made into requests."""
    count = [0]
    real = protocol.read_request

    def counting(conn, data, max_body):
        cycle = real(conn, data, max_body)
        count[0] += cycle is not None
        return cycle

    monkeypatch.setattr(protocol, "read_request", counting)
    return count


def pair(stack, app, proxy=None, **values):
    # Each server with a lifespan state of its own (copied into every scope): {"db": ...}.
    host, direct_port, server = stack.enter_context(
        run_server(app, settings(**values), proxy=proxy, lifespan_state={"db": 1})
    )
    assert server.direct_reads is True
    _, general_port, general = stack.enter_context(
        run_server(app, settings(**values), proxy=proxy, lifespan_state={"db": 1})
    )
    general.direct_reads = False
    return (host, direct_port), (host, general_port)


def final(client, head_request=False):
    """The next final response (an interim 100 Continue skipped)."""
    while True:
        response = client.response(head_request=head_request)
        if response.status >= 200:
            return response


def same(a, b):
    def kept(response):
        return response.status, [h for h in response.headers if h[0] != "date"], response.body

    return kept(a) == kept(b)


REQUESTS = [
    (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", True),
    (b"GET /a/b?x=1&y=caf%C3%A9 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", True),
    (b"GET /caf%C3%A9/%20/%ff HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", True),
    (b"DELETE /d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", True),
    (b"GET /c HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\nX-A: 1\r\nX_B: 2\r\n\r\n", True),
    (b"GET /v10 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET /frag#x HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"PURGE /m HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET http://other.example/abs?q HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab", False),
    (b"POST /ch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", False),
    (b"GET /bad HTTP/1.1\r\nHost: a b\r\n\r\n", False),
    (b"GET /v10 HTTP/1.0\r\nHost: h\r\n\r\n", True),  # HTTP/1.0 without keep-alive: closes
    (b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", True),
    (b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n\r\n", False),  # bytes after it: not one request
]


@pytest.mark.parametrize("raw,direct_way", REQUESTS, ids=[r[0].split(b"\r\n")[0].decode() for r in REQUESTS])
def test_the_direct_way_answers_as_the_general_way(taken, raw, direct_way):
    with ExitStack() as stack:
        one_at, other_at = pair(stack, scope_app)
        with Client(*one_at) as one, Client(*other_at) as other:
            for client in (one, other):
                client.send(raw)
            head = raw.startswith(b"HEAD")
            a, b = final(one, head), final(other, head)
            assert same(a, b)
            assert taken[0] == int(direct_way)
            if a.header("connection") == "close" or a.status >= 400:
                assert one.closed() and other.closed()
            else:
                for client in (one, other):
                    client.send(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
                assert same(one.response(), other.response())
                assert taken[0] == int(direct_way) + 1


def test_the_connection_counts_its_requests_across_both_ways(taken):
    """--max-requests-per-connection 3: the third response closes, whichever way the first two went."""
    with ExitStack() as stack:
        one_at, other_at = pair(stack, scope_app, max_requests_per_connection=3)
        with Client(*one_at) as one, Client(*other_at) as other:
            for target in ("/a", "/frag#x", "/c"):  # direct, general, then the last (direct: it closes)
                for client in (one, other):
                    client.send(f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                a, b = one.response(), other.response()
                assert same(a, b)
            assert a.header("connection") == "close"
            assert one.closed() and other.closed()
    assert taken[0] == 2


def test_many_connections_each_get_their_own_answer(taken):
    with ExitStack() as stack:
        one_at, _ = pair(stack, scope_app)
        clients = [stack.enter_context(Client(*one_at)) for _ in range(20)]
        for n, client in enumerate(clients):
            client.send(f"GET /c{n} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert [c.response().header("x-path") for c in clients] == [f"/c{n}" for n in range(20)]
    assert taken[0] == 20


def test_a_health_path_server_does_not_take_the_direct_way():
    """--health-path: its protocol makes the probe's request itself, so every read goes the general way."""
    with run_server(scope_app, settings(health_path="/healthz")) as (host, port, server):
        assert server.direct_reads is False
        with Client(host, port) as client:
            assert client.get("/healthz").status == 200
            assert client.get("/x").status == 200


@pytest.mark.parametrize("trusted", ["127.0.0.1", "10.9.9.9"], ids=["trusted", "untrusted"])
def test_proxy_headers_are_applied_as_the_general_way_applies_them(taken, trusted):
    """With proxy headers on: a request carrying one from a trusted peer goes the general way (which applies
    it); one without, or from a peer not trusted, may take the direct way; the scopes are the same."""
    values = {"forwarded_allow_ips": trusted}
    proxy = make_proxy_headers(settings(**values))
    with ExitStack() as stack:
        one_at, other_at = pair(stack, scope_app, proxy=proxy, **values)
        with Client(*one_at) as one, Client(*other_at) as other:
            for raw in (
                b"GET /f HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n",
                b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n",
            ):
                for client in (one, other):
                    client.send(raw)
                a, b = one.response(), other.response()
                assert same(a, b)
                if raw.startswith(b"GET /f"):
                    seen = json.loads(a.body)
                    assert (seen["client_host"], seen["scheme"]) == (
                        ("203.0.113.7", "https") if trusted == "127.0.0.1" else ("127.0.0.1", "http")
                    )
    # The plain request is the direct way's; the forwarded one only where its headers are not believed.
    assert taken[0] == (1 if trusted == "127.0.0.1" else 2)
