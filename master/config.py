"""Settings from every source: generated click options, CORRAL_* variables, config files.

The click options are generated from `corral.shared.settings.REGISTRY`, so a setting declared there is a
flag, a config-file key and an environment variable at once. Precedence is the registry's `resolve`:
command line > environment > config file > default.

Config files: a Python file (`-c corral.conf.py`, gunicorn's format: module-level names are settings) and
the `[tool.corral]` table of `pyproject.toml` in the working directory.
"""

from __future__ import annotations

import os
import runpy
import sys
import types
from typing import Any, Callable, Mapping

import click

from corral.shared.settings import REGISTRY, Setting, SettingError, Settings, Sources, from_env, from_mapping, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["settings_options", "load_python_config", "load_pyproject", "collect"]

# gunicorn server hooks: accepted in a carried-over gunicorn config file, reported as not supported.
GUNICORN_HOOKS = frozenset((
    "on_starting", "on_reload", "when_ready", "pre_fork", "post_fork", "post_worker_init", "worker_int",
    "worker_abort", "pre_exec", "pre_request", "post_request", "child_exit", "worker_exit", "nworkers_changed",
    "on_exit", "ssl_context",
))


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with one option per registered setting (default None = not given)."""
    for declared in reversed(list(REGISTRY.values())):
        command = _option(declared)(command)
    return command


def _option(declared: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    default_text = _default_text(declared)
    help_text = f"{declared.help} [default: {default_text}; env: {declared.env}]"
    if declared.is_flag or isinstance(declared.default, bool):
        long_flags = [f for f in declared.flags if f.startswith("--")]
        short = [f for f in declared.flags if not f.startswith("--")]
        pair = f"{long_flags[0]}/--no-{long_flags[0][2:]}"
        return click.option(*short, pair, declared.name, default=None, help=help_text)
    return click.option(
        *declared.flags,
        declared.name,
        default=None,
        multiple=declared.multiple,
        metavar=declared.metavar or declared.name.upper(),
        help=help_text,
    )


def _default_text(declared: Setting) -> str:
    return declared.show(declared.default) or "unset"


def cli_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (click passes None / () for the others)."""
    given: dict[str, Any] = {}
    for name, value in params.items():
        declared = REGISTRY.get(name)
        if declared is None or value is None or (declared.multiple and not value):
            continue
        given[name] = declared.parse(list(value) if declared.multiple else value, "command line")
    return given


def load_python_config(path: str) -> dict[str, Any]:
    """A gunicorn-style Python config file: its public module-level names are settings."""
    if not os.path.isfile(path):
        raise SettingError(f"config file {path!r} not found")
    try:
        namespace = runpy.run_path(path, run_name="__config__")
    except SettingError:
        raise
    except Exception as exc:
        raise SettingError(f"config file {path!r} failed to run: {type(exc).__name__}: {exc}") from None
    values = {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if key in GUNICORN_HOOKS:
            print(f"corral: config file {path}: gunicorn hook {key!r} is not supported and is ignored",
                  file=sys.stderr)
            continue
        if callable(value) and key not in REGISTRY:
            continue  # helper functions defined in the file
        values[key] = value
    return from_mapping(values, f"config file {path}")


def load_pyproject(folder: str = ".") -> dict[str, Any]:
    """The `[tool.corral]` table of `pyproject.toml` in `folder`, or {} when there is none."""
    path = os.path.join(folder, "pyproject.toml")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("corral", {})
    if not isinstance(table, dict):
        raise SettingError(f"{path}: [tool.corral] must be a table")
    return from_mapping(table, f"{path} [tool.corral]")


def collect(cli: Mapping[str, Any], config_path: str | None, environ: Mapping[str, str] = os.environ,
            folder: str = ".") -> Settings:
    """Resolve the effective settings from the command line, environment and config file(s)."""
    file_values = load_pyproject(folder)
    if config_path:
        file_values.update(load_python_config(config_path))
    return resolve(Sources(file=file_values, env=from_env(environ), cli=cli_values(cli)))
