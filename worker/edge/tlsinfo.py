"""ASGI's TLS extension (`scope["extensions"]["tls"]`) for a connection this worker terminates TLS on.

Made once per connection (every request of it shares the values): the server certificate (PEM, once per
worker), the client's certificate chain (PEM, leaf first: the verified chain where Python can give it, 3.13+,
else the leaf), its subject as an RFC 4514 string, the TLS version as its protocol number. The cipher suite's
IANA number is not exposed by Python's ssl module: `cipher_suite` is None and the OpenSSL name is given as
`cipher_name` (an addition of corral's).
"""

from __future__ import annotations

import ssl
from typing import Any

__all__ = ["tls_extension", "rfc4514", "TLS_VERSIONS"]

#: ASGI's `tls_version` (the protocol number) by the name OpenSSL gives, or a balancer's SSL TLV (which may
#: say "TLSv1.0"; see corral.worker.edge.proxy_protocol).
TLS_VERSIONS = {
    "SSLv3": 0x0300,
    "TLSv1": 0x0301,
    "TLSv1.0": 0x0301,
    "TLSv1.1": 0x0302,
    "TLSv1.2": 0x0303,
    "TLSv1.3": 0x0304,
}
_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape(value: str) -> str:
    # RFC 4514 §2.4: escape the specials, and a leading '#' or space and a trailing space.
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def rfc4514(subject: Any) -> str | None:
    """`getpeercert()["subject"]` (RDNs, most general first) as an RFC 4514 string (most specific first)."""
    if not subject:
        return None
    rdns = ["+".join(f"{_SHORT.get(key, key)}={_escape(value)}" for key, value in rdn) for rdn in reversed(subject)]
    return ",".join(rdns)


def _server_cert(server: Any) -> str | None:
    pem = server.server_cert_pem
    if pem is None:
        # The first certificate of --certfile (the context serves it), read once per worker.
        certfile = getattr(server.settings, "certfile", None)
        text = ""
        if certfile:
            try:
                with open(certfile) as fh:
                    text = fh.read()
            except OSError:
                pass
        begin, end = text.find("-----BEGIN CERTIFICATE-----"), text.find("-----END CERTIFICATE-----")
        pem = text[begin : end + len("-----END CERTIFICATE-----")] + "\n" if 0 <= begin < end else ""
        server.server_cert_pem = pem
    return pem or None


def tls_extension(transport: Any, server: Any) -> dict[str, Any]:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return {
            "server_cert": None,
            "client_cert_chain": [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
    chain: list[str] = []
    name = None
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        getter = getattr(ssl_object, "get_verified_chain", None)
        try:
            certs = getter() if getter is not None else []
            chain = [ssl.DER_cert_to_PEM_cert(cert.public_bytes(1)) for cert in certs]  # 1: ssl._ssl.ENCODING_DER
        except Exception:  # noqa: BLE001 - best effort: else the peer's certificate alone
            chain = []
        if not chain:
            chain = [ssl.DER_cert_to_PEM_cert(der)]
        name = rfc4514(ssl_object.getpeercert().get("subject"))
    cipher = ssl_object.cipher()
    return {
        "server_cert": _server_cert(server),
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that does not verify fails the handshake: never seen here
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
    }
