"""Settings from every source: generated click options, CORRAL_* variables, config files.

The click options are generated from `corral.shared.settings.REGISTRY`, so a setting declared there is a
flag, a config-file key and an environment variable at once. Precedence is the registry's `resolve`:
command line > environment > config file > default.

Config files: a Python file (`-c corral.conf.py`, gunicorn's format: module-level names are settings; without
`-c`, `./corral.conf.py` or else `./gunicorn.conf.py`, as gunicorn loads its file by default) and the
`[tool.corral]` table of `pyproject.toml` in the working directory. gunicorn's keys that corral names
differently, or has no use for, are translated or reported by `corral.master.peer_names`; every problem in a
file is reported at once (`ConfigProblems`), not one per run.
"""

from __future__ import annotations

import difflib
import os
import runpy
import sys
import types
from typing import Any, Callable, Mapping

import click

from corral.master.peer_names import GUNICORN, PEER_FLAGS
from corral.shared.settings import REGISTRY, Setting, SettingError, Settings, Sources, from_env, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["settings_options", "load_python_config", "load_pyproject", "collect", "find_config", "ConfigProblems",
           "suggest", "DEFAULT_CONFIGS"]

#: Looked for in the working folder when no -c is given; the first found is loaded (corral's own wins).
DEFAULT_CONFIGS = ("corral.conf.py", "gunicorn.conf.py")


class ConfigProblems(SettingError):
    """Several problems found in one pass; `str()` is one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def suggest(name: str) -> str:
    """'; did you mean X?' for a misspelt corral setting, or what a peer's name means in corral, or ''.

    Only names of the same meaning are ever proposed: a peer's name is answered from the table in
    `peer_names`, and a spelling match only when the name is no peer's (so `reload` never gets `preload`)."""
    key = name.lstrip("-").replace("-", "_")
    entry = GUNICORN.get(key)
    if entry is not None and entry.kind != "same":
        return _equivalent(entry.corral, entry.note)
    flag = "--" + key.replace("_", "-")
    if flag in PEER_FLAGS and PEER_FLAGS[flag] != ("", ""):
        return _equivalent(*PEER_FLAGS[flag])
    close = difflib.get_close_matches(key, list(REGISTRY), n=1, cutoff=0.75)
    if close:
        return f"; did you mean {close[0]!r}?"
    return ""


def _equivalent(corral: str, note: str) -> str:
    instead = f"; corral's equivalent is {corral}" if corral else "; corral has no equivalent"
    return f"{instead} ({note})" if note else instead


def find_config(folder: str) -> str | None:
    """The config file loaded when no -c is given: ./corral.conf.py, else ./gunicorn.conf.py, else None."""
    for name in DEFAULT_CONFIGS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with one option per registered setting (default None = not given)."""
    for declared in reversed(list(REGISTRY.values())):
        if declared.cli:
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


def cli_values(params: Mapping[str, Any], source: str = "command line") -> dict[str, Any]:
    """The settings given on the command line (click passes None / () for the others)."""
    given: dict[str, Any] = {}
    for name, value in params.items():
        declared = REGISTRY.get(name)
        if declared is None or value is None or (declared.multiple and not value):
            continue
        given[name] = declared.parse(list(value) if declared.multiple else value, source)
    return given


def load_python_config(path: str, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A gunicorn-style Python config file: its public module-level names are settings.

    gunicorn's own keys are carried over (`peer_names`); warnings (a key with nothing to do in corral) go
    to `warn` (stderr by default); every problem is raised at once as ConfigProblems."""
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
        if callable(value) and key not in REGISTRY and key not in GUNICORN:
            continue  # helper functions defined in the file
        if key.isupper():
            continue  # a constant of the file's own (every setting's name is lower case)
        values[key] = value
    return from_mapping(values, f"config file {path}", warn)


def from_mapping(values: Mapping[str, Any], source: str, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Settings from a config file's keys, validated, naming the file; every problem reported at once."""
    found: dict[str, Any] = {}
    problems: list[str] = []
    for key, raw in values.items():
        name = key.replace("-", "_") if "-" in key and key.replace("-", "_") in REGISTRY else key
        declared = REGISTRY.get(name)
        entry = GUNICORN.get(name)
        if declared is None and entry is not None:
            if entry.kind == "alias":
                declared = REGISTRY[entry.corral]
            elif entry.kind == "noop" or (entry.kind == "refuse" and raw == entry.default):
                if entry.kind == "noop":
                    (warn or _warn)(f"{source}: gunicorn's {name!r} has nothing to do in corral, ignored: "
                                    f"{entry.note}")
                continue
            else:
                problems.append(f"{source}: gunicorn's {name!r} is not supported{suggest(name)}")
                continue
        if declared is None:
            problems.append(f"unknown setting {key!r} in {source}{suggest(key)}")
            continue
        try:
            found[declared.name] = declared.parse(raw, source)
        except SettingError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigProblems(problems)
    return found


def _warn(message: str) -> None:
    print(f"serve: warning: {message}", file=sys.stderr)


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
            folder: str = ".", cmd_args: Mapping[str, Any] | None = None) -> Settings:
    """Resolve the effective settings from the command line, GUNICORN_CMD_ARGS/CORRAL_CMD_ARGS (`cmd_args`,
    parsed like the command line), the environment and the config file(s).

    Precedence: command line > *_CMD_ARGS > CORRAL_* > config file > pyproject.toml > default."""
    file_values = load_pyproject(folder)
    if config_path:
        file_values.update(load_python_config(config_path))
    env = from_env(environ)
    env.update(cli_values(cmd_args or {}, "GUNICORN_CMD_ARGS/CORRAL_CMD_ARGS"))
    return resolve(Sources(file=file_values, env=env, cli=cli_values(cli)))
