# The C module shared/_environ.c (built at install when a compiler is there): see corral.shared.wsgi_environ.
from collections.abc import Callable
from typing import Any

def fill_headers(
    environ: dict[str, Any],
    headers: Any,
    keys: dict[bytes, str | None],
    key_of: Callable[[bytes], str | None],
    limit: int,
    too_many: type[Exception],
    /,
) -> bool: ...
def build(
    template: dict[str, Any],
    scope: dict[str, Any],
    body: Any,
    limit: int,
    keys: dict[bytes, str | None],
    key_of: Callable[[bytes], str | None],
    too_many: type[Exception],
    ports: dict[int, str],
    /,
) -> dict[str, Any] | None: ...
def build_parsed(
    template: dict[str, Any],
    parsed: tuple[Any, ...],
    server: Any,
    client: Any,
    scheme: str,
    body: Any,
    limit: int,
    keys: dict[bytes, str | None],
    key_of: Callable[[bytes], str | None],
    too_many: type[Exception],
    ports: dict[int, str],
    methods: dict[bytes, str],
    /,
) -> dict[str, Any] | None: ...
