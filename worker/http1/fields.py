"""The request head's field rules for `HTTP11Connection`: which fields it looks at one by one, what a Host
value may be, and what a Transfer-Encoding may say."""

from __future__ import annotations

import re

__all__ = ["REQUEST_FRAMING", "PROXY_HEADERS", "LOOKED_AT", "VALID_HOST", "transfer_coding_problem"]

# Header names whose value decides framing or routing: looked at one by one (a set lookup per field).
# Content-Type is among them because a second one makes the body's meaning ambiguous (RFC 9110 §5.3: a field
# whose grammar is a single value cannot be repeated).
REQUEST_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"expect", b"host", b"content-type"))
# The proxy headers (corral.worker.edge.proxy_headers) are noted in the same lookup: a request without any
# skips the proxy's scan of its headers.
PROXY_HEADERS = frozenset((b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"))
LOOKED_AT = REQUEST_FRAMING | PROXY_HEADERS

# RFC 9112 §3.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ]; uri-host is an IP-literal in brackets or a
# reg-name / IPv4 address (unreserved, pct-encoded and sub-delims characters). An empty value is allowed.
VALID_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
    rb"|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?"
)


def transfer_coding_problem(te: bytes, content_length: int, http_version: str) -> tuple[int, str] | None:
    """The status and reason a request with this Transfer-Encoding value gets, or None when its body is
    chunked as it should be."""
    # RFC 9112 §6.1: a request with both is an attack or an error (llhttp refuses it too).
    if content_length >= 0:
        return (400, "both Content-Length and Transfer-Encoding")
    codings = [coding.strip().lower() for coding in te.split(b",")]
    # RFC 9112 §6.3 item 4: chunked must be the final coding, else the length is unknowable.
    if codings[-1] != b"chunked":
        return (400, "chunked is not the final transfer coding")
    if len(codings) > 1:
        if b"chunked" in codings[:-1]:
            return (400, "chunked applied more than once")  # RFC 9112 §6.1
        # `identity` (RFC 2616's no-op coding) changes nothing; any other is one this server does not
        # decode (RFC 9112 §6.1: 501).
        for coding in codings[:-1]:
            if coding != b"identity":
                return (501, "unsupported transfer coding")
    if http_version == "1.0":
        return (400, "Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 §6.1
    return None
