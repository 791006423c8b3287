"""The plain records of an HTTP/2 connection's state machine (corral.worker.http2.machine): one stream's states
and windows (`StreamState`, which the machine keeps in its `streams` and the connection's stream reads as its
`flow`), and the server's side of the SETTINGS (`LocalSettings`, passed in once per worker). Slotted ints and
booleans, no logic: the machine's module docstring says how the two states move.
"""

from __future__ import annotations

__all__ = ["LocalSettings", "StreamState"]


class LocalSettings:
    """The server's side of the SETTINGS (values passed in once per worker)."""

    __slots__ = (
        "max_streams",
        "initial_window",
        "max_frame_size",
        "max_header_list_size",
        "header_table_size",
        "connection_window",
        "max_continuations",
    )

    def __init__(
        self,
        max_streams: int,
        initial_window: int,
        max_frame_size: int,
        max_header_list_size: int,
        header_table_size: int,
        connection_window: int,
        max_continuations: int,
    ) -> None:
        self.max_streams = max_streams
        self.initial_window = initial_window
        self.max_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        self.header_table_size = header_table_size
        self.connection_window = connection_window  # the connection's receive window, >= 65535
        self.max_continuations = max_continuations


class StreamState:
    """One stream as the connection sees it: its states and windows (plain ints)."""

    __slots__ = (
        "stream_id",
        "send_window",
        "recv_window",
        "recv_processed",
        "recv_max",
        "remote_open",
        "local_open",
        "expected",
        "received",
    )

    def __init__(
        self, stream_id: int, send_window: int, recv_window: int, remote_open: bool, expected: int | None
    ) -> None:
        self.stream_id = stream_id
        self.send_window = send_window  # what the client lets the server send on it
        self.recv_window = recv_window  # what the client may still send on it
        self.recv_processed = 0  # body bytes handed to the application, not yet given back by WINDOW_UPDATE
        self.recv_max = recv_window
        self.remote_open = remote_open
        self.local_open = True
        self.expected = expected  # the request's content-length, checked against its DATA (§8.1.1)
        self.received = 0

    @property
    def closed(self) -> bool:
        return not (self.remote_open or self.local_open)
