"""WebSocket close handling and per-frame CPU and memory bounds, over raw frames against a real worker:
a close between fragments, tiny fragments, huge fragment counts, ping floods with and without reading."""

from __future__ import annotations

import queue
import select
import socket
import struct
import time

from corral.shared.settings import Settings
from corral.worker.serve.testing import call_in_loop, run_server
from corral.worker.websocket.connection import FREE_FRAGMENTS
from corral.worker.websocket.protocol import CONTROL_BURST, QUEUE_PAUSE, WRITE_PAUSE
from websocket_helpers import WAIT, RawClient, assert_still_serving, echo_app, masked


def test_a_close_between_fragments_gets_the_normal_closing_handshake():
    events: queue.Queue = queue.Queue()
    with run_server(echo_app(events)) as (host, port, _):
        client = RawClient(host, port)
        client.send(
            masked(0x1, b"hel", fin=False)
            + masked(0x8, struct.pack("!H", 1000) + b"bye")
            + masked(0x0, b"lo", fin=True)
        )  # the stray fragment after the close is ignored
        assert client.close_code() == (1000, "bye")  # RFC 6455 §5.5.1: the peer's code echoed
        assert client.at_eof()
        assert events.get(timeout=WAIT) == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}
        assert_still_serving(host, port)


def test_a_message_in_tiny_fragments_is_closed_with_1008():
    events: queue.Queue = queue.Queue()
    with run_server(echo_app(events)) as (host, port, _):
        client = RawClient(host, port)
        client.send(masked(0x2, b"x", fin=False))
        client.send(b"".join(masked(0x0, b"x", fin=False) for _ in range(FREE_FRAGMENTS + 200)))
        code, reason = client.close_code()
        assert code == 1008 and "fragments" in reason
        assert events.get(timeout=WAIT)["code"] == 1008
        assert_still_serving(host, port)


def test_a_message_in_many_reasonable_fragments_is_assembled():
    with run_server(echo_app()) as (host, port, _):
        client = RawClient(host, port)
        fragments = 3 * FREE_FRAGMENTS
        client.send(
            masked(0x2, b"a" * 100, fin=False)
            + b"".join(masked(0x0, b"a" * 100, fin=False) for _ in range(fragments - 2))
            + masked(0x0, b"a" * 100, fin=True)
        )
        opcode, fin, payload = client.frame()
        assert (opcode, fin, len(payload)) == (0x2, True, 100 * fragments)


def test_a_ping_flood_is_closed_with_1008():
    with run_server(echo_app()) as (host, port, _):
        client = RawClient(host, port)
        client.send(b"".join(masked(0x9, b"p") for _ in range(CONTROL_BURST * 3)))
        code, reason = client.close_code()  # pongs first, then the close
        assert (code, reason) == (1008, "too many control frames")
        assert_still_serving(host, port)


def test_pings_at_a_normal_rate_are_answered():
    with run_server(echo_app()) as (host, port, _):
        client = RawClient(host, port)
        for i in range(5):
            client.send(masked(0x9, b"ping %d" % i))
            assert client.frame() == (0xA, True, b"ping %d" % i)
        client.send(masked(0x1, b"after"))
        assert client.frame() == (0x1, True, b"after")


def test_a_peer_that_does_not_read_stops_being_read():
    with run_server(echo_app(), Settings(ws_write_limit=4096)) as (host, port, server):
        client = RawClient(host, port)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sock.setblocking(False)
        big = masked(0x2, b"z" * 60000)  # each echoed: the answers pile up unread

        def socket_state() -> tuple[int, int]:
            for ws in server.websockets.sockets:
                return ws.flow.read_paused, ws.transport.get_write_buffer_size()
            return 0, 0

        # Send until the server stops reading (write or queue backpressure). A first full send buffer is not
        # enough: on a busy machine it may only mean the server is slower than this client, and what it then
        # reads and echoes may fit in its socket's buffer without any backpressure. Whole frames only: the
        # rest of a partial send goes first.
        deadline = time.monotonic() + WAIT
        pending = b""
        sent = 0
        while not (state := call_in_loop(server, socket_state))[0]:
            assert time.monotonic() < deadline, "timed out waiting for the server to stop reading"
            pending = pending or big
            try:
                count = client.sock.send(pending)
            except BlockingIOError:
                select.select([], [client.sock], [], 0.05)
            else:
                pending = pending[count:]
                sent += count
        paused, buffered = state
        assert sent > len(big) and paused & ~(WRITE_PAUSE | QUEUE_PAUSE) == 0  # paused by what it was sent
        # Reading stopped, so memory stays bounded.
        assert buffered < 4096 + 2 * len(big)
        client.close()
        assert_still_serving(host, port)


def test_write_pause_is_a_reading_reason_of_its_own():
    # The bit must not collide with the other pause reasons (conn/flow.py's and websocket/protocol.py's).
    from corral.worker.conn.flow import BODY, CLOSING, PARKED, PIPELINE
    from corral.worker.websocket.protocol import HANDSHAKE_PAUSE, QUEUE_PAUSE

    reasons = [BODY, PIPELINE, PARKED, CLOSING, HANDSHAKE_PAUSE, QUEUE_PAUSE, WRITE_PAUSE]
    assert len(set(reasons)) == len(reasons) and all(r & (r - 1) == 0 for r in reasons)
