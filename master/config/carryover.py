"""What a gunicorn command line or config file asks of the process, applied once the settings are known.

- `raw_env` (-e KEY=VALUE) goes into the master's environment, so the app check, --preload and every
  worker (forked) see it, as with gunicorn;
- `pythonpath` goes to the front of sys.path, before the app is imported;
- `worker_class` is resolved by what the class is: sync/gthread (or a subclass) mean WSGI, served as WSGI
  with --interface auto; a UvicornWorker (or a project's subclass) means ASGI with its CONFIG_KWARGS;
- flags of gunicorn and the other servers that corral does not declare: `scan_flags` reports all of them in
  one run (a gunicorn flag with nothing to do in corral is dropped with a warning, so such a command line
  still starts).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from corral.master.config.peer_names import PEER_FLAGS, gunicorn_flags
from corral.master.config.sources import ConfigProblems, stderr_warning, suggest
from corral.shared.settings import REGISTRY, SettingError, Settings
from corral.shared.worker_class import WSGI, WorkerClassError, describe, kwargs_settings, resolve

__all__ = ["apply_environment", "effective", "scan_flags"]


def apply_environment(settings: Settings) -> None:
    """raw_env into os.environ, pythonpath in front of sys.path (the master's; workers inherit both)."""
    for pair in settings.raw_env:
        key, _, value = pair.partition("=")
        os.environ[key.strip()] = value
    for path in reversed(settings.pythonpath):
        path = os.path.abspath(path)
        if path not in sys.path:
            sys.path.insert(0, path)


def effective(settings: Settings, warn: Callable[[str], None] | None = None) -> Settings:
    """Settings with the carried-over meanings resolved, by what the worker class is
    (`corral.shared.worker_class`).

    WSGI (sync, gthread, or a subclass): the app is served as WSGI, and gunicorn's `timeout` bounded each
    request there (a request outliving it killed the worker), so it becomes the request deadline unless
    --request-timeout is set: a late request gets its 504 and the others in the worker carry on.
    ASGI (a UvicornWorker, or a project's subclass): its CONFIG_KWARGS win over the other sources, as they
    win over gunicorn's settings in uvicorn; those with no meaning here are named in one warning."""
    if not settings.worker_class:
        return settings
    try:
        worker = resolve(settings.worker_class)
    except WorkerClassError as exc:
        raise ConfigProblems([f"invalid value for {REGISTRY['worker_class'].cli_name}: {exc}"]) from None
    changes: dict[str, object] = {}
    if worker.interface == WSGI:
        if settings.interface == "auto":
            changes["interface"] = "wsgi"
        if not settings.request_timeout and settings.timeout:
            changes["request_timeout"] = settings.timeout
    else:
        applied, ignored = kwargs_settings(worker.config_kwargs, settings.workers)
        problems = []
        for name, value in applied.items():
            try:
                changes[name] = REGISTRY[name].parse(value, f"CONFIG_KWARGS of {worker.path}")
            except SettingError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigProblems(problems)
        line = describe(worker, ignored)
        if line:
            (warn or stderr_warning)(line)
    return settings.replace(**changes) if changes else settings


def scan_flags(args: list[str], known: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(args without the dropped flags, problems, warnings) for every option corral does not declare."""
    known = set(known)
    gunicorn = gunicorn_flags()
    kept: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            kept.extend(args[index - 1 :])
            break
        if not arg.startswith("-") or arg == "-" or arg[1:2].isdigit():
            kept.append(arg)
            continue
        flag, equals, _ = arg.partition("=")
        if flag in known:
            kept.append(arg)
            continue
        if not flag.startswith("--") and len(flag) > 2 and flag[:2] in known:
            kept.append(arg)  # -w4: a short option with its value attached
            continue
        found = gunicorn.get(flag)
        if found is not None and found[1].kind in ("alias", "same"):
            # Another spelling of a corral setting (--log-config-json, --limit-request-field_size).
            target = REGISTRY.get(found[1].corral if found[1].kind == "alias" else found[0])
            if target is not None:
                kept.append(target.cli_name + equals + arg[len(flag) + len(equals) :])
                continue
        if found is not None and found[1].kind == "noop":
            _name, entry = found
            if entry.takes_value and not equals and index < len(args) and not args[index].startswith("-"):
                index += 1  # its value goes too (a flag next is not its value: argparse would not take it)
            warnings.append(f"gunicorn's {flag} is ignored: {entry.note}")
            continue
        if found is not None:
            problems.append(f"gunicorn's {flag} is not supported{suggest(found[0])}")
        elif flag in PEER_FLAGS:
            problems.append(f"no such option {flag}{suggest(flag)}")
        else:
            problems.append(f"no such option {flag}{_spelling(flag, known)}")
    return kept, problems, warnings


def _spelling(flag: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(flag, sorted(k for k in known if k.startswith("--")), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""
