"""One declarative registry of settings: each is declared once, with its type, default, validation and help.

The CLI flags, the config-file keys and the `CORRAL_*` environment variables are all generated from these
declarations (the master builds its click options from `REGISTRY`). Where gunicorn has the same setting, the
name and flag are gunicorn's, so a gunicorn command line or config file carries over.

    registry.py   what a setting is (`Setting`, the converters), `REGISTRY` and `_declare()`, the settings in
                  effect (`Settings`) and the one precedence rule (`resolve`: command line > environment >
                  config file > default)
    core.py       the server's own settings: sockets, workers and the pool, the master, HTTP/1.1 and
                  proxies, WebSocket
    observability.py  what the server reports: logging, metrics, statsd, health checks
    compat.py     what gunicorn users bring: server hooks, carried-over options, request deadlines, --reload
    transport.py  TLS and HTTP/2

Declaring goes one way: `registry` imports no other module of this package, each declaration module
(`core`, `observability`, `compat`, `transport`) imports `registry`, and this `__init__` imports them all, in
the order the settings page and `serve --help` list them. So `from corral.shared.settings import Settings,
REGISTRY` (what callers write) always finds the whole registry, and no module runs with another half made.

May import: `corral.shared` (compat.py checks a worker class with its worker_class module).
"""

from corral.shared.settings.registry import (  # noqa: F401  (the registry's API, re-exported)
    REGISTRY,
    Setting,
    SettingError,
    Settings,
    Sources,
    choice,
    env_var_name,
    from_env,
    group_id,
    non_negative_float,
    non_negative_int,
    optional_str,
    positive_float,
    positive_int,
    resolve,
    size,
    str_list,
    to_bool,
    to_str,
    umask,
    unknown_env,
    unknown_setting_message,
    user_id,
)

# The declarations, in this order: the order of REGISTRY, of the settings page and of `serve --help`
# (import sorting would put compat first: hence isort: skip).
from corral.shared.settings import core, observability, compat, transport  # isort: skip  # noqa: F401  (they declare by import)
from corral.shared.settings.observability import statsd_address, url_path  # noqa: F401  (converters, re-exported)

__all__ = [
    "Setting",
    "SettingError",
    "Settings",
    "Sources",
    "REGISTRY",
    "resolve",
    "env_var_name",
    "from_env",
    "unknown_env",
]
