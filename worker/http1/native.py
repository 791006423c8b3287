"""The compiled request-head parser, when there is one: `parse_head` is `_head.parse` (worker/http1/_head.c,
built at install when a C compiler is present), or None, and then every read is parsed the pure-Python way.

`CORRAL_NO_EXTENSIONS=1` in the environment turns it off (`corral.shared.native`; CI runs the whole suite both
ways). What it takes and what it returns: the C source's opening comment, and `HTTP11Connection.feed_parsed`.
"""

from __future__ import annotations

from collections.abc import Callable

from corral.shared.native import DISABLED_BY, enabled

__all__ = ["parse_head", "Parsed", "DISABLED_BY", "describe"]

Parsed = tuple[bytes, bytes, bool, list[tuple[bytes, bytes]], int, "bytes | None", bool, bool, bool]

parse_head: Callable[[bytes, int, int, int], Parsed | None] | None = None
if enabled():
    try:
        from corral.worker.http1._head import parse as parse_head
    except ImportError:  # not built (no compiler at install): the pure-Python way
        parse_head = None


def describe() -> str:
    """Which request parser this process uses, for `serve --version`."""
    if parse_head is not None:
        return "request parser: compiled"
    if not enabled():
        return f"request parser: pure Python ({DISABLED_BY} is set)"
    return "request parser: pure Python (its C module was not built at install)"
