"""`serve [OPTIONS] APP` and `serve status --pid FILE`: the command line, and the one place exit codes are decided.

Errors are raised as typed exceptions wherever they are found (settings, pid file, app import, bind,
crash loop) and turned into one line and an exit code here:

    0  clean stop                    2  bad flag, value, config file or pid file (CONFIG_ERROR)
    4  the app does not import       5  workers kept failing to boot (HALT_CRASH_LOOP)
    6  cannot bind an address (BIND_ERROR)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from corral.master.config.carryover import apply_environment, effective, scan_flags
from corral.master.config.sources import ConfigProblems, collect, find_config, settings_options
from corral.shared.exitcodes import APP_IMPORT_ERROR, BIND_ERROR, CONFIG_ERROR, HALT_CRASH_LOOP, OK
from corral.shared.settings import REGISTRY, SettingError, Settings
from corral.worker.http1.native import describe as describe_parser

__all__ = ["main", "serve", "status"]

PROG = "serve"


def _fail(message: str, code: int) -> int:
    """One `serve: error:` line per problem (a config file may have several, all reported in one run)."""
    lines = message.split("\n") if isinstance(message, str) else [str(message)]
    if not lines[0].startswith("Traceback") and len(lines) > 1 and not any(line.startswith("  ") for line in lines):
        for line in lines:
            click.echo(f"{PROG}: error: {line}", err=True)
    else:
        click.echo(f"{PROG}: error: {message}", err=True)
    return code


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("app", required=False, metavar="APP")
@click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    metavar="FILE",
    help="A Python config file (gunicorn's format: the module-level names that are settings are "
    "read, the others ignored), or python:package.module for one on the import path. Without "
    "it, ./corral.conf.py, else ./gunicorn.conf.py, is loaded when present.",
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Check the settings and import the app (in a short-lived child), then exit: 0 when both "
    "are good, 2 for a bad setting, 4 when the app does not import.",
)
@click.option("--print-config", is_flag=True, help="Print the effective settings (name = value) and exit.")
# The version is looked up only when asked: importlib.metadata costs ~20 ms of every start.
@click.version_option(
    None, "--version", package_name="corral", prog_name="corral", message=f"%(prog)s %(version)s ({describe_parser()})"
)
@settings_options
def serve(app: str | None, config_path: str | None, check_config: bool, print_config: bool, **params: Any) -> int:
    """Serve APP (module:attribute, or module:factory() with --factory) with a master and forked workers.

    Signals to the master: TERM graceful stop, INT/QUIT quick stop, HUP reload settings and app (new
    workers before old ones stop), TTIN/TTOU one worker more/less, USR1 reopen log files, USR2 upgrade
    to a new master on the same sockets.
    """
    environ = dict(os.environ)
    start_cwd = os.getcwd()
    try:
        config_path, settings = _settings(params, config_path, environ, start_cwd)
    except SettingError as exc:
        return _fail(str(exc), CONFIG_ERROR)

    def load() -> Settings:  # a HUP: every source read again, as at the start
        return _settings(params, config_path, dict(os.environ), start_cwd)[1]

    app = app or settings.wsgi_app
    if print_config:
        for name, declared in REGISTRY.items():
            click.echo(f"{name} = {declared.show(getattr(settings, name))}")
        return OK
    if not app:
        return _fail("missing the application: serve [OPTIONS] APP (e.g. myproject.asgi:application)", CONFIG_ERROR)
    if settings.reload and settings.preload_app:
        return _fail(
            "--reload cannot work with --preload: the app is imported once in the master, so new code "
            "needs a new master (USR2); drop --preload while developing",
            CONFIG_ERROR,
        )
    if check_config:
        return _check(app, settings)
    return run(app, settings, load, config_path)


def _settings(
    params: dict[str, Any],
    config_path: str | None,
    environ: dict[str, str],
    cwd: str,
    problems: list[str] | None = None,
) -> tuple[str | None, Settings]:
    """(the config's location, the effective settings) from every source; raises ConfigProblems naming
    every bad flag, value and key of the run (and `problems`, those found before)."""
    # As gunicorn: the working folder is on the import path before the config is read, so that a config
    # (or `-c python:pkg.conf`, or a -k path) may import the project's modules.
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    cmd_args, cmd_problems = _cmd_args(environ)
    config_path = _config_location(config_path or cmd_args.pop("config_path", None), cwd)
    settings = collect(
        params, config_path, environ=environ, folder=cwd, cmd_args=cmd_args, problems=[*(problems or ()), *cmd_problems]
    )
    apply_environment(settings)  # -e and --pythonpath before a -k path is imported
    return config_path, effective(settings)


def _config_location(location: str | None, cwd: str) -> str | None:
    """-c's value as gunicorn reads it: `python:package.module` as is, `file:PATH` or PATH made absolute
    (a HUP reads it again after --chdir); without -c, ./corral.conf.py or ./gunicorn.conf.py."""
    if not location:
        return find_config(cwd)
    if location.startswith("python:"):
        return location
    return os.path.abspath(os.path.join(cwd, location.removeprefix("file:")))


def _cmd_args(environ: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(given, problems): GUNICORN_CMD_ARGS then CORRAL_CMD_ARGS (which wins), parsed as command lines
    (gunicorn's order: above the config file, below the real command line; a -c there names the config
    file when the command line gives none). Every unknown flag in them is a problem, as on the command
    line; the values are checked with the others' (`collect`)."""
    import shlex

    given: dict[str, Any] = {}
    problems: list[str] = []
    for variable in ("GUNICORN_CMD_ARGS", "CORRAL_CMD_ARGS"):
        text = environ.get(variable, "").strip()
        if not text:
            continue
        try:
            args = shlex.split(text)
        except ValueError as exc:
            problems.append(f"{variable}: {exc}")
            continue
        args, flag_problems, warnings = scan_flags(args, _known_options())
        for warning in warnings:
            click.echo(f"{PROG}: warning: {variable}: {warning}", err=True)
        problems += [f"{variable}: {problem}" for problem in flag_problems]
        try:
            context = serve.make_context(PROG, args, resilient_parsing=bool(flag_problems))
        except click.UsageError as exc:
            problems.append(f"{variable}: {exc.format_message()}")
            continue
        given.update(
            {
                k: v
                for k, v in context.params.items()
                if v is not None and v != () and k not in ("app", "check_config", "print_config")
            }
        )
    return given, problems


def _known_options() -> set[str]:
    options = {opt for param in serve.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}
    return options | {"-h", "--help"}  # click adds the help option itself


def _chdir(settings: Settings) -> None:
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            raise SettingError(f"invalid value for --chdir: {settings.chdir!r}: {exc.strerror or exc}") from None


def _check(app: str, settings: Settings) -> int:
    """--check-config: gunicorn's meaning, the app must import (in a child: the check leaves no trace)."""
    from corral.master.arbiter.appcheck import AppCheckError, check_app

    try:
        _chdir(settings)
        check_app(app, settings)
    except SettingError as exc:
        return _fail(str(exc), CONFIG_ERROR)
    except AppCheckError as exc:
        return _fail(str(exc), APP_IMPORT_ERROR)
    click.echo(f"{PROG}: settings and application {app!r} are good", err=True)
    return OK


def run(app: str, settings: Settings, load: Any, config_path: str | None = None) -> int:
    # Imported here: `serve --help` and `--print-config` need none of this.
    from corral.master.arbiter.loop import AppCheckError, Arbiter, CrashLoop
    from corral.master.listen.sockets import BindError
    from corral.master.observe.logs import setup_logging
    from corral.master.status.pidfile import PidfileError
    from corral.worker.app.load import AppImportError

    try:
        _chdir(settings)
    except SettingError as exc:
        return _fail(str(exc), CONFIG_ERROR)
    try:
        setup_logging(settings)
        if config_path:
            logging.getLogger("corral.master").info("Loaded config file %s", config_path)
        return Arbiter(app, settings, reload=load).run()
    except (SettingError, PidfileError) as exc:
        return _fail(str(exc), CONFIG_ERROR)
    except AppCheckError as exc:
        return _fail(str(exc), APP_IMPORT_ERROR)
    except AppImportError as exc:  # --preload: imported in the master itself
        import traceback

        text = str(exc)
        if exc.__cause__ is not None:
            text += "\n" + "".join(traceback.format_exception(exc.__cause__)).rstrip()
        return _fail(text, APP_IMPORT_ERROR)
    except BindError as exc:
        return _fail(str(exc), BIND_ERROR)
    except CrashLoop as exc:
        return _fail(str(exc), HALT_CRASH_LOOP)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-p",
    "--pid",
    "pidfile",
    default=None,
    metavar="FILE",
    help="The master's pid file (its --pid); default: the one master started without --pid.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the status document as JSON (one line per update with --watch)."
)
@click.option("--watch", is_flag=True, help="Show it again every --interval seconds until Ctrl-C.")
@click.option(
    "-n",
    "--interval",
    default=2.0,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Seconds between updates with --watch (default 2).",
)
def status(pidfile: str | None, as_json: bool, watch: bool, interval: float) -> int:
    """Show the master's figures (requests/s, p50/p99, pool, restarts by cause) and its workers (pid, age,
    requests, instances / limit, RSS, CPU%)."""
    import json
    import time

    from corral.master.status.control import ControlError, format_table, query
    from corral.master.status.discover import NoMaster, find_master

    if pidfile is None:
        try:
            pidfile = find_master()
        except NoMaster as exc:
            return _fail(str(exc), 1)
    while True:
        try:
            document = query(pidfile)
        except ControlError as exc:
            return _fail(str(exc), 1)
        if as_json:
            click.echo(json.dumps(document, separators=(",", ":")) if watch else json.dumps(document, indent=2))
        else:
            if watch and sys.stdout.isatty():
                click.clear()
            click.echo(format_table(document) + ("\n" if watch else ""))
        if not watch:
            return OK
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return OK


def _invoke(command: click.Command, args: Sequence[str], prog: str) -> int:
    try:
        result = command.main(list(args), prog_name=prog, standalone_mode=False)
    except click.exceptions.NoSuchOption as exc:
        message = f"no such option {exc.option_name}"
        if exc.possibilities:
            import difflib

            best = difflib.get_close_matches(exc.option_name, list(exc.possibilities), n=1, cutoff=0)
            message += f"; did you mean {best[0]}?"
        return _fail(message, CONFIG_ERROR)
    except click.UsageError as exc:
        return _fail(exc.format_message().replace("\n", " "), CONFIG_ERROR)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 1
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    return result if isinstance(result, int) else OK


def _scan(args: list[str]) -> tuple[list[str], int | None]:
    """Every unknown or unsupported flag, and every bad value and config key, reported in one run."""
    args, problems, warnings = scan_flags(args, _known_options())
    for warning in warnings:
        click.echo(f"{PROG}: warning: {warning}", err=True)
    if not problems:
        return args, None
    # The rest of the command line is still read (what an unknown flag's value was cannot be told, so what
    # click cannot place is left out), and its values, the environment's and the config file's are checked
    # too: one run names every problem.
    try:
        context = serve.make_context(PROG, list(args), resilient_parsing=True)
    except click.UsageError as exc:
        problems.append(exc.format_message().replace("\n", " "))
        return args, _fail("\n".join(problems), CONFIG_ERROR)
    params = dict(context.params)
    config_path = params.pop("config_path", None)
    for name in ("app", "check_config", "print_config"):
        params.pop(name, None)
    try:
        _settings(params, config_path, dict(os.environ), os.getcwd(), problems)
    except ConfigProblems as exc:
        problems = exc.problems
    except SettingError as exc:
        problems.append(str(exc))
    return args, _fail("\n".join(problems), CONFIG_ERROR)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "status":
        sys.exit(_invoke(status, args[1:], f"{PROG} status"))
    args, failed = _scan(args)
    if failed is not None:
        sys.exit(failed)
    sys.exit(_invoke(serve, args, PROG))
