"""The settings registry: what a setting is, how values are converted, and the settings in effect.

`_declare()` puts one `Setting` in `REGISTRY`: its name, type (a converter from this module), default,
validation and help. The modules that declare (`core`, `compat`, `transport`) import this one, never the
other way; the package's `__init__` imports them all, in order, so that whoever imports
`corral.shared.settings` gets the whole registry. The CLI flags, the config-file keys and the `CORRAL_*`
environment variables are all generated from `REGISTRY` (the master builds its click options from it).

Precedence, resolved in one place (`resolve`): command line > environment > config file > default.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    "unknown_setting_message",
]


class SettingError(ValueError):
    """A bad setting name or value; `str()` is the one line a user sees."""


# ---------------------------------------------------------------------------- converters
# Each takes a value from the CLI/env (a string) or from a config file (any Python value) and returns the
# typed value, raising ValueError with a message that says what is expected.


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false (or 1/0, yes/no, on/off)")


def _number(kind: type, minimum: float | None) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got a boolean")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"must be >= {minimum:g}, got {value!r}")
        return number

    convert.__name__ = f"{kind.__name__}>={minimum}"
    return convert


positive_int: Callable[[Any], int] = _number(int, 1)
non_negative_int: Callable[[Any], int] = _number(int, 0)
non_negative_float: Callable[[Any], float] = _number(float, 0)
positive_float: Callable[[Any], float] = _number(float, 1e-9)


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def optional_str(value: Any) -> str | None:
    if value is None:
        return None
    return to_str(value) or None


def choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text

    return convert


def str_list(value: Any) -> tuple[str, ...]:
    """A comma-separated string, or a list/tuple of strings."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = [to_str(v) for v in value]
    else:
        raise ValueError(f"expected a comma-separated string or a list, got {type(value).__name__}")
    return tuple(item.strip() for item in items if item.strip())


def size(value: Any) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024); 0 means off."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes (e.g. 1048576, 512K, 10M), got a boolean")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        factor = 1
        if text and text[-1] in "KMG":
            factor = 1024 ** ("KMG".index(text[-1]) + 1)
            text = text[:-1]
        try:
            number = int(float(text) * factor)
        except ValueError:
            raise ValueError(f"expected a size in bytes (e.g. 1048576, 512K, 10M), got {value!r}") from None
    if number < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return number


def umask(value: Any) -> int:
    """A file-mode creation mask, read as gunicorn reads it: an int, or a string where a leading 0 or 0o means
    octal ('007', '0o22'), 0x hexadecimal, anything else decimal ('18' is 0o22)."""
    if isinstance(value, bool):
        raise ValueError("expected an octal umask such as 007 or 0o22, got a boolean")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if len(text) > 1 and text[0] == "0" and text[1].isdigit():
            text = "0o" + text[1:]
        try:
            number = int(text, 0)
        except ValueError:
            raise ValueError(f"expected an octal umask such as 007 or 0o22, got {value!r}") from None
    if not 0 <= number <= 0o777:
        raise ValueError(f"must be between 0 and 0o777, got {value!r}")
    return number


def user_id(value: Any) -> int | None:
    """A user name or numeric uid; None (unset) keeps the current user."""
    if value is None or value == "":
        return None
    import pwd

    if (isinstance(value, int) and not isinstance(value, bool)) or str(value).isdigit():
        return int(value)
    try:
        return pwd.getpwnam(str(value)).pw_uid
    except KeyError:
        raise ValueError(f"no such user {value!r}") from None


def group_id(value: Any) -> int | None:
    """A group name or numeric gid; None (unset) keeps the current group."""
    if value is None or value == "":
        return None
    import grp

    if (isinstance(value, int) and not isinstance(value, bool)) or str(value).isdigit():
        return int(value)
    try:
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise ValueError(f"no such group {value!r}") from None


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Setting:
    """One setting: the single place its name, type, default, flags and help are declared."""

    name: str
    section: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    multiple: bool = False  # a repeatable CLI flag collecting a list (e.g. --bind)
    is_flag: bool = False  # a CLI switch taking no value
    render: Callable[[Any], str] | None = None  # how a value is written back (e.g. a umask in octal)
    cli: bool = True  # False: config file and environment only (gunicorn's server hooks have no flag)

    def show(self, value: Any) -> str:
        """`value` as a user would write it on the command line or in CORRAL_* (it parses back)."""
        if self.render is not None and value is not None:
            return self.render(value)
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        if value is None:
            return ""
        return str(value)

    @property
    def env(self) -> str:
        return env_var_name(self.name)

    def parse(self, value: Any, source: str = "") -> Any:
        """Convert and validate; raises SettingError naming the setting and the source."""
        try:
            if self.multiple:
                values = value if isinstance(value, (list, tuple)) else str_list(value)
                return tuple(self.convert(v) for v in values)
            return self.convert(value)
        except ValueError as exc:
            where = f" (from {source})" if source else ""
            raise SettingError(f"invalid value for {self.cli_name}{where}: {exc}") from None

    @property
    def cli_name(self) -> str:
        long_flags = [f for f in self.flags if f.startswith("--")]
        return long_flags[0] if long_flags else self.name


REGISTRY: dict[str, Setting] = {}


def env_var_name(name: str) -> str:
    return "CORRAL_" + name.upper()


def _declare(
    name: str,
    section: str,
    convert: Callable[[Any], Any],
    default: Any,
    help: str,
    flags: Iterable[str] = (),
    **extra: Any,
) -> None:
    if name in REGISTRY:
        raise RuntimeError(f"setting {name!r} declared twice")
    flags = tuple(flags) or ("--" + name.replace("_", "-"),)
    REGISTRY[name] = Setting(name, section, convert, default, help, flags, **extra)


# ---------------------------------------------------------------------------- resolved settings


class Settings:
    """The effective value of every setting; attribute access by setting name."""

    def __init__(self, **values: Any) -> None:
        for name in values:
            if name not in REGISTRY:
                raise SettingError(unknown_setting_message(name))
        for name, declared in REGISTRY.items():
            value = values.get(name, declared.default)
            if name in values:
                value = declared.parse(value)
            object.__setattr__(self, name, value)

    if TYPE_CHECKING:
        # Each setting is an attribute set from REGISTRY at run time, a name mypy cannot see: reading one is
        # typed Any here rather than declared a second time. (No __getattr__ at run time: a name that is no
        # setting still raises AttributeError.)
        def __getattr__(self, name: str) -> Any: ...

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in REGISTRY:
            raise SettingError(unknown_setting_message(name))
        object.__setattr__(self, name, REGISTRY[name].parse(value))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated)."""
        values = self.as_dict()
        values.update(changes)
        return Settings(**values)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REGISTRY}

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.as_dict().items())

    def __repr__(self) -> str:
        changed = {k: v for k, v in self if v != REGISTRY[k].default}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def unknown_setting_message(name: str) -> str:
    message = f"unknown setting {name!r}"
    close = difflib.get_close_matches(name.replace("-", "_"), list(REGISTRY), n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message


def from_env(environ: Mapping[str, str] = os.environ, problems: list[str] | None = None) -> dict[str, Any]:
    """Settings given as CORRAL_* environment variables.

    A CORRAL_* name that is no setting is not one of ours to refuse (an environment is shared with deploy
    scripts and other tools): it is skipped here, and `unknown_env` names it. A bad value raises, or is
    appended to `problems` when a list is given (every bad value of a run reported at once)."""
    found: dict[str, Any] = {}
    known = {declared.env: declared for declared in REGISTRY.values()}
    for key, raw in environ.items():
        declared = known.get(key)
        if declared is None:
            continue
        try:
            found[declared.name] = declared.parse(raw, f"environment variable {key}")
        except SettingError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return found


def unknown_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The CORRAL_* variables that are no setting (CORRAL_CMD_ARGS, a command line, is one of ours)."""
    # CORRAL_CMD_ARGS is a command line; CORRAL_NO_EXTENSIONS turns the compiled request parser off.
    known = {declared.env for declared in REGISTRY.values()} | {"CORRAL_CMD_ARGS", "CORRAL_NO_EXTENSIONS"}
    return sorted(key for key in environ if key.startswith("CORRAL_") and key not in known)


@dataclass
class Sources:
    """Where each layer of settings came from, lowest precedence first."""

    file: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    cli: dict[str, Any] = field(default_factory=dict)


def resolve(sources: Sources) -> Settings:
    """The one precedence rule: command line > environment > config file > default."""
    merged: dict[str, Any] = {}
    for layer in (sources.file, sources.env, sources.cli):
        merged.update(layer)
    return Settings(**merged)
