"""What an HTTP request's ASGI scope is made of, for the protocols that make one (HTTP/1.1's general and direct
ways, HTTP/2's streams): the scope's template, the method strings, the path's decoding."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

__all__ = ["ASGI", "METHODS", "decode_path", "scope_template"]

ASGI = {"version": "3.0", "spec_version": "2.4"}  # shared by every scope: read-only by convention
#: The methods most requests use, as the scope's strings (others are decoded per request).
METHODS = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_PERCENT = ord("%")


def scope_template(root_path: str) -> dict:
    """The start of every HTTP/1.1 scope of a server (`HttpProtocol.on_request` copies it): every key, in the
    order the scope always had, with the values most requests keep (None: set for each request)."""
    return {
        "type": "http",
        "asgi": ASGI,
        "http_version": "1.1",
        "server": None,
        "client": None,
        "scheme": "http",
        "method": None,
        "root_path": root_path,
        "path": None,
        "raw_path": None,
        "query_string": None,
        "headers": None,
        "state": None,
        "extensions": None,
    }


def decode_path(raw_path: bytes) -> str:
    """ASGI `path`: percent-decoded, as UTF-8 (latin-1 when the bytes are not UTF-8)."""
    if _PERCENT not in raw_path and raw_path.isascii():
        return raw_path.decode("ascii")
    raw = unquote_to_bytes(raw_path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
