"""The TLS server context, built from the settings in the master: once at start (a bad file or a key that
does not match its certificate is one line and exit 2, before anything is bound), and again on HUP, so that
a renewed certificate is served by the new workers without a restart (a HUP whose files are bad keeps the
running workers and their context).

Workers inherit the context across fork; `corral.worker` only receives it.
"""

from __future__ import annotations

import os
import ssl

from corral.shared.settings import SettingError, Settings
from corral.shared.settings.compat import describe_callable
from corral.worker.http2.detect import alpn_protocols

__all__ = ["server_context"]

_MINIMUM = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _readable(flag: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SettingError(f"invalid value for {flag}: cannot read {path!r}: {exc.strerror or exc}") from None


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The SSLContext for `settings`, or None without --certfile. Raises SettingError (one line).

    A config's `ssl_context(config, default_ssl_context_factory)` hook (gunicorn's) is called only when TLS
    is on, as gunicorn calls it: `config` is the settings, the factory builds the context below, and what
    the hook returns is served."""
    if settings.certfile is None:
        if settings.keyfile is not None or settings.ca_certs is not None or settings.cert_reqs:
            raise SettingError("--keyfile, --ca-certs and --cert-reqs need --certfile: give the certificate too")
        return None
    if settings.ssl_context is None:
        return _default_context(settings)
    hook = settings.ssl_context
    try:
        context = hook(settings, lambda: _default_context(settings))
    except SettingError:
        raise
    except Exception as exc:  # noqa: BLE001 - the ssl_context hook is user code: all it raises is one line
        raise SettingError(
            f"the ssl_context hook {describe_callable(hook)} raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(context, ssl.SSLContext):
        raise SettingError(
            f"the ssl_context hook {describe_callable(hook)} returned {type(context).__name__}, not "
            "an ssl.SSLContext: return the factory's context (default_ssl_context_factory())"
        )
    return context


def _default_context(settings: Settings) -> ssl.SSLContext:
    certfile, keyfile = settings.certfile, settings.keyfile
    _readable("--certfile", certfile)
    if keyfile is not None:
        _readable("--keyfile", keyfile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MINIMUM[settings.ssl_version]
    password = settings.keyfile_password or os.environ.get("CORRAL_KEYFILE_PASSWORD")
    try:
        context.load_cert_chain(certfile, keyfile, password=password.encode() if password else None)
    except ssl.SSLError as exc:
        reason = (exc.reason or "").upper()
        if "MISMATCH" in reason:
            raise SettingError(
                f"--keyfile {keyfile!r} is not the key of --certfile {certfile!r}: give the matching pair"
            ) from None
        if "BAD_DECRYPT" in reason or "PASSWORD" in reason:
            raise SettingError(
                f"cannot decrypt --keyfile {keyfile or certfile!r}: set CORRAL_KEYFILE_PASSWORD to its password"
            ) from None
        raise SettingError(
            f"cannot load the TLS certificate {certfile!r} and key {keyfile or certfile!r}: "
            f"{exc.reason or exc} (both must be PEM)"
        ) from None
    if settings.ciphers:
        try:
            context.set_ciphers(settings.ciphers)
        except ssl.SSLError:
            raise SettingError(
                f"invalid value for --ciphers: OpenSSL matches no cipher in {settings.ciphers!r}"
            ) from None
    if settings.cert_reqs:
        if settings.ca_certs is None:
            raise SettingError("--cert-reqs 1 or 2 checks client certificates against --ca-certs: give the CA file")
        _readable("--ca-certs", settings.ca_certs)
        try:
            context.load_verify_locations(settings.ca_certs)
        except ssl.SSLError as exc:
            raise SettingError(
                f"invalid value for --ca-certs: cannot load {settings.ca_certs!r}: {exc.reason or exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED if settings.cert_reqs == 2 else ssl.CERT_OPTIONAL
    elif settings.ca_certs is not None:
        _readable("--ca-certs", settings.ca_certs)
        context.load_verify_locations(settings.ca_certs)
    context.set_alpn_protocols(alpn_protocols(settings.http))
    return context
