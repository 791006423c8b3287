"""HTTP/2 on an in-process worker (h2c prior knowledge, a raw `h2` client on a real socket): requests and
scope, pool parking, flow control both ways, trailers, graceful GOAWAY, and one test per defence - each flood
ends its connection with GOAWAY while another connection is still served and memory stays bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time

import h2.errors
import psutil
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, SettingsFrame

from corral.shared.settings import Settings
from corral.worker.serve.testing import call_in_loop, run_server
from h2_helpers import WAIT, H2Client
from worker_http_helpers import wait_until

ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
INITIAL_WINDOW_SIZE = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
RSS_CAP = 200 * 1024 * 1024  # growth allowed for the whole test process during a flood: generous


def make_app(release: threading.Event | None = None, seen: list | None = None):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if seen is not None:
            seen.append(scope)
        if path == "/wait":
            while not release.is_set():  # released by the test thread
                await asyncio.sleep(0.01)
        body = b""
        if path in ("/echo", "/slow-reader"):
            if path == "/slow-reader":
                while not release.is_set():
                    await asyncio.sleep(0.01)
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"%d" % len(body)})
            return
        if path == "/big":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x/y")]})
            for _ in range(8):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/trailers":
            await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
            await send({"type": "http.response.body", "body": b"data"})
            await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})
            return
        if path == "/raise":
            raise RuntimeError("boom")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"Content-Type", b"text/plain"), (b"Connection", b"keep-alive")],
            }
        )
        await send({"type": "http.response.body", "body": b"hello " + path.encode()})

    return app


def served(port: int) -> bool:
    with H2Client(port) as other:
        return other.get("/other").status == 200


def raw_answer(port: int, opening: bytes) -> bytes:
    """Send `opening` on a fresh connection and read everything until the server closes it (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(opening)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def parse_frames(data: bytes) -> list:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def data_frame_sizes(client: H2Client, stream_id: int) -> list[int]:
    """Read the response of `stream_id` to its end; the sizes of its DATA frames (each acknowledged by the
    client as it comes: with a window of 1 byte, a WINDOW_UPDATE of 1 byte each)."""
    sizes: list[int] = []
    reply = client.replies[stream_id]
    deadline = time.monotonic() + WAIT
    while not (reply.ended or reply.reset is not None or client.goaway is not None or client.closed):
        assert time.monotonic() < deadline, f"timed out waiting, after DATA frames of {sizes}"
        sizes.extend(
            len(event.data)
            for event in client.read()
            if isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id
        )
    return sizes


def test_requests_get_an_http2_scope_and_answers():
    seen: list = []
    with run_server(make_app(seen=seen), Settings()) as (_host, port, _server):
        with H2Client(port) as client:
            reply = client.get("/a%20b?x=1", headers=[(b"x-custom", b"v")])
            assert reply.status == 200 and reply.body == b"hello /a b"
            names = [name for name, _ in reply.headers]
            assert b"connection" not in names  # connection-specific headers are dropped (RFC 9113 §8.2.2)
            assert (b"content-type", b"text/plain") in reply.headers and b"date" in names
            echoed = client.get("/echo", method="POST", body=b"z" * 100_000)
            assert echoed.body == b"100000"
            raised = client.get("/raise")
            assert raised.status == 500
            trailers = client.get("/trailers")
            assert trailers.body == b"data" and trailers.trailers == [(b"x-checksum", b"abc")]
    scope = seen[0]
    assert scope["http_version"] == "2" and scope["method"] == "GET" and scope["scheme"] == "http"
    assert scope["path"] == "/a b" and scope["raw_path"] == b"/a%20b" and scope["query_string"] == b"x=1"
    assert (b"host", b"test") in scope["headers"] and (b"x-custom", b"v") in scope["headers"]
    assert not any(name.startswith(b":") for name, _ in scope["headers"])
    assert scope["extensions"]["http.response.trailers"] == {}
    assert scope["client"][0] == "127.0.0.1" and scope["server"][1] == port


def test_a_fragment_in_path_reaches_neither_path_nor_query():
    """A client must not send one (RFC 9110 §4.2.4); a server must not pass it on as path or query."""
    seen: list = []
    with run_server(make_app(seen=seen), Settings()) as (_host, port, _server):
        with H2Client(port) as client:
            assert client.get("/p?q=1#frag").status == 200
            assert client.get("/r#x?y").status == 200
    assert (seen[0]["path"], seen[0]["raw_path"], seen[0]["query_string"]) == ("/p", b"/p", b"q=1")
    assert (seen[1]["path"], seen[1]["raw_path"], seen[1]["query_string"]) == ("/r", b"/r", b"")


def test_http1_still_served_and_http_1_turns_http2_off():
    import httpx

    bad_preface = b"INVALID CONNECTION PREFACE\r\n\r\n"  # h2spec's http2/3.5/2
    with run_server(make_app(), Settings()) as (_host, port, _server):
        assert httpx.get(f"http://127.0.0.1:{port}/x", timeout=WAIT).text == "hello /x"
        # 'auto' serves HTTP/1.1 too: bytes that are neither an HTTP/2 preface nor a request are a bad request.
        assert raw_answer(port, bad_preface).startswith(b"HTTP/1.1 400 ")
    with run_server(make_app(), Settings(http="1")) as (_host, port, _server):
        with H2Client(port, handshake=False) as client:
            client.until_closed()  # the preface is not HTTP/1.1: 505 and close
        assert httpx.get(f"http://127.0.0.1:{port}/x", timeout=WAIT).text == "hello /x"


def test_http_2_on_cleartext_is_prior_knowledge_only_and_a_bad_preface_gets_goaway(caplog):
    caplog.set_level(logging.INFO, logger="corral.error")
    with run_server(make_app(), Settings(http="2")) as (_host, port, _server):
        # Not the preface, HTTP/1.1 or not (an Upgrade: h2c too): what an HTTP/2 endpoint answers an invalid
        # preface with (RFC 9113 §3.4) - its SETTINGS, GOAWAY PROTOCOL_ERROR, close - and no HTTP/1.1 at all.
        for opening in (
            b"INVALID CONNECTION PREFACE\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        ):
            frames = parse_frames(raw_answer(port, opening))
            assert [type(frame) for frame in frames] == [SettingsFrame, GoAwayFrame], frames
            assert frames[1].error_code == PROTOCOL_ERROR and frames[1].last_stream_id == 0
        assert "Not an HTTP/2 connection preface from 127.0.0.1" in caplog.text
        assert served(port)  # the preface: served


def test_a_peer_protocol_error_is_logged_with_what_was_wrong(caplog):
    caplog.set_level(logging.INFO, logger="corral.error")
    with run_server(make_app(), Settings()) as (_host, port, _server):
        with H2Client(port) as client:
            stream_id = client.request("/x")
            assert client.response(stream_id).body == b"hello /x"
            frame = HeadersFrame(stream_id, flags=["END_HEADERS", "END_STREAM"])  # a closed stream's again
            frame.data = client.conn.encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")])
            client.sock.sendall(frame.serialize())
            client.until_closed()
            assert client.goaway is not None and client.goaway.error_code == h2.errors.ErrorCodes.STREAM_CLOSED
        with H2Client(port) as client:
            frame = ContinuationFrame(client.request("/x", end=False), flags=["END_HEADERS"])  # no header block open
            client.sock.sendall(frame.serialize())
            client.until_closed()
            assert client.goaway is not None and client.goaway.error_code == PROTOCOL_ERROR
        assert served(port)
    assert (
        f"HTTP/2 protocol error from 127.0.0.1: a frame on stream {stream_id}, which is closed (STREAM_CLOSED)"
        in caplog.text
    )
    assert (
        "HTTP/2 protocol error from 127.0.0.1: a CONTINUATION frame on stream 1 with no header "
        "block to continue (PROTOCOL_ERROR)"
    ) in caplog.text


def test_streams_beyond_the_pool_are_parked_and_all_served():
    release = threading.Event()
    with run_server(make_app(release), Settings(max_applications=2)) as (_host, port, server):
        # Sent before the server's SETTINGS arrive (as clients do): more streams than the pool has room for.
        with H2Client(port, handshake=False) as client:
            ids = [client.request("/wait") for _ in range(12)]
            wait_until(lambda: call_in_loop(server, lambda: len(server.parked)) == 10, timeout=WAIT)
            assert call_in_loop(server, lambda: len(server.application_instances)) == 2
            release.set()
            assert [client.response(i).status for i in ids] == [200] * 12


def test_the_body_is_acknowledged_only_as_the_application_reads_it():
    release = threading.Event()
    with run_server(make_app(release), Settings(http2_initial_window_size=16384)) as (_host, port, server):
        with H2Client(port) as client:
            stream_id = client.request("/slow-reader", method="POST", end=False)
            client.conn.send_data(stream_id, b"y" * 16384)  # the whole stream window
            client.flush()

            def buffered() -> int:
                h2 = next(p for p in server.connections if type(p).__name__ == "H2Protocol")
                stream = h2.streams.get(stream_id)
                return len(stream.body) if stream is not None else -1

            wait_until(lambda: call_in_loop(server, buffered) == 16384, timeout=WAIT)
            assert client.conn.local_flow_control_window(stream_id) == 0  # no window given back yet
            release.set()
            client.until(lambda: client.conn.local_flow_control_window(stream_id) > 0)
            client.conn.send_data(stream_id, b"y" * 1000, end_stream=True)
            client.flush()
            assert client.response(stream_id).body == b"17384"


def test_a_response_follows_the_client_window_and_a_shut_window_resets_the_stream():
    with run_server(make_app(), Settings(http2_send_timeout=0.5)) as (_host, port, _server):
        with H2Client(port) as client:
            assert len(client.get("/big").body) == 8 * 65536  # through many WINDOW_UPDATEs
        with H2Client(port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}) as stingy:
            reply = stingy.response(stingy.request("/big"))
            assert reply.reset == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR and reply.body == b""
        assert served(port)


def test_a_window_of_one_byte_gets_one_byte_frames_at_once():
    # RFC 9113 §6.9.1: DATA is cut to the window the client gave, however small; the response never waits for
    # a bigger one (the send timeout is far beyond the client's wait here: waiting would fail the test).
    with run_server(make_app(), Settings(http2_send_timeout=120)) as (_host, port, _server):
        with H2Client(port, settings={INITIAL_WINDOW_SIZE: 1}) as client:
            stream_id = client.request("/x")
            assert data_frame_sizes(client, stream_id) == [1] * len(b"hello /x")
            assert client.response(stream_id).body == b"hello /x"
        with H2Client(port, settings={INITIAL_WINDOW_SIZE: 0}) as client:
            stream_id = client.request("/x")
            client.until(lambda: client.replies[stream_id].status == 200)  # the head, then nothing: a shut window
            client.conn.increment_flow_control_window(3, stream_id)
            client.flush()
            assert data_frame_sizes(client, stream_id)[0] == 3  # what was granted, at once


def test_a_window_opened_byte_by_byte_is_a_flood(caplog):
    # A client reopening a shut window a few bytes at a time makes the server send a frame per opening:
    # counted like PINGs, GOAWAY ENHANCE_YOUR_CALM past the bound - after it got the bytes it asked for.
    with run_server(make_app(), Settings(http2_max_control_frames=20)) as (_host, port, _server):
        with H2Client(port, settings={INITIAL_WINDOW_SIZE: 1}) as client:  # the stream's window
            stream_id = client.request("/big")
            sizes = data_frame_sizes(client, stream_id)
            assert client.goaway is not None and client.goaway.error_code == ENHANCE_YOUR_CALM
            assert len(sizes) > 20 and set(sizes) == {1}
        with H2Client(port, settings={INITIAL_WINDOW_SIZE: 1 << 20}, ack=False) as client:  # the connection's
            reply = client.replies[client.request("/big")]
            client.until(lambda: len(reply.body) == 65535)  # the connection's first window, used up
            while client.goaway is None:
                client.conn.increment_flow_control_window(1)
                client.flush()
                before = len(reply.body)
                client.until(lambda: len(reply.body) > before or client.goaway is not None)
            assert client.goaway.error_code == ENHANCE_YOUR_CALM and len(reply.body) >= 65535 + 20
        with H2Client(port, settings={INITIAL_WINDOW_SIZE: 4096}) as client:
            assert len(client.get("/big").body) == 8 * 65536  # a small window, not a trickle: served
        assert served(port)
    assert "more than 20 WINDOW_UPDATE frames that opened a shut window by under 1 KiB in a second" in caplog.text


def test_stop_sends_goaway_and_finishes_the_streams_in_flight():
    release = threading.Event()
    with run_server(make_app(release), Settings()) as (_host, port, server):
        with H2Client(port) as client:
            first = client.request("/wait")
            wait_until(lambda: call_in_loop(server, lambda: len(server.application_instances)) == 1, timeout=WAIT)
            call_in_loop(server, lambda: server.request_stop(True))
            client.until(lambda: client.goaway is not None)
            assert client.goaway.last_stream_id == first and client.goaway.error_code == 0
            release.set()
            assert client.response(first).status == 200
            client.until_closed()


# ---------------------------------------------------------------------- defences


def flood_closes_with_goaway(port: int, send_flood) -> None:
    before = psutil.Process(os.getpid()).memory_info().rss
    with H2Client(port) as client:
        try:
            send_flood(client)
            client.until_closed()
        except (BrokenPipeError, ConnectionResetError):
            # Closed on us while the flood was still being sent: the kernel may then drop the unread GOAWAY.
            reset = True
        else:
            reset = False
        assert reset or (client.goaway is not None and client.goaway.error_code == ENHANCE_YOUR_CALM)
    assert served(port)
    assert psutil.Process(os.getpid()).memory_info().rss - before < RSS_CAP


def test_rapid_reset_is_stopped(caplog):
    def flood(client: H2Client) -> None:
        for _ in range(400):
            stream_id = client.request("/")
            client.conn.reset_stream(stream_id)
        client.flush()

    with run_server(make_app(), Settings(http2_max_resets=50)) as (_host, port, _server):
        flood_closes_with_goaway(port, flood)
    assert "more than 50 RST_STREAM frames in a second" in caplog.text


def test_ping_settings_and_empty_data_floods_are_stopped(caplog):
    def pings(client: H2Client) -> None:
        for i in range(3000):
            client.conn.ping(b"%08d" % i)
        client.flush()

    def settings(client: H2Client) -> None:
        for _ in range(3000):
            client.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 10})
        client.flush()

    def empty_data(client: H2Client) -> None:
        stream_id = client.request("/echo", method="POST", end=False)
        for _ in range(3000):
            client.conn.send_data(stream_id, b"")
        client.flush()

    with run_server(make_app(), Settings(http2_max_control_frames=500)) as (_host, port, _server):
        for flood, kind in ((pings, "PING"), (settings, "SETTINGS"), (empty_data, "empty DATA")):
            flood_closes_with_goaway(port, flood)
            assert f"more than 500 {kind} frames in a second" in caplog.text


def test_a_continuation_flood_and_an_oversized_header_list_end_the_connection(caplog):
    caplog.set_level(logging.INFO, logger="corral.error")
    with run_server(make_app(), Settings(http2_max_header_list_size=8192)) as (_host, port, _server):
        with H2Client(port) as client:
            block = client.conn.encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")])
            headers = HeadersFrame(1)
            headers.data = block
            frames = [headers.serialize()]
            for _ in range(200):  # never END_HEADERS: the server must not buffer them all
                continuation = ContinuationFrame(1)
                continuation.data = b"\x00" * 1000
                frames.append(continuation.serialize())
            try:
                client.sock.sendall(b"".join(frames))
                client.until_closed()
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while the frames were still being sent
            assert "a header block in more than 16 CONTINUATION frames (ENHANCE_YOUR_CALM)" in caplog.text
        with H2Client(port) as client:
            client.request("/", headers=[(b"x-big", b"v" * 20000)])  # within 16 frames, over the list size
            client.until_closed()
            assert client.goaway is not None and client.goaway.error_code != 0
            assert "header list" in caplog.text.lower() or "header block" in caplog.text.lower()
        assert served(port)


def test_an_idle_connection_is_closed_by_the_keepalive_timer():
    with run_server(make_app(), Settings(keepalive=0.2)) as (_host, port, _server):
        with H2Client(port) as client:
            assert client.get("/").status == 200
            client.until_closed()
            assert client.goaway is not None and client.goaway.error_code == 0


def test_http2_requests_reach_the_access_log_and_the_metrics():
    logged: list = []

    def access_log(scope, status, nbytes, duration, headers):
        logged.append((scope["http_version"], scope["path"], status, nbytes))

    with run_server(make_app(), Settings(), access_log=access_log) as (_host, port, server):
        with H2Client(port) as client:
            assert client.get("/x").status == 200 and client.get("/raise").status == 500
        wait_until(lambda: len(logged) == 2, timeout=WAIT)
    assert logged == [("2", "/x", 200, 8), ("2", "/raise", 500, 0)]
    # With metrics on, the server's metered protocol class counts HTTP/2 responses as HTTP/1.1 ones.
    with run_server(make_app(), Settings(metrics_bind="127.0.0.1:9"), access_log=access_log) as (_host, port, server):
        with H2Client(port) as client:
            assert client.get("/x").status == 200
        wait_until(lambda: call_in_loop(server, lambda: sum(server.counters.requests)) == 1, timeout=WAIT)
        assert call_in_loop(server, lambda: server.counters.bytes_out) == 8


def test_the_health_path_is_answered_over_http2():
    seen: list = []
    with run_server(make_app(seen=seen), Settings(health_path="/healthz")) as (_host, port, _server):
        with H2Client(port) as client:
            reply = client.get("/healthz")
            assert reply.status == 200 and reply.body == b"OK\n"
    assert seen == []  # the application never saw it


def test_h2c_behind_the_proxy_protocol_gets_the_headers_client():
    seen: list = []
    with run_server(make_app(seen=seen), Settings(proxy_protocol=True)) as (_host, port, _server):
        header = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 8000\r\n"
        with H2Client(port, prefix=header) as client:
            assert client.get("/").status == 200
    assert seen[0]["client"] == ("198.51.100.7", 40000) and seen[0]["http_version"] == "2"
    assert seen[0]["extensions"]["proxy_protocol"]["version"] == 1


def test_a_client_that_does_not_read_is_dropped_at_the_write_buffer_bound(caplog):
    settings = Settings(http2_max_control_frames=10**6, http2_max_write_buffer=16384)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # inherited by accepted sockets (Linux):
    listener.bind(("127.0.0.1", 0))  # the kernel holds little, the transport's buffer grows
    listener.listen(16)
    with run_server(make_app(), settings, sock=listener) as (_host, port, _server):
        with H2Client(port, rcvbuf=4096) as client:
            try:
                for batch in range(200):  # PINGs the server must answer, never read by the client
                    for i in range(500):
                        client.conn.ping(b"%08d" % (batch * 500 + i))
                    client.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # dropped while sending: what the test waits for
            client.until_closed()
        assert served(port)
    assert "does not read what it asks for: dropping the connection" in caplog.text


def test_proxy_headers_apply_to_a_stream_that_has_them_and_only_to_it():
    """A trusted peer's X-Forwarded-For / -Proto reach the scope of the stream that carries them; a stream
    without a proxy header keeps the connection's own client and scheme."""
    from corral.worker.edge.proxy_headers import make_proxy_headers

    seen: list = []
    settings = Settings(forwarded_allow_ips="127.0.0.1")
    with run_server(make_app(seen=seen), settings, proxy=make_proxy_headers(settings)) as (_host, port, _server):
        with H2Client(port) as client:
            forwarded = [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")]
            assert client.get("/a", headers=forwarded).status == 200
            assert client.get("/b").status == 200
    by_path = {scope["path"]: scope for scope in seen}
    assert by_path["/a"]["client"][0] == "203.0.113.9" and by_path["/a"]["scheme"] == "https"
    assert by_path["/b"]["client"][0] == "127.0.0.1" and by_path["/b"]["scheme"] == "http"
