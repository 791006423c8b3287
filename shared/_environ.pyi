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
