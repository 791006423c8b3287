"""Property-based fuzzing of the HTTP/2 state machine and HPACK decoder without sockets: hypothesis builds
frame sequences (every frame type, any flags and stream ids, valid and broken header blocks and payloads, cut
into random pieces) after a valid preface, and random header blocks for the decoder.

Properties: the machine raises nothing but ProtocolError (and then has queued a GOAWAY with its code) and
never reads on after it; every request it reports is on an odd stream, once; the decoder raises nothing but
its two errors; what the machine writes parses back into whole frames with `hyperframe`."""

from __future__ import annotations

import struct

from hpack import Encoder
from hyperframe.frame import Frame, GoAwayFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.worker.http2.fields import Decoder, HeaderListTooLarge, HpackError
from corral.worker.http2.frames import PREFACE, ProtocolError
from corral.worker.http2.machine import H2Machine
from corral.worker.http2.state import LocalSettings

_ENCODER_FIELDS = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"a"),
    (b"x-k", b"v"),
    (b"content-length", b"3"),
    (b"te", b"trailers"),
    (b"Upper", b"x"),
]


class Recorder:
    def __init__(self) -> None:
        self.requests: list[int] = []

    def on_request(self, stream, head, end_stream):
        assert stream.stream_id % 2 == 1 and stream.stream_id not in self.requests
        self.requests.append(stream.stream_id)

    def on_data(self, stream_id, data, flow_controlled, end_stream):
        assert flow_controlled >= len(data)

    def on_end(self, stream_id): ...

    def on_reset(self, stream_id, code, why): ...

    def on_window(self, stream_id): ...

    def on_settings(self, window_changed): ...

    def on_ping(self): ...

    def on_priority(self): ...

    def on_goaway(self, code): ...


def frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">LBL", len(payload) << 8 | ftype, flags, stream_id) + payload


@st.composite
def header_blocks(draw) -> bytes:
    fields = draw(st.lists(st.sampled_from(_ENCODER_FIELDS), max_size=6))
    block = Encoder().encode(fields, huffman=draw(st.booleans()))
    if draw(st.booleans()):
        block = draw(st.binary(max_size=20)) + block[: draw(st.integers(0, len(block)))]
    return block


@st.composite
def frames(draw) -> bytes:
    ftype = draw(st.integers(0, 11))
    flags = draw(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0x2D, 0xFF]))
    stream_id = draw(st.sampled_from([0, 1, 2, 3, 5, 7, 9, 2**31 - 1]))
    if ftype in (1, 9) and draw(st.booleans()):
        payload = draw(header_blocks())
    elif ftype == 4 and draw(st.booleans()):
        payload = b"".join(
            struct.pack(">HL", draw(st.integers(0, 9)), draw(st.sampled_from([0, 1, 2, 16384, 65535, 2**31, 2**24])))
            for _ in range(draw(st.integers(0, 3)))
        )
    else:
        payload = draw(st.binary(max_size=24))
    return frame(ftype, flags, stream_id, payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), max_size=12), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_the_machine_raises_only_protocol_errors(body, cuts):
    listener = Recorder()
    machine = H2Machine(listener, LocalSettings(4, 65535, 16384, 4096, 4096, 65535, 3))
    machine.initiate()
    data = PREFACE + frame(4, 0, 0, b"") + b"".join(body)
    pieces, start = [], 0
    for cut in cuts * (len(data) // sum(cuts) + 1):
        if start >= len(data):
            break
        pieces.append(data[start : start + cut])
        start += cut
    error = None
    for piece in pieces:
        try:
            machine.receive(piece)
        except ProtocolError as exc:
            error = exc
            break
    out = bytes(machine.take())
    parsed = []
    while out:
        parsed_frame, length = Frame.parse_frame_header(memoryview(out[:9]))
        parsed_frame.parse_body(memoryview(out[9 : 9 + length]))
        parsed.append(parsed_frame)
        out = out[9 + length :]
    if error is not None:
        assert machine.closed and isinstance(parsed[-1], GoAwayFrame) and parsed[-1].error_code == error.code
        before = len(listener.requests)
        machine.receive(frame(1, 5, 1001, b"\x82\x84\x86"))  # nothing is read after a connection error
        assert len(listener.requests) == before and not machine.out


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_the_decoder_raises_only_its_own_errors(block):
    decoder = Decoder(4096, 1024)
    try:
        decoder.decode(block)
    except (HpackError, HeaderListTooLarge):
        pass
