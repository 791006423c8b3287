"""Closing connections cheaply: a closed connection is freed by reference counting (no cycles left for the
cyclic GC), and the last response of a connection the client closes is corked so that it leaves with the
FIN - but only when nothing unread can make the close a reset."""

from __future__ import annotations

import gc

import pytest

import corral.worker.http1.cycle as cycle_module
from corral.worker.http1.protocol import HttpProtocol
from worker_http_helpers import Client, run_server, settings, wait_until


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def closing_app(scope, receive, send):
    """The application asks for the close itself."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"bye"})


async def streaming_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"b"})


async def unread_body_app(scope, receive, send):
    """Answers without reading the request body."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"early"})


def _protocols() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is HttpProtocol)


def test_closed_connections_are_freed_without_the_cyclic_gc():
    gc.collect()
    baseline = _protocols()
    gc.disable()
    try:
        with run_server(ok_app) as (host, port, server):
            for headers in ("Connection: close\r\n", ""):  # closed by the server, then by the client
                for _ in range(5):
                    with Client(host, port) as client:
                        response = client.get(headers=headers)
                        assert response.status == 200 and response.body == b"ok"
                        if headers:
                            assert client.closed()
            wait_until(lambda: not server.connections, what="every connection closed")
            # Nothing but reference counting runs: the protocols (and their parsers, requests and scopes)
            # must be gone all the same.
            wait_until(lambda: _protocols() <= baseline, what="the closed connections freed")
    finally:
        gc.enable()


@pytest.fixture
def corks(monkeypatch):
    calls = []
    real = cycle_module.cork

    def record(transport):
        calls.append(transport)
        real(transport)

    monkeypatch.setattr(cycle_module, "cork", record)
    return calls


def test_connection_close_request_is_corked_and_fully_delivered(corks):
    with run_server(ok_app) as (host, port, _), Client(host, port) as client:
        response = client.get(headers="Connection: close\r\n")
        assert response.status == 200 and response.body == b"ok"
        assert response.header("connection") == "close"
        assert client.closed()
    assert len(corks) == 1


def test_http10_request_is_corked(corks):
    with run_server(ok_app) as (host, port, _), Client(host, port) as client:
        response = client.get(version="1.0")
        assert response.status == 200 and response.body == b"ok"
        assert client.closed()
    assert len(corks) == 1


def test_streamed_response_to_a_closing_client_is_corked_at_its_last_message(corks):
    with run_server(streaming_app) as (host, port, _), Client(host, port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = client.read_to_eof()
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n")
    assert len(corks) == 1


def test_keep_alive_responses_are_not_corked(corks):
    with run_server(ok_app) as (host, port, _), Client(host, port) as client:
        for _ in range(3):
            assert client.get().body == b"ok"
    assert corks == []


def test_server_decided_close_is_not_corked(corks):
    # The client may have more requests in flight: closing with them unread resets the connection, and a
    # reset would drop a corked response. Uncorked, it is on its way before the close.
    with run_server(closing_app) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.body == b"bye" and client.closed()
    with run_server(ok_app, settings(keepalive=0)) as (host, port, _), Client(host, port) as client:
        response = client.get()
        assert response.header("connection") == "close" and client.closed()
    assert corks == []


def test_response_before_the_whole_request_body_is_not_corked(corks):
    with run_server(unread_body_app) as (host, port, _), Client(host, port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 10\r\n\r\n12345")
        response = client.response()
        assert response.status == 200 and response.body == b"early"
    assert corks == []


def test_cork_on_a_unix_socket_is_harmless(tmp_path):
    import socket

    path = str(tmp_path / "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    with run_server(ok_app, sock=sock) as (host, port, _), Client(host, port) as client:
        response = client.get(headers="Connection: close\r\n")
        assert response.status == 200 and response.body == b"ok"
        assert client.closed()
