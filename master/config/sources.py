"""Settings from every source: generated click options, CORRAL_* variables, config files.

The click options are generated from `corral.shared.settings.REGISTRY`, so a setting declared there is a
flag, a config-file key and an environment variable at once. Precedence: see `collect`.

Config files: a Python file, read as gunicorn reads it (`-c FILE`, `-c file:FILE`, `-c python:pkg.module`;
without `-c`, `./corral.conf.py` or else `./gunicorn.conf.py`): the module-level names that are settings,
corral's or gunicorn's, are read and every other name is the file's own (helpers, imports, `annotations`),
ignored with one warning listing those that look like a misspelt setting. And the `[tool.corral]` table of
`pyproject.toml` in the working directory, a table of settings only, where an unknown key is an error.
gunicorn's keys that corral names differently, or does another way, are translated or reported by
`corral.master.config.peer_names`. CORRAL_* variables that are no setting belong to someone else and are ignored
the same way. Every bad value of every source is reported at once (`ConfigProblems`), not one per run.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from corral.master.config.peer_names import GUNICORN, PEER_FLAGS
from corral.shared.settings import REGISTRY, Setting, SettingError, Settings, Sources, from_env, resolve, unknown_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "settings_options",
    "load_python_config",
    "load_pyproject",
    "collect",
    "find_config",
    "ConfigProblems",
    "suggest",
    "misspellings",
    "read_config",
    "DEFAULT_CONFIGS",
]

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


def cli_values(
    params: Mapping[str, Any], source: str = "command line", problems: list[str] | None = None
) -> dict[str, Any]:
    """The settings given on the command line (click passes None / () for the others).

    A bad value raises SettingError, or is appended to `problems` when a list is given, so that every bad
    value of a run is reported at once."""
    given: dict[str, Any] = {}
    for name, value in params.items():
        declared = REGISTRY.get(name)
        if declared is None or value is None or (declared.multiple and not value):
            continue
        try:
            given[name] = declared.parse(list(value) if declared.multiple else value, source)
        except SettingError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return given


# ---------------------------------------------------------------------------- Python config files


def read_config(location: str) -> tuple[dict[str, Any], str]:
    """(the module-level names, how to name the source) of a config given as gunicorn does: a file path,
    `file:PATH`, or `python:package.module` (a module on the import path, imported; again on each call, so a
    HUP reads it afresh). A file is run as gunicorn runs it: as the module `__config__`."""
    if location.startswith("python:"):
        return _read_module(location[len("python:") :].strip()), f"config module {location}"
    path = location.removeprefix("file:")
    if not os.path.isfile(path):
        raise SettingError(f"config file {path!r} not found")
    try:
        loader = importlib.machinery.SourceFileLoader("__config__", path)
        spec = importlib.util.spec_from_file_location("__config__", path, loader=loader)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["__config__"] = module  # as gunicorn: what the file defines can be found by that name
        spec.loader.exec_module(module)
    except SettingError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a config file is user code: all it raises is one line
        raise SettingError(f"config file {path!r} failed to run: {type(exc).__name__}: {exc}") from None
    return vars(module), f"config file {path}"


def _read_module(name: str) -> dict[str, Any]:
    if not name:
        raise SettingError("-c python: needs a module name, e.g. -c python:myproject.gunicorn_conf")
    try:
        module = sys.modules.get(name)
        module = importlib.reload(module) if module is not None else importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise SettingError(
                f"config module {name!r} not found on the import path (searched from "
                f"{os.getcwd()}): give -c python:package.module, or a file's path"
            ) from None
        raise SettingError(f"config module {name!r} failed to import: {type(exc).__name__}: {exc}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a config module is user code: all it raises is one line
        raise SettingError(f"config module {name!r} failed to import: {type(exc).__name__}: {exc}") from None
    return vars(module)


def load_python_config(location: str, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A gunicorn config file (or `python:` module): the names that are settings, corral's or gunicorn's.

    As gunicorn, every other name is the file's own (helper variables, imports, `annotations` of
    `from __future__ import annotations`, a structlog `pre_chain`...) and is ignored; one warning names those
    that look like a misspelt setting. gunicorn's own keys are carried over (`peer_names`); each key that
    means something else here is accepted with a warning saying what differs; every bad value is raised at
    once as ConfigProblems."""
    namespace, source = read_config(location)
    warn = warn or stderr_warning
    values = {}
    ignored = []
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if key in REGISTRY or key in GUNICORN:
            declared = REGISTRY.get(key)
            # gunicorn's list settings take a lone string as one item (`raw_env = "ALLOWED=a,b"`): a comma in
            # it is no separator, as it is in a CORRAL_* variable.
            values[key] = [value] if declared is not None and declared.multiple and isinstance(value, str) else value
        elif not key.isupper():  # UPPER_CASE: a constant of the file's own, never a setting
            ignored.append(key)
    misspelt = misspellings(ignored)
    if misspelt:
        listed = ", ".join(f"{name!r} (did you mean {right!r}?)" for name, right in misspelt)
        warn(f"{source}: not a setting, ignored: {listed}")
    return from_mapping(values, source, warn)


def from_mapping(values: Mapping[str, Any], source: str, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Settings from a config file's keys, validated, naming the file; every problem reported at once. A key
    that is no setting is a problem: pyproject's [tool.corral] is a table of settings only, and a Python
    config file passes only its settings (see `load_python_config`)."""
    found: dict[str, Any] = {}
    problems: list[str] = []
    warn = warn or stderr_warning
    for key, raw in values.items():
        name = key.replace("-", "_") if "-" in key and key.replace("-", "_") in REGISTRY else key
        declared = REGISTRY.get(name)
        entry = GUNICORN.get(name)
        if declared is None and entry is not None:
            if entry.kind == "alias":
                declared = REGISTRY[entry.corral]
            elif entry.kind in ("noop", "refuse") and _at_default(raw, entry.default):
                continue  # asks for nothing: gunicorn's own default
            elif entry.kind == "noop":
                warn(f"{source}: gunicorn's {name!r} is ignored: {entry.note}")
                continue
            elif entry.kind == "refuse":
                problems.append(f"{source}: gunicorn's {name!r} is not supported{suggest(name)}")
                continue
            else:  # gunicorn's command-line-only names (config, check_config, print_config)
                if name != "config" and raw:
                    warn(f"{source}: {name!r} is read from the command line only (--{name.replace('_', '-')})")
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


def _at_default(value: Any, default: Any) -> bool:
    """The value asks for nothing: gunicorn's default (a comma list written as a list too, as gunicorn parses
    it: `http_protocols = ["h1"]`), or an empty value where the default is none."""
    try:
        if value == default:
            return True
        if isinstance(default, str) and type(value) in (list, tuple):
            return list(value) == [item.strip() for item in default.split(",")]
    except Exception:  # noqa: BLE001 - an object whose == raises is not a default
        return False
    return default in (None, []) and (value is None or value in ("", [], (), {}))


def misspellings(names: Iterable[str], prefix: str = "") -> list[tuple[str, str]]:
    """(name, the setting it looks like) for each of `names` within a typo of a setting's name (corral's or
    gunicorn's): one edit (two for names of 10 characters or more), a transposition counting as one;
    `prefix` (CORRAL_) is taken off before comparing and put back on the answer.

    Edit distance rather than difflib's ratio, and a name made of a setting's name plus a word of its own
    (`use_loglevel`, `timeout_str`, `graceful_timeout_str`, `bind_env`) is a helper named after the
    setting, not a misspelling of it: `wokers`, `keepalvie`, `max_requests_jiter` and `log_level` are."""
    candidates = sorted(set(REGISTRY) | set(GUNICORN))
    found = []
    for name in names:
        key = name[len(prefix) :].lower() if prefix else name
        allowed = 1 if len(key) < 10 else 2
        best = min(candidates, key=lambda candidate: _distance(key, candidate, allowed + 1))
        if _distance(key, best, allowed + 1) > allowed or _named_after(key, best):
            continue
        found.append((name, prefix + best.upper() if prefix else best))
    return found


def _named_after(name: str, setting: str) -> bool:
    return name.startswith(setting + "_") or name.endswith("_" + setting)


def _distance(a: str, b: str, cap: int) -> int:
    """Optimal-string-alignment edit distance (a transposition is one edit), giving up at `cap`."""
    if abs(len(a) - len(b)) >= cap:
        return cap
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) >= cap:
            return cap
        previous2, previous = previous, current
    return min(previous[-1], cap)


def stderr_warning(message: str) -> None:
    """The warning line of a configuration problem that does not stop the start."""
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


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """The one warning about CORRAL_* variables that are no setting but look like a misspelt one (the
    others are a deploy script's own, CORRAL_SRC or CORRAL_HOME, and none of corral's business)."""
    misspelt = misspellings(unknown_env(environ), prefix="CORRAL_")
    if not misspelt:
        return []
    listed = ", ".join(f"{name} (did you mean {right}?)" for name, right in misspelt)
    return [f"environment: not a setting, ignored: {listed}"]


#: gunicorn's defaults that come from the environment (its config.py): platforms set these variables for the
#: server (Heroku and Cloud Run set PORT, Heroku's buildpack WEB_CONCURRENCY and FORWARDED_ALLOW_IPS), and a
#: deployment that relies on them gives no flag at all. Each is the setting's default, below a config file.
GUNICORN_ENV_DEFAULTS = {
    "PORT": ("bind", lambda value: (f"0.0.0.0:{value}",)),
    "WEB_CONCURRENCY": ("workers", lambda value: value),
    "FORWARDED_ALLOW_IPS": ("forwarded_allow_ips", lambda value: value),
}


def gunicorn_env_defaults(environ: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """The settings whose default gunicorn takes from PORT, WEB_CONCURRENCY and FORWARDED_ALLOW_IPS."""
    found: dict[str, Any] = {}
    for variable, (name, value_of) in GUNICORN_ENV_DEFAULTS.items():
        if variable not in environ:
            continue
        try:
            found[name] = REGISTRY[name].parse(
                value_of(environ[variable]), f"environment variable {variable}, gunicorn's default"
            )
        except SettingError as exc:
            problems.append(str(exc))
    return found


def collect(
    cli: Mapping[str, Any],
    config_path: str | None,
    environ: Mapping[str, str] = os.environ,
    folder: str = ".",
    cmd_args: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
    problems: list[str] | None = None,
) -> Settings:
    """Resolve the effective settings from the command line, GUNICORN_CMD_ARGS/CORRAL_CMD_ARGS (`cmd_args`,
    parsed like the command line), the environment and the config file(s).

    Precedence: command line > *_CMD_ARGS > CORRAL_* > config file > pyproject.toml > gunicorn's defaults
    from PORT, WEB_CONCURRENCY, FORWARDED_ALLOW_IPS > default.
    Every problem of every source (and those already in `problems`) is raised at once as ConfigProblems."""
    warn = warn or stderr_warning
    problems = list(problems or [])
    file_values = gunicorn_env_defaults(environ, problems)
    file_values.update(_gathered(problems, load_pyproject, folder))
    if config_path:
        file_values.update(_gathered(problems, load_python_config, config_path, warn))
    for line in env_warnings(environ):
        warn(line)
    env = from_env(environ, problems)
    env.update(cli_values(cmd_args or {}, "GUNICORN_CMD_ARGS/CORRAL_CMD_ARGS", problems))
    given = cli_values(cli, "command line", problems)
    if problems:
        raise ConfigProblems(problems)
    return resolve(Sources(file=file_values, env=env, cli=given))


def _gathered(problems: list[str], load: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    try:
        return load(*args)
    except ConfigProblems as exc:
        problems.extend(exc.problems)
    except SettingError as exc:
        problems.append(str(exc))
    return {}
