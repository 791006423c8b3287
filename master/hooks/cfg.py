"""What gunicorn's server hooks find in `server.cfg` and `worker.cfg`, and in `server.LISTENERS`.

gunicorn hands its hooks its `Config` object: every gunicorn setting is an attribute (`cfg.workers`,
`cfg.worker_connections`, `cfg.sendfile`, ...), and a few are computed (`cfg.uid`, `cfg.address`, `cfg.env`,
`cfg.is_ssl`, `cfg.proc_name`, ...). `HookConfig` answers the same names over corral's settings:

- a corral setting (gunicorn's name or corral's own): its effective value (lists where gunicorn has lists);
- a gunicorn name corral carries over under another name (`asgi_lifespan`): that setting's value;
- a gunicorn setting corral has nothing for (`worker_connections`, `sendfile`, `worker_tmp_dir`, ...):
  gunicorn's default, which is what a config that corral accepted left it at (a refused one is an error
  at start, and an accepted one has no effect in corral);
- gunicorn's computed attributes, computed from corral's settings.

Any other name raises AttributeError with gunicorn's message. The object is read-only, as gunicorn's is.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import Any

from corral.master.config.peer_names import GUNICORN
from corral.master.listen.sockets import describe_listener, parse_address
from corral.shared.settings import REGISTRY, Settings
from corral.shared.settings.compat import HOOK_ARITY

__all__ = ["HookConfig", "Listener"]

#: gunicorn's SSL section (Config.ssl_options).
_SSL = (
    "certfile",
    "keyfile",
    "ca_certs",
    "cert_reqs",
    "ciphers",
    "ssl_version",
    "do_handshake_on_connect",
    "suppress_ragged_eofs",
)


class HookConfig:
    """gunicorn's `cfg`, read from corral's `settings` (see the module docstring)."""

    __slots__ = ("_settings", "_proc_name")

    def __init__(self, settings: Settings, proc_name: str | None = None) -> None:
        object.__setattr__(self, "_settings", settings)
        object.__setattr__(self, "_proc_name", proc_name)

    def __getattr__(self, name: str) -> Any:
        computed = _COMPUTED.get(name)
        if computed is not None:
            return computed(self)
        return self._value(name)

    def _value(self, name: str) -> Any:
        settings = self._settings
        if name in REGISTRY:
            value = getattr(settings, name)
            if value is None and name in HOOK_ARITY:
                return _no_hook  # gunicorn's unset hooks are functions that do nothing
            return list(value) if isinstance(value, tuple) else value
        entry = GUNICORN.get(name)
        if entry is None:
            raise AttributeError(f"No configuration setting for: {name}")
        if entry.kind == "alias":
            return getattr(settings, entry.corral)
        if name in _PARSED_DEFAULTS:
            return _PARSED_DEFAULTS[name]()
        if name in _DIRTY_HOOKS:
            return _no_hook
        return entry.default

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Invalid access!")  # gunicorn's answer: settings are not changed from a hook

    @property
    def settings(self) -> dict[str, Any]:
        """gunicorn's `cfg.settings`: name -> an object with `.name`, `.value` and `.get()`."""
        out = {}
        for name in sorted(set(REGISTRY) | set(GUNICORN)):
            try:
                value = getattr(self, name)
            except AttributeError:
                continue
            out[name] = SimpleNamespace(name=name, value=value, get=lambda value=value: value)
        return out

    def __repr__(self) -> str:
        return f"<HookConfig of {self._settings!r}>"


def _no_hook(*args: Any) -> None:
    """An unset hook, as gunicorn's cfg gives it."""


#: gunicorn's hooks for its dirty arbiters, which corral has no equivalent of.
_DIRTY_HOOKS = frozenset(("on_dirty_starting", "dirty_post_fork", "dirty_worker_init", "dirty_worker_exit"))

#: gunicorn's defaults, as its Config holds them after parsing, where peer_names keeps the written form.
_PARSED_DEFAULTS = {
    "uwsgi_allow_ips": lambda: ["127.0.0.1", "::1"],
    "http_protocols": lambda: ["h1"],
    "forwarder_headers": lambda: ["SCRIPT_NAME", "PATH_INFO"],
    "secure_scheme_headers": lambda: {
        "X-FORWARDED-PROTOCOL": "ssl",
        "X-FORWARDED-PROTO": "https",
        "X-FORWARDED-SSL": "on",
    },
    "control_socket_mode": lambda: 0o600,
}


def _uid(cfg: HookConfig) -> int:
    user = cfg._settings.user
    return os.geteuid() if user is None else user


def _gid(cfg: HookConfig) -> int:
    group = cfg._settings.group
    return os.getegid() if group is None else group


def _address(cfg: HookConfig) -> list[Any]:
    """gunicorn's parsed binds: (host, port) for TCP, the path for unix sockets, the number for fd://."""
    out: list[Any] = []
    for text in cfg._settings.bind:
        address = parse_address(text)
        if address.fd is not None:
            out.append(address.fd)
        elif address.path is not None:
            out.append(address.path)
        else:
            out.append((address.host, address.port))
    return out


def _env(cfg: HookConfig) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in cfg._settings.raw_env)


def _worker_class_str(cfg: HookConfig) -> str:
    """The worker class as given; without -k, what corral serves: gthread for WSGI, asgi (gunicorn's own
    ASGI worker's name) otherwise."""
    settings = cfg._settings
    if settings.worker_class:
        return str(settings.worker_class)
    return "gthread" if settings.interface == "wsgi" else "asgi"


_COMPUTED = {
    "uid": _uid,
    "gid": _gid,
    "user": _uid,  # gunicorn keeps the numeric uid in `user` (its default: the current one)
    "group": _gid,
    "address": _address,
    "env": _env,
    "proc_name": lambda cfg: cfg._settings.proc_name or cfg._proc_name or cfg._settings.wsgi_app or "corral",
    "is_ssl": lambda cfg: cfg._settings.certfile or cfg._settings.keyfile,
    "ssl_options": lambda cfg: {name: cfg._value(name) for name in _SSL},
    "worker_class_str": _worker_class_str,
    "worker_class": _worker_class_str,  # gunicorn's is the class itself; corral has no class to give
    "sendfile": lambda cfg: False,  # responses are written from the event loop: no sendfile path
    "paste_global_conf": lambda cfg: {},
}


class Listener:
    """A listening socket as gunicorn's hooks get it (`server.LISTENERS`, `worker.sockets`): gunicorn's
    socket wrapper, whose attributes fall through to the socket (`getsockname()`, `fileno()`, ...), with
    `sock` and `cfg_addr`, and whose str() is its URL (http://127.0.0.1:8000, http://[::]:8000, unix:PATH)."""

    __slots__ = ("sock", "tls")

    def __init__(self, sock: socket.socket, tls: bool = False) -> None:
        self.sock = sock
        self.tls = tls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    @property
    def cfg_addr(self) -> Any:
        name = self.sock.getsockname()
        return name if isinstance(name, str) else tuple(name[:2])

    @property
    def FAMILY(self) -> int:  # noqa: N802 - gunicorn's name
        return self.sock.family

    def __str__(self) -> str:
        text = describe_listener(self.sock)
        if self.tls and self.sock.family == socket.AF_INET:  # gunicorn says https for IPv4 TLS binds only
            text = "https" + text.removeprefix("http")
        return text

    def __repr__(self) -> str:
        return f"<Listener {self}>"
