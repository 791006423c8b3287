"""Settings from the command line, CORRAL_* variables, a Python config file and pyproject.toml."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from corral.master.config import (ConfigProblems, suggest, collect, from_mapping, load_pyproject, load_python_config,
                                  settings_options)
from corral.shared.settings import SettingError


@click.command()
@click.option("-c", "--config", "config_path", default=None)
@settings_options
def show(config_path, **params):
    try:
        settings = collect(params, config_path, environ=click.get_current_context().obj or {})
    except SettingError as exc:
        raise click.UsageError(str(exc))
    for name in ("workers", "threads", "keepalive", "bind", "reuse_port", "server_header", "backlog"):
        click.echo(f"{name}={getattr(settings, name)!r}")


def run(args, env=None):
    return CliRunner().invoke(show, args, obj=env or {})


@pytest.fixture(autouse=True)
def empty_folder(tmp_path, monkeypatch):
    """Run where no pyproject.toml is: the repository's own must not leak into these tests."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)


def test_every_setting_is_a_flag_and_values_convert():
    result = run(["-w", "3", "--threads", "4", "--keep-alive", "1.5", "-b", "127.0.0.1:1", "-b", "unix:/tmp/x",
                  "--reuse-port", "--no-server-header"])
    assert result.exit_code == 0, result.output
    assert "workers=3" in result.output
    assert "threads=4" in result.output
    assert "keepalive=1.5" in result.output
    assert "bind=('127.0.0.1:1', 'unix:/tmp/x')" in result.output
    assert "reuse_port=True" in result.output
    assert "server_header=False" in result.output


def test_bad_flag_value_is_one_line_naming_the_setting():
    result = run(["-w", "lots"])
    assert result.exit_code == 2
    assert "invalid value for --workers (from command line): expected an integer, got 'lots'" in result.output


def test_precedence_cli_env_file_default(tmp_path):
    conf = tmp_path / "corral.conf.py"
    conf.write_text("import os\nworkers = 2\nthreads = 3\nbacklog = 64\n\ndef helper():\n    return 1\n")
    env = {"CORRAL_WORKERS": "4", "CORRAL_THREADS": "5"}
    result = run(["-c", str(conf), "-w", "6"], env=env)
    assert result.exit_code == 0, result.output
    assert "workers=6" in result.output  # cli beats env and file
    assert "threads=5" in result.output  # env beats file
    assert "backlog=64" in result.output  # file beats default
    assert "keepalive=5.0" in result.output  # default


def test_unknown_config_key_suggests_the_right_one(tmp_path):
    conf = tmp_path / "corral.conf.py"
    conf.write_text("wokers = 2\n")
    with pytest.raises(SettingError, match=r"unknown setting 'wokers' in config file .*; did you mean 'workers'\?"):
        load_python_config(str(conf))
    with pytest.raises(SettingError, match="did you mean 'keepalive'"):
        from_mapping({"keepalvie": 3}, "corral.conf.py")


def test_gunicorn_config_file_carries_over(tmp_path, capsys):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "import multiprocessing\n"
        "bind = ['127.0.0.1:9000', 'unix:/tmp/app.sock']\n"
        "workers = 3\nbacklog = 100\nkeepalive = 4\ngraceful_timeout = 20\n"
        "limit_request_line = 4094\nlimit_request_fields = 50\nforwarded_allow_ips = '10.0.0.1,127.0.0.1'\n"
        "accesslog = '-'\naccess_log_format = '%(h)s %(r)s %(s)s'\n"
        "def post_fork(server, worker):\n    pass\n"
    )
    values = load_python_config(str(conf))
    assert values["bind"] == ("127.0.0.1:9000", "unix:/tmp/app.sock")
    assert values["workers"] == 3 and values["keepalive"] == 4.0
    assert values["forwarded_allow_ips"] == ("10.0.0.1", "127.0.0.1")
    assert callable(values["post_fork"])  # a server hook: carried over, not ignored


def test_pyproject_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.corral]\nworkers = 5\nkeep-alive = 2\n')
    with pytest.raises(SettingError, match="unknown setting 'keep-alive'.*did you mean 'keepalive'"):
        load_pyproject(str(tmp_path))
    (tmp_path / "pyproject.toml").write_text('[tool.corral]\nworkers = 5\nkeepalive = 2\n')
    assert load_pyproject(str(tmp_path)) == {"workers": 5, "keepalive": 2.0}
    assert load_pyproject(str(tmp_path / "nowhere")) == {}


def test_config_file_errors_are_one_line(tmp_path):
    with pytest.raises(SettingError, match="not found"):
        load_python_config(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("workers = 1 / 0\n")
    with pytest.raises(SettingError, match="failed to run: ZeroDivisionError"):
        load_python_config(str(broken))


def test_gunicorn_keys_all_reported_in_one_pass(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("wokers = 2\nhttp_protocols = 'h2,h1'\nworker_tmp_dir = '/dev/shm'\ndaemon = False\n"
                    "reload = True\nasgi_lifespan = 'off'\n")
    warnings = []
    with pytest.raises(ConfigProblems) as raised:
        load_python_config(str(conf), warn=warnings.append)
    problems = raised.value.problems
    assert len(problems) == 2, problems  # wokers and http_protocols; daemon = False is gunicorn's default
    assert "'wokers'" in problems[0] and "did you mean 'workers'?" in problems[0]
    # corral serves HTTP/2 now: the refusal points at its own setting
    assert "'http_protocols' is not supported; corral's equivalent is --http auto|1|2" in problems[1]
    assert "HTTP/2" in problems[1]
    assert len(warnings) == 1 and "worker_tmp_dir" in warnings[0]


def test_gunicorn_aliases_carry_the_value(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("asgi_lifespan = 'off'\nwebsocket_max_message_size = 1024\nreload = True\n")
    assert load_python_config(str(conf)) == {"lifespan": "off", "ws_max_size": 1024, "reload": True}


@pytest.mark.parametrize("name, expected", [
    ("reload", ""),  # a corral setting now: never "preload"
    ("certfile", ""),  # a corral setting now: never "error_logfile"
    ("http2_cleartext", "corral has no equivalent"),
    ("--port", "-b/--bind HOST:PORT"),
    ("--limit-max-requests", "--max-requests"),
    ("wokers", "did you mean 'workers'?"),
    ("worker_connections", "--max-applications"),
])
def test_suggestions_only_propose_the_same_meaning(name, expected):
    text = suggest(name)
    assert expected in text
    assert "preload" not in text and "error_logfile" not in text and "errorlog" not in text


def test_hook_settings_check_arity_and_import_dotted_paths():
    from corral.shared.settings import REGISTRY

    assert REGISTRY["child_exit"].parse("os.path.join") is __import__("os").path.join  # any arity (*paths)
    with pytest.raises(SettingError, match="takes 1 positional argument"):
        REGISTRY["post_fork"].parse(lambda server: None)
    with pytest.raises(SettingError, match="cannot import"):
        REGISTRY["when_ready"].parse("no_such_module_here.hook")
    assert not REGISTRY["post_fork"].cli  # config file only, as in gunicorn


def test_worker_class_carries_gunicorns_meaning():
    from corral.master.carryover import effective
    from corral.shared.settings import Settings

    gthread = effective(Settings(worker_class="gthread", timeout=2))
    assert gthread.interface == "wsgi" and gthread.request_timeout == 2.0  # gunicorn's timeout bounded requests
    assert effective(Settings(worker_class="sync", request_timeout=9)).request_timeout == 9.0
    uvicorn = effective(Settings(worker_class="uvicorn.workers.UvicornWorker", timeout=2))
    assert uvicorn.interface == "auto" and uvicorn.request_timeout == 0.0  # an event loop: the watchdog only
    with pytest.raises(SettingError, match="cannot run worker class 'eventlet'"):
        Settings(worker_class="eventlet")
