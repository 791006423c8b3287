"""Settings of how requests reach a worker: TLS (gunicorn's names; the context is built by
corral.master.listen.tls) and HTTP/2 (corral.worker.http2). Declared in `corral.shared.settings.registry`'s
`REGISTRY` after `compat`'s (the package's `__init__` imports this module), so they get flags, config keys
and CORRAL_* variables.
"""

from __future__ import annotations

import ssl
from typing import Any

from corral.shared.settings.registry import (
    _declare,
    choice,
    non_negative_int,
    optional_str,
    positive_float,
    positive_int,
    size,
    to_bool,
)

__all__ = ["cert_reqs", "tls_version", "frame_size"]


def frame_size(value: Any) -> int:
    """An HTTP/2 SETTINGS_MAX_FRAME_SIZE: 16384 to 16777215 (RFC 9113 §6.5.2)."""
    number = positive_int(value)
    if not 16384 <= number <= 16777215:
        raise ValueError(f"expected 16384 to 16777215 (RFC 9113 §6.5.2), got {number}")
    return number


def cert_reqs(value: Any) -> int:
    """gunicorn's --cert-reqs: 0/none, 1/optional, 2/required (ssl.CERT_NONE/OPTIONAL/REQUIRED)."""
    names = {"none": 0, "optional": 1, "required": 2, "cert_none": 0, "cert_optional": 1, "cert_required": 2}
    if isinstance(value, bool):
        raise ValueError("expected 0, 1, 2 (or none, optional, required), got a boolean")
    text = str(value).strip().lower()
    if text in names:
        return names[text]
    if text in ("0", "1", "2"):
        return int(text)
    raise ValueError(f"expected 0, 1, 2 (or none, optional, required), got {value!r}")


def tls_version(value: Any) -> str:
    """The lowest TLS version accepted: TLSv1.2 or TLSv1.3.

    gunicorn's --ssl-version took an ssl.PROTOCOL_* number or name (gunicorn 27 ignores it): those that mean
    "negotiate the best" (2, 16, 17: PROTOCOL_TLS, _CLIENT, _SERVER) and the old fixed ones (3, 4, 5:
    TLSv1, TLSv1_1, TLSv1_2) all mean TLSv1.2 here, the lowest corral offers; an ssl.TLSVersion is its
    version (TLS 1.0 and 1.1 raised to 1.2)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = int(value)  # ssl.PROTOCOL_* and ssl.TLSVersion members are ints
        if number in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.MAXIMUM_SUPPORTED):
            return "TLSv1.3"
        if number in (2, 3, 4, 5, 16, 17) or number in (-2, 769, 770, 771):
            return "TLSv1.2"
        raise ValueError(f"expected TLSv1.2 or TLSv1.3 (the lowest version accepted), got {value!r}")
    text = str(value).strip().upper().replace("_", ".").replace("PROTOCOL.", "")
    if text in ("TLSV1.2", "TLS1.2", "1.2"):
        return "TLSv1.2"
    if text in ("TLSV1.3", "TLS1.3", "1.3"):
        return "TLSv1.3"
    if text in ("2", "3", "4", "5", "16", "17", "TLS", "TLS.SERVER", "TLS.CLIENT", "SSLV23", "TLSV1", "TLSV1.1"):
        return "TLSv1.2"
    raise ValueError(f"expected TLSv1.2 or TLSv1.3 (the lowest version accepted), got {value!r}")


# -- TLS (gunicorn's names): the context is built in the master, once, and again on HUP (rotation)
_declare(
    "certfile",
    "tls",
    optional_str,
    None,
    "TLS certificate file (PEM, the chain after the certificate): serve HTTPS (and WSS) on every bind.",
    ("--certfile",),
    metavar="FILE",
)
_declare(
    "keyfile",
    "tls",
    optional_str,
    None,
    "TLS private key file (PEM); may be the certfile itself.",
    ("--keyfile",),
    metavar="FILE",
)
_declare(
    "keyfile_password",
    "tls",
    optional_str,
    None,
    "Password of an encrypted --keyfile; give it as CORRAL_KEYFILE_PASSWORD rather than on the command "
    "line (other users can read command lines).",
    ("--keyfile-password",),
    metavar="PASSWORD",
    render=lambda value: "***",
)
_declare(
    "ca_certs",
    "tls",
    optional_str,
    None,
    "CA certificates (PEM) that client certificates are checked against (with --cert-reqs 1 or 2).",
    ("--ca-certs",),
    metavar="FILE",
)
_declare(
    "cert_reqs",
    "tls",
    cert_reqs,
    0,
    "Client certificates: 0 not asked for, 1 optional (checked when given), 2 required.",
    ("--cert-reqs",),
)
_declare(
    "ciphers",
    "tls",
    optional_str,
    None,
    "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's); default: Python's secure defaults.",
    ("--ciphers",),
    metavar="CIPHERS",
)
_declare(
    "ssl_version",
    "tls",
    tls_version,
    "TLSv1.2",
    "Lowest TLS version accepted: TLSv1.2 or TLSv1.3.",
    ("--ssl-version", "--ssl-min-version"),
)
_declare(
    "do_handshake_on_connect",
    "tls",
    to_bool,
    False,
    "Accepted for gunicorn configs; the handshake always completes before the first request is read "
    "(asyncio), bounded by --ssl-handshake-timeout.",
    is_flag=True,
)
_declare(
    "ssl_handshake_timeout",
    "tls",
    positive_float,
    10.0,
    "Seconds a client gets to complete the TLS handshake before the connection is closed (a slow client "
    "holds no application slot meanwhile).",
)


# -- HTTP/2 (RFC 9113, corral.worker.http2.machine): ALPN h2 over TLS, h2c with prior knowledge on cleartext. Every
#    defence is on by default; a client past a bound gets GOAWAY (ENHANCE_YOUR_CALM) and the connection closes.
_declare(
    "http",
    "http2",
    choice("auto", "1", "2"),
    "auto",
    "HTTP versions served: 'auto' (HTTP/1.1, plus HTTP/2 for TLS clients that offer h2 by ALPN and "
    "cleartext clients that open with the HTTP/2 preface - h2c prior knowledge), '1' (HTTP/1.1 only), "
    "'2' (HTTP/2 only: TLS offers h2 alone; cleartext is h2c with prior knowledge, and a connection that does "
    "not open with the preface gets GOAWAY PROTOCOL_ERROR).",
    ("--http",),
)
_declare(
    "http2_max_concurrent_streams",
    "http2",
    positive_int,
    100,
    "Streams one HTTP/2 connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS); above 100, lowered to the "
    "pool's free room when a connection opens. Each stream is an application instance (parked when the pool "
    "is full).",
)
_declare(
    "http2_initial_window_size",
    "http2",
    positive_int,
    65535,
    "Request body bytes a stream may send before the application reads them (the stream's flow-control "
    "window): the server acknowledges body bytes only as `receive` hands them over.",
)
_declare(
    "http2_max_frame_size",
    "http2",
    frame_size,
    16384,
    "Largest HTTP/2 frame payload the server accepts (SETTINGS_MAX_FRAME_SIZE, 16384-16777215).",
)
_declare(
    "http2_max_header_list_size",
    "http2",
    positive_int,
    65536,
    "Largest decoded request header list in bytes (SETTINGS_MAX_HEADER_LIST_SIZE; HPACK bomb guard): a "
    "bigger one ends the connection.",
)
_declare(
    "http2_header_table_size",
    "http2",
    non_negative_int,
    4096,
    "HPACK dynamic table size in bytes the client may use for request headers (SETTINGS_HEADER_TABLE_SIZE).",
)
_declare(
    "http2_max_continuation_frames",
    "http2",
    positive_int,
    16,
    "CONTINUATION frames one header block may span (CVE-2024-27316 CONTINUATION flood): more end the "
    "connection before anything is decoded.",
)
_declare(
    "http2_max_resets",
    "http2",
    positive_int,
    100,
    "Streams a client may cancel (RST_STREAM) per second on one connection (CVE-2023-44487 Rapid Reset), "
    "counting the streams the server resets for a client's frames that are stream errors: beyond it, "
    "GOAWAY ENHANCE_YOUR_CALM.",
)
_declare(
    "http2_max_control_frames",
    "http2",
    positive_int,
    1000,
    "SETTINGS, PING, PRIORITY and empty DATA frames a client may send per second on one connection, and times "
    "it may reopen a shut flow-control window by under 1 KiB (each costs a DATA frame for a few bytes); each "
    "counted apart, floods that cost the server work without a request: beyond it, GOAWAY.",
)
_declare(
    "http2_send_timeout",
    "http2",
    positive_float,
    30.0,
    "Seconds a response may wait for the client to open a shut flow-control window (by any amount: DATA "
    "follows whatever window it grants) or for it to read: the stream is then reset.",
)
_declare(
    "http2_max_write_buffer",
    "http2",
    size,
    1024 * 1024,
    "Bytes an HTTP/2 connection may have waiting to be written while its client does not read (control "
    "frames the server must answer included): beyond it the connection is dropped.",
)
