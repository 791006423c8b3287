"""A read that is one ordinary request taken the direct way on a native WSGI server, against the general way it
stands in for, over real sockets: with --threads 1 the request is run from the read (corral.worker.wsgi.direct),
with the pool it is made in one step (corral.worker.http1.direct) and begun as any.

Two servers run the same application, one with the direct way on and one with it off; the same requests go to
both and must get the same responses (the Date header aside), the application the same environ, the
connection the same fate. A counter shows which requests took the direct way, so that the comparison is known
to compare something.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import ExitStack

import pytest

from corral.shared import native
from corral.worker.edge.accesslog import make_access_log
from corral.worker.http1 import protocol as http1_protocol
from corral.worker.wsgi import call, direct, protocol
from worker_http_helpers import WAIT, Client, run_server, settings, wait_until

# The direct way exists only with the compiled modules: skipped without them (not built, or turned off with
# CORRAL_NO_EXTENSIONS=1, as CI's second run of the suite does); where CI requires them, missing ones fail.
pytestmark = pytest.mark.skipif(
    not direct.available() and not (os.environ.get("REQUIRE_NATIVE") and native.enabled()),
    reason="no compiled request parser (not built at install, or CORRAL_NO_EXTENSIONS is set)",
)

# The environ keys that differ between two servers or two connections for the same request.
_PER_SERVER = ("SERVER_PORT", "REMOTE_PORT", "wsgi.input", "wsgi.errors", "wsgi.file_wrapper")


def environ_app(environ, start_response):
    """Answers with the environ it got (what can be compared), after reading the body."""
    body = environ["wsgi.input"].read()
    seen = {k: v for k, v in environ.items() if k not in _PER_SERVER}
    seen["body"] = body.decode("latin-1")
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Path", environ["PATH_INFO"])])
    return [json.dumps(seen, sort_keys=True, default=repr).encode()]


@pytest.fixture(params=["threads1", "pool"])
def mode(request):
    """--threads 1 (the read run on the loop's thread, corral.worker.wsgi.direct) or the pool of 4 threads (the
    request made in one step by corral.worker.http1.direct, then begun as any)."""
    return request.param


@pytest.fixture
def taken(monkeypatch, mode):
    """How many reads the direct way took."""
    count = [0]
    if mode == "threads1":
        real_serve = protocol.serve_read

        def counting_serve(conn, data):
            done = real_serve(conn, data)
            count[0] += done
            return done

        monkeypatch.setattr(protocol, "serve_read", counting_serve)
    else:
        real_read = http1_protocol.read_request

        def counting_read(conn, data, max_body):
            cycle = real_read(conn, data, max_body)
            count[0] += cycle is not None
            return cycle

        monkeypatch.setattr(http1_protocol, "read_request", counting_read)
    return count


class Pair:
    """The same application on two servers: `direct` with the direct way, `general` without it."""

    def __init__(self, stack, app, mode, **values):
        self.stack = stack
        options = dict({"threads": 1 if mode == "threads1" else 4}, **values)
        host, self.direct_port, server = stack.enter_context(run_server(app, settings(**options), wsgi=True))
        _, self.general_port, general = stack.enter_context(run_server(app, settings(**options), wsgi=True))
        if mode == "threads1":
            assert server.wsgi.direct is True and general.direct_reads is False
            general.wsgi.direct = False
        else:
            assert server.wsgi.direct is False and server.direct_reads is True
            general.direct_reads = False
        self.host = host

    def clients(self):
        return Client(self.host, self.direct_port), Client(self.host, self.general_port)


def same(a, b):
    """Two responses alike but for the Date header."""
    drop = ("date",)
    return (a.status, [h for h in a.headers if h[0] not in drop], a.body) == (
        b.status,
        [h for h in b.headers if h[0] not in drop],
        b.body,
    )


# Requests of many shapes: the direct way takes the ordinary ones, the rest go the general way on both servers.
REQUESTS = [
    (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", True),
    (b"GET /a/b?x=1&y=caf%C3%A9 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", True),
    (b"GET /caf%C3%A9/%20 HTTP/1.1\r\nHost: h\r\n\r\n", True),  # decoded path: the environ from the scope
    (b"GET /q?%41=%C3%A9 HTTP/1.1\r\nHost: h\r\n\r\n", True),  # '%' in the query alone: from the parser's tuple
    (b"GET /e? HTTP/1.1\r\nHost: h\r\n\r\n", True),  # an empty query
    (b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", True),
    (b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", True),
    (b"GET /c HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\nX-A: 1\r\nX-A: 2\r\nX_B: no\r\n\r\n", True),
    (b"GET /v10 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", True),
    (b"OPTIONS /o HTTP/1.1\r\nHost: h:8080\r\n\r\n", True),
    (b"GET /frag#x HTTP/1.1\r\nHost: h\r\n\r\n", False),  # a fragment to cut: the general way
    (b"PURGE /m HTTP/1.1\r\nHost: h\r\n\r\n", False),  # a method llhttp does not know
    (b"GET http://other.example/abs?q HTTP/1.1\r\nHost: h\r\n\r\n", False),  # absolute-form
    (b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab", False),
    (b"POST /ch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", False),
    (b"GET /bad HTTP/1.1\r\nHost: a b\r\n\r\n", False),  # an invalid Host: 400 both ways
    (b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", True),  # the connection closes after it
    (b"GET /v10 HTTP/1.0\r\nHost: h\r\n\r\n", True),  # HTTP/1.0 without keep-alive: closes too
]


def test_the_direct_way_answers_as_the_general_way(taken, mode):
    with ExitStack() as stack:
        pair = Pair(stack, environ_app, mode)
        for raw, direct_way in REQUESTS:
            before = taken[0]
            one, other = pair.clients()
            with one, other:
                one.send(raw)
                other.send(raw)
                head = raw.startswith(b"HEAD")
                a, b = one.response(head_request=head), other.response(head_request=head)
                assert same(a, b), raw
                assert taken[0] - before == int(direct_way), raw
                # The connection's fate: kept (the next request answered alike) or closed on both.
                if a.header("connection") == "close" or a.status >= 400:
                    assert one.closed() and other.closed(), raw
                else:
                    one.send(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
                    other.send(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
                    assert same(one.response(), other.response()), raw
        assert taken[0] >= 9 * 2 + 2  # each ordinary request and each /next after a kept one


def outcome_app(environ, start_response):
    """Every way a WSGI application can answer, by path."""
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise RuntimeError("the application failed")
    if path == "/write":
        write = start_response("200 OK", [("Content-Length", "6")])
        write(b"wri")
        return [b"tes"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (part for part in (b"a", b"b", b"c"))  # iterated on the pool's thread
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        handle = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the server with the response (PEP 3333)
        handle.write(b"file body")
        handle.seek(0)
        return environ["wsgi.file_wrapper"](handle)
    if path == "/twice":
        start_response("200 OK", [])
        start_response("200 OK", [])
    if path == "/short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"short"]
    if path == "/empty":
        start_response("204 No Content", [])
        return []
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@pytest.mark.parametrize("path", ["/raise", "/write", "/stream", "/file", "/twice", "/short", "/empty", "/"])
def test_every_kind_of_answer_is_the_same_both_ways(taken, mode, path, caplog):
    caplog.set_level(logging.ERROR, logger="corral.error")
    with ExitStack() as stack:
        pair = Pair(stack, outcome_app, mode)
        one, other = pair.clients()
        with one, other:
            for client in (one, other):
                client.send(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            if path == "/short":  # a body shorter than its Content-Length: cut by the close, on both
                a, b = (c.read_to_eof().split(b"\r\n") for c in (one, other))
                assert [x for x in a if not x.startswith(b"date:")] == [x for x in b if not x.startswith(b"date:")]
                assert a[-1] == b"short"
                assert taken[0] == 1
                return
            a, b = one.response(), other.response()
            assert same(a, b)
            assert taken[0] == 1  # the direct server took the request; what the application did decides the rest
            if a.status >= 500 or a.header("connection") == "close":
                assert one.closed() and other.closed()
            else:
                for client in (one, other):
                    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                assert same(one.response(), other.response())
    if path in ("/raise", "/twice", "/short"):
        # Logged once per server, the same way (with the traceback where there is one).
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2 and messages[0] == messages[1], messages


def test_the_connection_counts_its_requests_across_both_ways(taken, mode):
    """--max-requests-per-connection 3: the third response closes, whichever way the first two went."""
    with ExitStack() as stack:
        pair = Pair(stack, environ_app, mode, max_requests_per_connection=3)
        one, other = pair.clients()
        with one, other:
            for target in ("/a", "/frag#x", "/c"):  # direct, general, then the last (direct: it closes)
                for client in (one, other):
                    client.send(f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                a, b = one.response(), other.response()
                assert same(a, b)
            assert a.header("connection") == "close"
            assert one.closed() and other.closed()
        assert taken[0] == 2


def test_requests_read_together_are_answered_in_order(taken, mode):
    """Two requests in one read are not the direct way's (one read, one request); one read per request on many
    connections is, and each connection gets its own answer."""
    with ExitStack() as stack:
        pair = Pair(stack, environ_app, mode)
        with Client(pair.host, pair.direct_port) as client:
            client.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
            assert [client.response().header("x-path") for _ in range(2)] == ["/1", "/2"]
            assert taken[0] == 0
        clients = [Client(pair.host, pair.direct_port) for _ in range(20)]
        try:
            for n, client in enumerate(clients):
                client.send(f"GET /c{n} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            assert [c.response().header("x-path") for c in clients] == [f"/c{n}" for n in range(20)]
        finally:
            for client in clients:
                client.close()
        assert taken[0] == 20


def test_the_access_log_and_the_pool_see_each_direct_request(taken, mode, tmp_path):
    log = tmp_path / "access.log"
    access_log = make_access_log(settings(accesslog=str(log)))  # corral's own: lines batched per loop turn
    assert access_log is not None
    logger = access_log.logger
    stack_ = ExitStack()
    stack_.callback(lambda: [logger.removeHandler(h) or h.close() for h in list(logger.handlers)])
    stack_.callback(setattr, logger, "propagate", True)  # as make_access_log found it (it turns it off)
    with stack_, ExitStack() as stack:
        host, port, server = stack.enter_context(
            run_server(environ_app, settings(threads=1 if mode == "threads1" else 4), wsgi=True, access_log=access_log)
        )
        with Client(host, port) as client:
            for n in range(5):
                assert client.get(f"/n{n}").status == 200
        assert taken[0] == 5
        assert server.requests_served == 5
        assert not server.application_instances  # nothing left in the pool
        lines = wait_until(lambda: len(log.read_text().splitlines()) == 5 and log.read_text(), WAIT, "5 lines")
        assert [line.split('"')[1] for line in lines.splitlines()] == [f"GET /n{n} HTTP/1.1" for n in range(5)]


def addresses_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    keys = ("SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT", "SERVER_PROTOCOL", "QUERY_STRING")
    return [json.dumps({key: environ.get(key) for key in keys}).encode()]


def test_with_threads_1_the_environ_comes_from_the_parsed_request(monkeypatch):
    """A --threads 1 request served from the read has its environ made from the parser's tuple, not from a scope
    (the comparisons above would pass either way), with each address where it belongs (the comparisons drop the
    ports, which differ between the two servers)."""
    made = [0]
    real = call._native_build_parsed
    if real is None:
        pytest.skip("the compiled environ builder was not built")

    def counting(*args):
        environ = real(*args)
        made[0] += environ is not None
        return environ

    monkeypatch.setattr(call, "_native_build_parsed", counting)
    with (
        run_server(addresses_app, settings(threads=1), wsgi=True) as (host, port, server),
        Client(host, port) as client,
    ):
        assert server.wsgi.direct is True
        answers = [client.get("/a?x=1"), client.get("/b", version="1.0", headers="Connection: keep-alive\r\n")]
        client_port = client.sock.getsockname()[1]
    assert made[0] == 2
    seen = [json.loads(answer.body) for answer in answers]
    assert seen[0] == {
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "REMOTE_ADDR": host,
        "REMOTE_PORT": str(client_port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "QUERY_STRING": "x=1",
    }
    assert seen[1]["SERVER_PROTOCOL"] == "HTTP/1.0" and seen[1]["QUERY_STRING"] == ""
