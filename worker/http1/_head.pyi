# The C module worker/http1/_head.c (built at install when a compiler is there): see corral.worker.http1.native.

def parse(
    data: bytes, limit_line: int, limit_fields: int, limit_head: int, /
) -> tuple[bytes, bytes, bool, list[tuple[bytes, bytes]], int, bytes | None, bool, bool, bool] | None: ...
