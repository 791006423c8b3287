"""What an idle keep-alive connection holds, and what a worker gives back once connections are gone: parser
states shared through the server's spares (HttpProtocol.response_complete / data_received), shelved after a
tick of idleness (HttpProtocol.shelve), and the memory returned after a drop in connections
(corral.worker.serve.trim). Real sockets, a real server."""

from __future__ import annotations

import socket

from corral.worker.http1 import protocol as http1_protocol
from corral.worker.serve import trim
from worker_http_helpers import WAIT, Client, call_in_loop, run_server, settings, wait_until

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def holding_states(server) -> int:
    return call_in_loop(server, lambda: sum(1 for p in server.connections if getattr(p, "state", None) is not None))


def test_idle_connections_beyond_the_spares_hold_no_parser(monkeypatch):
    monkeypatch.setattr(http1_protocol, "SPARE_STATES", 8)  # as past 256 connections, with 20
    with run_server(ok_app, settings(keepalive=60, max_requests_per_connection=2)) as (host, port, server):
        clients = [Client(host, port) for _ in range(20)]
        try:
            for client in clients:
                assert client.get().body == b"ok"
            # Past SPARE_STATES connections a completed response hands its parser state over: at most the
            # spares hold any (the first connections, answered below the threshold, keep theirs).
            spares = call_in_loop(server, lambda: len(server.spare_states))
            assert spares <= 8
            assert holding_states(server) <= 8
            # Every connection is served again, from a spare or a new state, and its count of requests went
            # with it: the second request is the last (max_requests_per_connection=2).
            for client in clients:
                response = client.get()
                assert response.body == b"ok" and response.header("connection") == "close"
                assert client.closed()
        finally:
            for client in clients:
                client.close()


def test_a_connection_idle_for_a_tick_gives_its_parser_up():
    with run_server(ok_app, settings(keepalive=60)) as (host, port, server), Client(host, port) as client:
        assert client.get().body == b"ok"
        wait_until(lambda: holding_states(server) == 0, timeout=WAIT, what="the idle connection to be shelved")
        assert call_in_loop(server, lambda: len(server.spare_states)) == 1  # shelved to the spares
        assert client.get().body == b"ok"  # the next request takes it back


def test_memory_is_given_back_once_many_connections_are_gone(monkeypatch):
    monkeypatch.setattr(trim, "MIN_DROP", 10)
    monkeypatch.setattr(http1_protocol, "SPARE_STATES", 4)
    with run_server(ok_app, settings(keepalive=60)) as (host, port, server):
        socks = []
        for _ in range(30):
            sock = socket.create_connection((host, port), timeout=WAIT)
            sock.sendall(REQUEST)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            socks.append(sock)
        wait_until(lambda: call_in_loop(server, lambda: len(server.spare_states)) == 4, what="spare states")
        before = call_in_loop(server, lambda: server.connections)
        for sock in socks:
            sock.close()
        # Within a tick or two of the drop: the spares are freed and the set of connections is made again.
        wait_until(lambda: call_in_loop(server, lambda: server.connections is not before), what="the give-back")
        assert call_in_loop(server, lambda: len(server.spare_states)) == 0
        with Client(host, port) as client:  # and the worker serves on
            assert client.get().body == b"ok"


def test_the_trimmer_waits_for_a_large_drop():
    trimmer = trim.Trimmer()
    assert not trimmer.due(100) and not trimmer.due(3000)
    assert not trimmer.due(2500)  # a drop of 500: too small
    assert not trimmer.due(1600)  # more than half still open
    assert trimmer.due(1400)  # over 1,000 gone, under half left
    assert not trimmer.due(1300)  # the peak is now 1,400
    trimmer.give_back()  # glibc's malloc_trim where there is one; nothing to check but that it returns
