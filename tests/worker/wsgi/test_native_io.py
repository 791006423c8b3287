"""The native WSGI path's I/O defences and zero-copy path, over real sockets: stalled uploads hold no
thread (issue 14), buffered request bodies stay bounded, wsgi.file_wrapper goes out with os.sendfile."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import httpx
import pytest

import corral.worker.wsgi.cycle as wsgi_cycle
from corral.worker.conn.flow import BODY
from corral.worker.wsgi.input import StreamInput
from worker_http_helpers import WAIT, Client, call_in_loop, run_server, settings, wait_until


def serve(app, **values):
    return run_server(app, settings(**values), wsgi=True)


def echo_length(environ, start_response):
    data = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % len(data)]


# ---------------------------------------------------------------------------- stalled uploads


def test_stalled_uploads_hold_no_thread():
    """2 x --threads clients send a head and part of a body, then stall: the bodies are read on the event
    loop, no thread is taken, and an ordinary request still gets its answer."""
    threads = 2
    with serve(echo_length, threads=threads) as (host, port, server):
        stalled = []
        for _ in range(2 * threads):
            client = Client(host, port)
            client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10000\r\n\r\n" + b"x" * 3000)
            stalled.append(client)
        wait_until(lambda: len(server.application_instances) == 2 * threads, what="the uploads to start")
        with Client(host, port) as ordinary:
            response = ordinary.get("/")
            assert (response.status, response.body) == (200, b"0")
        assert not server.wsgi.threads.jobs  # nothing queued behind the stalled uploads
        # The stalled ones complete when their bodies do.
        for client in stalled:
            client.send(b"y" * 7000)
            assert client.response().body == b"10000"
            client.close()


def streams_or_echoes(environ, start_response):
    """/stream: 64 MiB from a generator (its thread waits whenever the client is behind); else echo_length."""
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 65536 for _ in range(1024))
    return echo_length(environ, start_response)


@pytest.mark.parametrize("stall", ["download", "upload"])
def test_a_thread_waiting_on_its_client_steps_aside(stall):
    """One thread: its request waits on a client that does not read its response (or does not send the rest
    of a streamed body); an ordinary request still gets a thread at once (the minimum rates are off here:
    nothing ends the stalled one), and the extra thread ends afterwards."""
    values = {"threads": 1, "wsgi_body_buffer": 1024, "min_request_body_rate": 0, "min_response_rate": 0}
    with serve(streams_or_echoes, **values) as (host, port, server):
        threads = server.wsgi.threads
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(WAIT)
        stalled.connect((host, port))
        if stall == "download":
            stalled.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        else:
            stalled.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 2048)
        wait_until(lambda: threads.aside == 1, what="the thread to wait on its client")
        with Client(host, port) as ordinary:
            for _ in range(3):
                assert ordinary.get("/").body == b"0"
        assert len(threads.threads) == 2 and threads.aside == 1
        stalled.close()  # the stalled request ends (its read or write raises), and the extra thread with it
        wait_until(lambda: not server.application_instances and threads.aside == 0, what="the stalled one to end")
        with Client(host, port) as ordinary:
            assert ordinary.get("/").body == b"0"
        wait_until(lambda: len(threads.threads) == 1, what="the extra thread to end")


def test_buffered_body_bytes_are_bounded():
    """Clients pushing large bodies at an application that does not read them: what the worker holds per
    request stays near the pre-read bound (the connection stops reading), whatever the clients send."""
    gate = threading.Event()
    buffer = 64 * 1024

    def app(environ, start_response):
        gate.wait(WAIT)
        data = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"%d" % len(data)]

    def held() -> list[int]:
        sizes = []
        for cycle in list(server.application_instances):
            body = cycle.input
            sizes.append(len(body._buf) if type(body) is StreamInput else cycle.body_size)
        return sizes

    def all_paused() -> bool:
        return all(cycle.protocol.flow.read_paused & BODY for cycle in list(server.application_instances))

    length = 32 * 1024 * 1024
    with serve(app, threads=2, wsgi_body_buffer=buffer) as (host, port, server):
        clients = []
        for _ in range(4):
            sock = socket.create_connection((host, port), timeout=WAIT)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % length)
            sock.setblocking(False)
            clients.append([sock, 0])
        wait_until(lambda: len(server.application_instances) == 4, what="the requests to start")

        def push() -> bool:  # send what the kernel takes; True once every connection is paused
            for entry in clients:
                try:
                    entry[1] += entry[0].send(b"z" * (256 * 1024))
                except BlockingIOError:
                    pass
            return call_in_loop(server, all_paused)

        wait_until(push, what="every connection to stop reading")
        sizes = call_in_loop(server, held)
        # One read past the high-water mark at most (uvloop reads up to 256 KiB at a time).
        assert max(sizes) <= buffer + 256 * 1024, sizes
        assert sum(entry[1] for entry in clients) > sum(sizes)  # the rest waits in the kernel, not here
        gate.set()
        for entry in clients:
            entry[0].close()


# ---------------------------------------------------------------------------- wsgi.file_wrapper


@pytest.fixture
def big_file(tmp_path):
    data = os.urandom(8 * 1024 * 1024 + 123)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def sendfile_calls(monkeypatch):
    calls = []
    real = os.sendfile

    def counting(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(wsgi_cycle.os, "sendfile", counting)
    return calls


def file_app(path, opened):
    def app(environ, start_response):
        f = open(path, "rb")  # noqa: SIM115 - the server closes it (the test checks that it does)
        opened.append(f)
        query = environ["QUERY_STRING"]
        headers = [("Content-Type", "application/octet-stream")]
        if query.startswith("offset="):
            f.seek(int(query[7:]))
        elif query.startswith("length="):
            headers.append(("Content-Length", query[7:]))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f)

    return app


def slow_reader(host, port):
    """A client that asks for the file through a small receive buffer and does not read it yet."""
    slow = Client(host, port)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    return slow


def transfers(server):
    """The file transfers under way (WsgiCycle.sendfile of each request in the pool)."""
    return [t for t in (c.sendfile for c in list(server.application_instances)) if t is not None]


def test_file_wrapper_sendfile_byte_exact(big_file, sendfile_calls):
    path, data = big_file
    opened: list = []
    with serve(file_app(path, opened)) as (host, port, _server):
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=WAIT) as http:
            response = http.get("/")
            assert response.headers["content-length"] == str(len(data))
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()
            assert sendfile_calls  # zero-copy, not iterated
            offset = http.get("/", params={"offset": "1000"})
            assert offset.content == data[1000:]
            cut = http.get("/", params={"length": "5000"})
            assert cut.content == data[:5000]
            head = http.head("/")
            assert head.headers["content-length"] == str(len(data)) and head.content == b""
            assert http.get("/").status_code == 200  # the connection is still in step
    wait_until(lambda: all(f.closed for f in opened), what="every file to be closed")


def test_file_wrapper_sendfile_to_a_slow_reader(big_file, sendfile_calls):
    """The file is bigger than the socket buffers: sendfile waits for the socket to drain (EAGAIN) while
    the worker serves others."""
    path, data = big_file
    opened: list = []
    with serve(file_app(path, opened)) as (host, port, server):
        slow = slow_reader(host, port)
        wait_until(lambda: transfers(server), what="the transfer to start")
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=WAIT) as http:
            assert len(http.get("/", params={"length": "10"}).content) == 10  # served meanwhile
        response = slow.response()
        assert response.body == data
        assert slow.get("/", "").status == 200
        slow.close()
    wait_until(lambda: all(f.closed for f in opened), what="every file to be closed")


def test_file_wrapper_client_gone_mid_transfer(big_file, sendfile_calls):
    path, _data = big_file
    opened: list = []
    with serve(file_app(path, opened)) as (host, port, server):
        slow = slow_reader(host, port)
        wait_until(lambda: transfers(server), what="the transfer to start")
        slow.sock.recv(1000)
        slow.close()
        wait_until(lambda: not server.application_instances, what="the slot to be freed")
        wait_until(lambda: all(f.closed for f in opened), what="the file to be closed")
        wait_until(lambda: not server.connections, what="the connection to be closed")


def test_file_wrapper_server_stops_mid_transfer(big_file, sendfile_calls):
    """A stop closes a connection whose file transfer waits for a client that does not read: the client
    sees the end of the connection (the transfer's own handle on the socket does not keep it open)."""
    path, data = big_file
    opened: list = []
    with serve(file_app(path, opened)) as (host, port, server):
        slow = slow_reader(host, port)
        # (a sendfile transfer is a 6-tuple whose last item says it waits for the socket to drain)
        wait_until(lambda: any(len(t) == 6 and t[5] for t in transfers(server)), what="the transfer to wait")
    received = slow.read_to_eof()  # bounded by the socket timeout: a kept-open socket fails here
    assert len(received) < len(data)
    slow.close()
    wait_until(lambda: all(f.closed for f in opened), what="the file to be closed")
