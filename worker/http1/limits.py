"""The HTTP/1.1 limits of a worker (`Limits`), decided once from its settings and handed to every connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = ["Limits", "FREE_CHUNKS", "UNLIMITED_HEAD_BYTES", "UNLIMITED_FIELDS"]

#: Chunks a chunked body may use before the size of its chunks is checked (`min_chunk_size`).
FREE_CHUNKS = 1024

#: What a limit of 0 (gunicorn's "unlimited") stands for: the request line and the header block each up to
#: 1 MiB (gunicorn's own C parser bounds an "unlimited" line there), header fields up to gunicorn's 32768.
UNLIMITED_HEAD_BYTES = 1024 * 1024
UNLIMITED_FIELDS = 32768


class Limits:
    """The HTTP/1.1 limits of a worker, built once from its settings and handed to every connection."""

    __slots__ = (
        "request_line",
        "request_fields",
        "header_block",
        "request_body",
        "requests_per_connection",
        "pipelined_requests",
        "min_chunk_size",
    )

    def __init__(
        self,
        request_line: int = 8190,
        request_fields: int = 100,
        header_block: int = 8190,
        request_body: int = 0,
        requests_per_connection: int = 1000,
        pipelined_requests: int = 16,
        min_chunk_size: int = 64,
        keepalive: bool = True,
    ) -> None:
        self.request_line = request_line or UNLIMITED_HEAD_BYTES
        self.request_fields = request_fields or UNLIMITED_FIELDS
        self.header_block = header_block or UNLIMITED_HEAD_BYTES
        self.request_body = request_body
        # --keep-alive 0 (`keepalive` False): every connection closes after its first response, decided here
        # once as a limit of one request rather than checked per request.
        self.requests_per_connection = requests_per_connection if keepalive else 1
        self.pipelined_requests = pipelined_requests
        self.min_chunk_size = min_chunk_size

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.limit_request_line,
            settings.limit_request_fields,
            settings.limit_request_field_size,
            settings.limit_request_body,
            settings.max_requests_per_connection,
            settings.max_pipelined_requests,
            settings.min_chunk_size,
            settings.keepalive > 0,
        )
