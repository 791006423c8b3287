"""The HTTP/2 connection state machine apart from I/O (corral.worker.http2.machine), against the `h2` library as
the client: what a client's bytes make the machine tell its listener, what it answers, and the errors each
broken frame gets - stream errors as RST_STREAM, connection errors as GOAWAY and ProtocolError. The same
checks over a real socket, and h2spec, are in tests/worker/test_h2.py and tests/e2e/test_h2spec.py."""

from __future__ import annotations

import base64
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from corral.worker.http2.fields import response_block
from corral.worker.http2.frames import ErrorCode, ProtocolError
from corral.worker.http2.machine import H2Machine
from corral.worker.http2.state import LocalSettings

REQUEST = [(b":method", b"GET"), (b":path", b"/x?y=1"), (b":scheme", b"http"), (b":authority", b"example")]


class Recorder:
    """A listener that writes down what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_request(self, stream, head, end_stream):
        self.calls.append(("request", stream.stream_id, head, end_stream))

    def on_data(self, stream_id, data, flow_controlled, end_stream):
        self.calls.append(("data", stream_id, data, flow_controlled, end_stream))

    def on_end(self, stream_id):
        self.calls.append(("end", stream_id))

    def on_reset(self, stream_id, code, why):
        self.calls.append(("reset", stream_id, code, why))

    def on_window(self, stream_id):
        self.calls.append(("window", stream_id))

    def on_settings(self, window_changed):
        self.calls.append(("settings", window_changed))

    def on_ping(self):
        self.calls.append(("ping",))

    def on_priority(self):
        self.calls.append(("priority",))

    def on_goaway(self, code):
        self.calls.append(("goaway", code))

    def kinds(self) -> list[str]:
        return [call[0] for call in self.calls]


def make(
    max_streams: int = 100,
    window: int = 65535,
    connection_window: int = 65535,
    continuations: int = 16,
    header_list: int = 65536,
) -> tuple[H2Machine, Recorder]:
    listener = Recorder()
    machine = H2Machine(
        listener, LocalSettings(max_streams, window, 16384, header_list, 4096, connection_window, continuations)
    )
    machine.initiate()
    return machine, listener


def client(settings: dict | None = None, validate: bool = True) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
        )
    )
    if settings:
        conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    conn.initiate_connection()
    return conn


def exchange(machine: H2Machine, conn: h2.connection.H2Connection) -> list:
    """The client's pending bytes to the machine, the machine's answer back to the client: its events."""
    machine.receive(conn.data_to_send())
    return conn.receive_data(bytes(machine.take()))


def frames(data: bytes) -> list:
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


def opened(settings: dict | None = None, **options) -> tuple[H2Machine, Recorder, h2.connection.H2Connection]:
    machine, listener = make(**options)
    conn = client(settings)
    exchange(machine, conn)
    listener.calls.clear()
    return machine, listener, conn


def test_a_request_and_its_response_round_trip():
    machine, listener = make(connection_window=16 * 65535)
    conn = client()
    events = exchange(machine, conn)
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
    assert conn.outbound_flow_control_window == 16 * 65535  # the connection window beyond the default
    assert listener.calls == [("settings", False)]
    conn.send_headers(1, REQUEST, end_stream=True)
    exchange(machine, conn)
    kind, stream_id, head, end = listener.calls[-1]
    assert (kind, stream_id, end) == ("request", 1, True)
    assert head.method == b"GET" and head.path == b"/x?y=1" and head.headers == ((b"host", b"example"),)
    stream = machine.streams[1]
    assert not stream.remote_open and stream.local_open
    machine.send_headers(stream, response_block(200, [(b"content-type", b"text/plain")], b"server: corral\r\n"), False)
    machine.send_data(stream, b"hello", True)
    events = conn.receive_data(bytes(machine.take()))
    assert [type(e) for e in events] == [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.StreamEnded]
    assert events[0].headers == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"server", b"corral")]
    assert events[1].data == b"hello"
    assert stream.closed and 1 not in machine.streams


def test_bytes_may_come_one_at_a_time():
    machine, listener = make()
    conn = client()
    conn.send_headers(1, REQUEST, end_stream=False)
    conn.send_data(1, b"body", end_stream=True)
    for byte in conn.data_to_send():
        machine.receive(bytes((byte,)))
    assert listener.kinds() == ["settings", "request", "data"]
    assert listener.calls[-1] == ("data", 1, b"body", 4, True)


def test_a_repeated_block_keeps_its_head_until_the_table_changes():
    machine, listener, conn = opened()
    heads = []
    for stream_id in (1, 3, 5):
        conn.send_headers(stream_id, REQUEST, end_stream=True)
        exchange(machine, conn)
        heads.append(listener.calls[-1][2])
    assert heads[0] is not heads[1]  # the first block filled the client's table: its block differs
    assert heads[1] is heads[2]  # the same bytes, the same table: validated once
    conn.send_headers(7, [*REQUEST, (b"x-new", b"1")], end_stream=True)  # an insertion
    exchange(machine, conn)
    assert not machine.heads
    conn.send_headers(9, REQUEST, end_stream=True)
    exchange(machine, conn)
    assert listener.calls[-1][2] is not heads[2] and listener.calls[-1][2].path == b"/x?y=1"


def test_request_body_windows_come_back_as_the_application_reads():
    machine, _listener, conn = opened()
    conn.send_headers(1, REQUEST, end_stream=False)
    conn.send_data(1, b"a" * 16384)
    conn.send_data(1, b"b" * 16384)
    exchange(machine, conn)
    assert conn.local_flow_control_window(1) == 65535 - 32768
    machine.acknowledge(1, 16384)  # a quarter of the window: nothing yet
    assert not machine.out
    machine.acknowledge(1, 16384)  # half: both windows come back
    conn.receive_data(bytes(machine.take()))
    assert conn.local_flow_control_window(1) == 65535


def test_response_data_follows_the_client_windows():
    machine, listener, conn = opened(settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    conn.send_headers(1, REQUEST, end_stream=True)
    exchange(machine, conn)
    stream = machine.streams[1]
    assert stream.send_window == 10
    conn.increment_flow_control_window(5, 1)
    exchange(machine, conn)
    assert stream.send_window == 15 and listener.calls[-1] == ("window", 1)
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    exchange(machine, conn)
    assert stream.send_window == 5 and ("settings", True) in listener.calls


def test_malformed_requests_are_stream_errors_and_the_connection_goes_on():
    conn = client(validate=False)
    machine, listener = make()
    exchange(machine, conn)
    conn.send_headers(1, [*REQUEST, (b"X-Upper", b"v")], end_stream=True)
    machine.receive(conn.data_to_send())
    (reset,) = [f for f in frames(bytes(machine.take())) if isinstance(f, RstStreamFrame)]
    assert reset.stream_id == 1 and reset.error_code == ErrorCode.PROTOCOL_ERROR
    assert listener.calls[-1][:3] == ("reset", 1, ErrorCode.PROTOCOL_ERROR) and "uppercase" in listener.calls[-1][3]
    conn.send_headers(3, REQUEST, end_stream=True)
    machine.receive(conn.data_to_send())
    assert listener.calls[-1][:2] == ("request", 3)


def test_data_after_end_stream_is_a_stream_error_and_data_after_our_reset_is_ignored():
    machine, listener, conn = opened()
    conn.send_headers(1, REQUEST, end_stream=True)
    exchange(machine, conn)
    frame = DataFrame(1, b"late")
    machine.receive(frame.serialize())
    (reset,) = frames(bytes(machine.take()))
    assert isinstance(reset, RstStreamFrame) and reset.error_code == ErrorCode.STREAM_CLOSED
    conn.send_headers(3, REQUEST, end_stream=False)
    exchange(machine, conn)
    machine.reset(machine.streams[3], ErrorCode.INTERNAL_ERROR)
    machine.take()
    machine.receive(DataFrame(3, b"in flight").serialize())
    assert not machine.out and listener.calls[-1][:2] == ("request", 3)


def raw(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as bytes, whatever hyperframe allows."""
    return struct.pack(">LBL", len(payload) << 8 | ftype, flags, stream_id) + payload


def goaway_of(machine: H2Machine, data: bytes) -> tuple[ProtocolError, GoAwayFrame]:
    with pytest.raises(ProtocolError) as caught:
        machine.receive(data)
    goaway = frames(bytes(machine.take()))[-1]
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == caught.value.code
    assert machine.closed
    return caught.value, goaway


def headers_frame(stream_id: int, conn: h2.connection.H2Connection, **kwargs) -> HeadersFrame:
    frame = HeadersFrame(stream_id, **kwargs)
    frame.data = conn.encoder.encode(REQUEST)
    return frame


@pytest.mark.parametrize(
    "make_frames, code, why",
    [
        (lambda c: [headers_frame(2, c, flags=["END_HEADERS"])], ErrorCode.PROTOCOL_ERROR, "even"),
        (lambda c: [raw(0, 0, 0, b"x")], ErrorCode.PROTOCOL_ERROR, "DATA frame on stream 0"),
        (lambda c: [DataFrame(5, b"x")], ErrorCode.PROTOCOL_ERROR, "never opened"),
        (lambda c: [WindowUpdateFrame(0, 0)], ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0"),
        (lambda c: [WindowUpdateFrame(0, 2**31 - 1)], ErrorCode.FLOW_CONTROL_ERROR, "over 2^31-1"),
        (lambda c: [raw(6, 0, 1, b"12345678")], ErrorCode.PROTOCOL_ERROR, "PING frame on stream 1"),
        (lambda c: [raw(6, 0, 0, b"1234")], ErrorCode.FRAME_SIZE_ERROR, "PING frame of 4 bytes"),
        (lambda c: [raw(5, 4, 1, b"\0\0\0\2")], ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE"),
        (
            lambda c: [SettingsFrame(0, {h2.settings.SettingCodes.MAX_FRAME_SIZE: 100})],
            ErrorCode.PROTOCOL_ERROR,
            "SETTINGS_MAX_FRAME_SIZE",
        ),
        (
            lambda c: [SettingsFrame(0, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31})],
            ErrorCode.FLOW_CONTROL_ERROR,
            "INITIAL_WINDOW_SIZE",
        ),
        (
            lambda c: [headers_frame(1, c), raw(6, 0, 0, b"12345678")],
            ErrorCode.PROTOCOL_ERROR,
            "inside the header block",
        ),
        (lambda c: [ContinuationFrame(1)], ErrorCode.PROTOCOL_ERROR, "no header block"),
        (
            lambda c: [headers_frame(1, c)] + [ContinuationFrame(1) for _ in range(17)],
            ErrorCode.ENHANCE_YOUR_CALM,
            "more than 16 CONTINUATION",
        ),
        (lambda c: [RstStreamFrame(7)], ErrorCode.PROTOCOL_ERROR, "never opened"),
    ],
)
def test_connection_errors_end_with_goaway(make_frames, code, why):
    machine, _listener, conn = opened()
    error, _goaway = goaway_of(machine, b"".join(f if type(f) is bytes else f.serialize() for f in make_frames(conn)))
    assert error.code == code and why in str(error), str(error)
    assert str(error).endswith(f"({code.name})")


def test_a_frame_over_our_max_frame_size_and_a_bad_preface():
    machine, _listener, _conn = opened()
    error, _ = goaway_of(machine, DataFrame(1, b"x" * 16385).serialize())
    assert error.code == ErrorCode.FRAME_SIZE_ERROR
    machine, _listener = make()
    machine.take()
    error, goaway = goaway_of(machine, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert error.code == ErrorCode.PROTOCOL_ERROR and goaway.last_stream_id == 0


def test_a_headers_frame_on_a_closed_stream_is_a_connection_error():
    machine, _listener, conn = opened()
    conn.send_headers(1, REQUEST, end_stream=True)
    exchange(machine, conn)
    machine.send_data(machine.streams[1], b"", True)  # the response: stream 1 closed
    machine.take()
    error, goaway = goaway_of(machine, headers_frame(1, conn, flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert error.code == ErrorCode.STREAM_CLOSED and goaway.last_stream_id == 1


def test_streams_over_the_bound_are_refused_and_goaway_refuses_new_ones():
    machine, listener, conn = opened(max_streams=1)
    conn.send_headers(1, REQUEST, end_stream=True)
    machine.receive(conn.data_to_send() + headers_frame(3, conn, flags=["END_HEADERS", "END_STREAM"]).serialize())
    (reset,) = frames(bytes(machine.take()))
    assert reset.stream_id == 3 and reset.error_code == ErrorCode.REFUSED_STREAM
    machine, listener, conn = opened()
    conn.send_headers(1, REQUEST, end_stream=True)
    machine.receive(conn.data_to_send())
    machine.go_away()
    conn.send_headers(3, REQUEST, end_stream=True)
    machine.receive(conn.data_to_send())
    goaway, reset = frames(bytes(machine.take()))
    assert isinstance(goaway, GoAwayFrame) and goaway.last_stream_id == 1 and goaway.error_code == 0
    assert reset.stream_id == 3 and reset.error_code == ErrorCode.REFUSED_STREAM
    assert [c[1] for c in listener.calls if c[0] == "request"] == [1]


def test_pings_are_answered_and_the_client_goaway_is_told():
    machine, listener, conn = opened()
    conn.ping(b"12345678")
    events = exchange(machine, conn)
    assert any(isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"12345678" for e in events)
    conn.close_connection()
    machine.receive(conn.data_to_send())
    assert listener.calls[-2:] == [("ping",), ("goaway", 0)]


def test_trailers_end_the_request_and_content_length_is_checked():
    machine, listener, conn = opened()
    conn.send_headers(1, [*REQUEST, (b"content-length", b"4")], end_stream=False)
    conn.send_data(1, b"body")
    conn.send_headers(1, [(b"x-checksum", b"1")], end_stream=True)
    exchange(machine, conn)
    assert listener.kinds() == ["request", "data", "end"]
    conn.send_headers(3, [*REQUEST, (b"content-length", b"4")], end_stream=False)
    conn.send_data(3, b"bodybody", end_stream=True)
    machine.receive(conn.data_to_send())
    reset = frames(bytes(machine.take()))[-1]
    assert isinstance(reset, RstStreamFrame) and reset.stream_id == 3 and reset.error_code == ErrorCode.PROTOCOL_ERROR


def test_a_head_past_the_client_frame_size_goes_in_continuations():
    machine, _listener, conn = opened()
    conn.send_headers(1, REQUEST, end_stream=True)
    exchange(machine, conn)
    machine.send_headers(machine.streams[1], response_block(200, [(b"x-big", b"v" * 40000)], b""), True)
    sent = frames(bytes(machine.take()))
    assert [type(f) for f in sent] == [HeadersFrame, ContinuationFrame, ContinuationFrame]
    events = conn.receive_data(b"".join(f.serialize() for f in sent))
    assert events[0].headers[1] == (b"x-big", b"v" * 40000) and isinstance(events[1], h2.events.StreamEnded)


def test_upgrade_opens_stream_1_with_the_client_settings():
    machine, _listener = make()
    payload = SettingsFrame(0, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}).serialize_body()
    stream = machine.initiate_upgrade(base64.urlsafe_b64encode(payload).rstrip(b"="))
    assert stream.stream_id == 1 and not stream.remote_open and stream.send_window == 1000
    assert isinstance(frames(bytes(machine.take()))[0], SettingsFrame)
    with pytest.raises(ValueError):
        make()[0].initiate_upgrade(b"AAMAAABk!")


def test_our_smaller_stream_window_holds_once_the_client_acknowledges_it():
    machine, listener = make(window=16384)
    conn = client()
    conn.send_headers(1, REQUEST, end_stream=False)
    conn.send_data(1, b"a" * 16384)
    conn.send_data(1, b"b" * 16384)  # within RFC 9113's 65535: the client has not read our SETTINGS yet
    machine.receive(conn.data_to_send())
    assert [c[0] for c in listener.calls] == ["settings", "request", "data", "data"]
    assert machine.streams[1].recv_window == 65535 - 32768
    conn.receive_data(bytes(machine.take()))  # our SETTINGS reach the client, which acknowledges them
    machine.receive(conn.data_to_send())
    assert machine.streams[1].recv_window == 16384 - 32768  # shut (negative) until the application reads
    machine.receive(DataFrame(1, b"c").serialize())
    reset = frames(bytes(machine.take()))[-1]
    assert isinstance(reset, RstStreamFrame) and reset.error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_only_short_blocks_are_kept():
    from hpack import NeverIndexedHeaderTuple

    machine, listener, conn = opened()
    warm = conn.encoder.encode(REQUEST)  # fills the client's table
    big = conn.encoder.encode([*REQUEST, NeverIndexedHeaderTuple(b"x-big", b"v" * 2000)])  # changes nothing
    small = conn.encoder.encode(REQUEST)
    for stream_id, block in ((1, warm), (3, big), (5, big), (7, small)):
        frame = HeadersFrame(stream_id, flags=["END_HEADERS", "END_STREAM"])
        frame.data = block
        machine.receive(frame.serialize())
    assert [c[1] for c in listener.calls if c[0] == "request"] == [1, 3, 5, 7]
    assert list(machine.heads) == [small]  # the big block decoded twice, never kept
