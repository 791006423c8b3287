# The C module worker/http1/_head.c (built at install when a compiler is there): see corral.worker.http1.native.
from collections.abc import Callable
from typing import Any

def parse(
    data: bytes, limit_line: int, limit_fields: int, limit_head: int, /
) -> tuple[bytes, bytes, bool, list[tuple[bytes, bytes]], int, bytes | None, bool, bool, bool] | None: ...
def make_scope(
    template: dict[str, Any],
    method: bytes,
    target: bytes,
    http11: bool,
    headers: list[tuple[bytes, bytes]],
    server: Any,
    client: Any,
    scheme: str,
    lifespan_state: dict[str, Any],
    extensions: dict[str, Any] | None,
    decode_path: Callable[[bytes], str],
    /,
) -> dict[str, Any]: ...
def clone(prototype: Any, /) -> Any: ...
