# The C module worker/conn/_response.c (built at install when a compiler is there): see corral.worker.conn.response.
from collections.abc import Callable
from typing import Any

def head(
    status: int,
    headers: Any,
    default_headers: bytes,
    keep_alive: bool,
    http11: bool,
    head_request: bool,
    body_length: int | None,
    /,
) -> tuple[bytes, int, bool]: ...
def setup(status_lines: dict[int, bytes], fallback: Callable[..., tuple[bytes, int, bool]], /) -> None: ...
