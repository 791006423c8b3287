"""The WebSocket protocol state apart from I/O (corral.worker.websocket.connection): handshake checks, frames in,
events out, bytes back."""

from __future__ import annotations

import os
import struct

import pytest

from corral.worker.websocket.connection import (
    CLOSE_EVENT,
    MESSAGE,
    PONG_EVENT,
    HandshakeFailure,
    WebSocketConnection,
    accept_key,
    accept_response,
    handshake,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HEADERS = [
    (b"host", b"x"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += (
        bytes([0x80 | n])
        if n < 126
        else bytes([0x80 | 126]) + struct.pack("!H", n)
        if n < 65536
        else bytes([0x80 | 127]) + struct.pack("!Q", n)
    )
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_accept_key_is_the_rfc_example():
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


def test_handshake_ok_with_subprotocols_and_deflate():
    headers = [
        *HEADERS,
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
    ]
    accept, protocols, extension, extensions = handshake(b"GET", "1.1", headers, True)
    assert accept == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert protocols == ["chat", "superchat"]
    assert extension.startswith(b"permessage-deflate") and len(extensions) == 1
    assert handshake(b"GET", "1.1", headers, False)[2:] == (b"", [])
    response = accept_response(accept, b"server: corral\r\n", b"chat", extension, b"x-a: b\r\n")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"sec-websocket-protocol: chat\r\n" in response and response.endswith(b"x-a: b\r\n\r\n")


@pytest.mark.parametrize(
    "change, status",
    [
        (lambda h: [(n, b"8" if n == b"sec-websocket-version" else v) for n, v in h], 426),
        (lambda h: [(n, v) for n, v in h if n != b"sec-websocket-version"], 426),
        (lambda h: [(n, v) for n, v in h if n != b"sec-websocket-key"], 400),
        (lambda h: [(n, b"AAAA" if n == b"sec-websocket-key" else v) for n, v in h], 400),
        (lambda h: [(n, b"keep-alive" if n == b"connection" else v) for n, v in h], 400),
    ],
)
def test_handshake_refusals(change, status):
    with pytest.raises(HandshakeFailure) as info:
        handshake(b"GET", "1.1", change(HEADERS), True)
    assert info.value.status == status


def test_handshake_needs_get_and_http11():
    with pytest.raises(HandshakeFailure):
        handshake(b"POST", "1.1", HEADERS, True)
    with pytest.raises(HandshakeFailure):
        handshake(b"GET", "1.0", HEADERS, True)


def test_fast_path_messages_and_split_frames():
    conn = WebSocketConnection(1 << 20)
    data = masked(0x1, "héllo".encode()) + masked(0x2, b"\x00" * 200) + masked(0x2, b"x" * 70000)
    assert conn.receive_data(data[:3]) == []
    assert conn.receive_data(data[3:12]) == [(MESSAGE, "héllo")]  # 2 + 4 + 6 bytes
    events = conn.receive_data(data[12:])
    assert events == [(MESSAGE, b"\x00" * 200), (MESSAGE, b"x" * 70000)]
    assert conn.data_to_send() == b""


def test_control_frames_and_fragments_go_through_websockets():
    conn = WebSocketConnection(1 << 20)
    events = conn.receive_data(
        masked(0x2, b"ab", fin=False) + masked(0x9, b"hi") + masked(0x0, b"cd") + masked(0xA, b"pong")
    )
    assert events == [(MESSAGE, b"abcd"), (PONG_EVENT, b"pong")]
    assert conn.data_to_send() == b"\x8a\x02hi"
    events = conn.receive_data(masked(0x8, struct.pack("!H", 4000) + b"bye"))
    assert events == [(CLOSE_EVENT, 4000, "bye")]
    assert conn.data_to_send() == b"\x88\x05\x0f\xa0bye" and conn.eof


def test_send_message_framing():
    conn = WebSocketConnection(1 << 20)
    assert conn.send_message(b"hi", True) == b"\x81\x02hi"
    assert conn.send_message(b"x" * 200, False) == b"\x82\x7e\x00\xc8" + b"x" * 200
    head, payload = conn.send_message(b"y" * 70000, False)
    assert head == b"\x82\x7f" + (70000).to_bytes(8, "big") and payload == b"y" * 70000


def test_close_from_the_server_and_reply():
    conn = WebSocketConnection(1 << 20)
    assert conn.send_close(1001, "going away") == b"\x88\x0c\x03\xe9going away"
    assert conn.closing and conn.send_close(1000) == b""
    events = conn.receive_data(masked(0x8, struct.pack("!H", 1001)))
    assert events == [(CLOSE_EVENT, 1001, "")] and conn.eof
    with pytest.raises(ValueError):
        WebSocketConnection(1 << 20).send_close(1005)


def test_limits_and_errors():
    conn = WebSocketConnection(100)
    events = conn.receive_data(masked(0x2, b"x" * 101))
    assert events[-1][:2] == (CLOSE_EVENT, 1009) and conn.eof
    assert conn.data_to_send().startswith(b"\x88")
    conn = WebSocketConnection(100)
    assert conn.receive_data(masked(0x1, b"\xc3"))[-1][:2] == (CLOSE_EVENT, 1007)
    conn = WebSocketConnection(100)
    assert conn.receive_data(b"\x83\x80abcd")[-1][:2] == (CLOSE_EVENT, 1002)
    conn = WebSocketConnection(100)
    assert conn.receive_data(b"\x81\x02hi")[-1][:2] == (CLOSE_EVENT, 1002)  # unmasked
    assert conn.receive_data(masked(0x1, b"more")) == []  # nothing is read after a failure
