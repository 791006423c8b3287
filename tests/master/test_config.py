"""Settings from the command line, CORRAL_* variables, a Python config file and pyproject.toml."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from corral.master.config.sources import (
    ConfigProblems,
    collect,
    from_mapping,
    load_pyproject,
    load_python_config,
    misspellings,
    settings_options,
    suggest,
)
from corral.shared.settings import SettingError


@click.command()
@click.option("-c", "--config", "config_path", default=None)
@settings_options
def show(config_path, **params):
    try:
        settings = collect(params, config_path, environ=click.get_current_context().obj or {})
    except SettingError as exc:
        raise click.UsageError(str(exc)) from None
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
    result = run(
        [
            "-w",
            "3",
            "--threads",
            "4",
            "--keep-alive",
            "1.5",
            "-b",
            "127.0.0.1:1",
            "-b",
            "unix:/tmp/x",
            "--reuse-port",
            "--no-server-header",
        ]
    )
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


def test_a_config_files_other_names_are_ignored_with_one_warning_for_the_misspelt(tmp_path):
    """As gunicorn: only the names that are settings are read. Helper variables (the shapes of well-known
    Docker images' gunicorn_conf.py), imports, `annotations` and a structlog pre_chain pass silently; the
    misspelt setting is named, with the right name, in one warning line."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from __future__ import annotations\n"
        "import multiprocessing, os\n"
        "workers_per_core_str = os.getenv('WORKERS_PER_CORE', '1')\n"
        "web_concurrency_str = os.getenv('WEB_CONCURRENCY', None)\n"
        "use_loglevel = os.getenv('LOG_LEVEL', 'info')\n"
        "cores = multiprocessing.cpu_count()\n"
        "workers_per_core = float(workers_per_core_str)\n"
        "default_web_concurrency = max(int(workers_per_core * cores), 2)\n"
        "accesslog_var = os.getenv('ACCESS_LOG', '-')\n"
        "use_accesslog = accesslog_var or None\n"
        "pre_chain = [object(), object()]\n"
        "log_data = {'loglevel': use_loglevel}\n"
        "MARKS = 'marks'\n"
        "loglevel = use_loglevel\n"
        "workers = 3\n"
        "keepalvie = 120\n"
        "wokers = 2\n"
        "def helper():\n    return 1\n"
    )
    warnings: list[str] = []
    values = load_python_config(str(conf), warn=warnings.append)
    assert values == {"loglevel": "info", "workers": 3}
    assert warnings == [
        (
            f"config file {conf}: not a setting, ignored: 'keepalvie' (did you mean 'keepalive'?), "
            "'wokers' (did you mean 'workers'?)"
        )
    ]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("wokers", "workers"),
        ("keepalvie", "keepalive"),
        ("timeoutt", "timeout"),
        ("graceful_timout", "graceful_timeout"),
        ("worker_tmpdir", "worker_tmp_dir"),
        ("post_forks", "post_fork"),
        ("use_loglevel", None),
        ("workers_per_core", None),
        ("timeout_str", None),
        ("bind_env", None),
        ("host", None),
        ("port", None),
        ("cores", None),
        ("pre_chain", None),
        ("annotations", None),
        ("accesslog_var", None),
        ("use_max_workers", None),
        ("log_data", None),
        ("graceful_timeout_str", None),
        ("keepalive_str", None),
        ("errorlog_var", None),
        ("use_bind", None),
        ("max_requests_jiter", "max_requests_jitter"),
        ("log_level", "loglevel"),
    ],
)
def test_misspellings_are_typos_of_a_setting_not_helpers_named_after_one(name, expected):
    assert misspellings([name]) == ([(name, expected)] if expected else [])


def test_python_module_config_and_file_prefix(tmp_path, monkeypatch):
    package = tmp_path / "deploy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "gunicorn_conf.py").write_text("workers = 4\nhelper_value = 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_python_config("python:deploy.gunicorn_conf") == {"workers": 4}
    (package / "gunicorn_conf.py").write_text("workers = 5\n")  # read again (a HUP reloads the module)
    assert load_python_config("python:deploy.gunicorn_conf") == {"workers": 5}
    with pytest.raises(SettingError, match=r"config module 'deploy.nothing' not found on the import path"):
        load_python_config("python:deploy.nothing")
    assert load_python_config(f"file:{package / 'gunicorn_conf.py'}") == {"workers": 5}
    plain = tmp_path / "gunicorn.cfg"  # gunicorn also runs a file without a .py extension
    plain.write_text("threads = 7\n")
    assert load_python_config(str(plain)) == {"threads": 7}


def test_pyproject_keys_stay_strict():
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
    conf.write_text("raw_env = 'ALLOWED_HOSTS=a.example,b.example'\nbind = '127.0.0.1:9000'\ncheck_config = False\n")
    assert load_python_config(str(conf), warn=pytest.fail) == {  # a lone string is one item, as in gunicorn
        "raw_env": ("ALLOWED_HOSTS=a.example,b.example",),
        "bind": ("127.0.0.1:9000",),
    }
    assert callable(values["post_fork"])  # a server hook: carried over, not ignored


def test_pyproject_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.corral]\nworkers = 5\nkeep-alive = 2\n")
    with pytest.raises(SettingError, match=r"unknown setting 'keep-alive'.*did you mean 'keepalive'"):
        load_pyproject(str(tmp_path))
    (tmp_path / "pyproject.toml").write_text("[tool.corral]\nworkers = 5\nkeepalive = 2\n")
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
    conf.write_text(
        "wokers = 2\nprotocol = 'uwsgi'\nworker_tmp_dir = '/dev/shm'\ndaemon = False\n"
        "reload = True\nasgi_lifespan = 'off'\nworkers = 'lots'\nhttp_protocols = 'h2,h1'\n"
        "spew = False\ndirty_apps = ['x:y']\n"
    )
    warnings = []
    with pytest.raises(ConfigProblems) as raised:
        load_python_config(str(conf), warn=warnings.append)
    problems = raised.value.problems
    assert len(problems) == 3, problems  # daemon = False and spew = False are gunicorn's defaults
    assert "gunicorn's 'protocol' is not supported; corral has no equivalent (corral speaks HTTP only" in problems[0]
    assert "invalid value for --workers" in problems[1]
    assert "gunicorn's 'dirty_apps' is not supported" in problems[2] and "task queue" in problems[2]
    assert len(warnings) == 3, warnings
    assert "'wokers' (did you mean 'workers'?)" in warnings[0]
    assert "gunicorn's 'worker_tmp_dir' is ignored: liveness is a heartbeat" in warnings[1]
    assert "gunicorn's 'http_protocols' is ignored: corral's --http chooses the versions" in warnings[2]


def test_gunicorn_defaults_written_as_lists_ask_for_nothing(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "forwarder_headers = ['SCRIPT_NAME', 'PATH_INFO']\nhttp_protocols = ['h1']\n"
        "uwsgi_allow_ips = ['127.0.0.1', '::1']\n"
    )
    warnings: list[str] = []
    load_python_config(str(conf), warn=warnings.append)
    assert warnings == []


def test_every_bad_value_of_every_source_in_one_pass(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("threads = 'many'\n")
    (tmp_path / "pyproject.toml").write_text("[tool.corral]\nbacklog = -1\n")
    with pytest.raises(ConfigProblems) as raised:
        collect(
            {"workers": "lots", "umask": "999", "loglevel": "loud"},
            str(conf),
            folder=str(tmp_path),
            environ={"CORRAL_TIMEOUT": "soon", "CORRAL_HOME": "/srv", "CORRAL_SRC": "/src"},
            cmd_args={"keepalive": "long"},
            warn=lambda _: None,
        )
    problems = raised.value.problems
    assert [p.split(" (from")[0] for p in problems] == [
        "invalid value for --backlog",
        "invalid value for --threads",
        "invalid value for --timeout",
        "invalid value for --keep-alive",
        "invalid value for --workers",
        "invalid value for --umask",
        "invalid value for --log-level",
    ], problems


def test_environment_variables_that_are_no_setting_are_ignored(tmp_path):
    warnings: list[str] = []
    settings = collect(
        {},
        None,
        environ={"CORRAL_SRC": "/src", "CORRAL_HOME": "/srv", "CORRAL_TIMEOUTT": "3", "CORRAL_WORKERS": "2"},
        folder=str(tmp_path),
        warn=warnings.append,
    )
    assert settings.workers == 2
    assert warnings == ["environment: not a setting, ignored: CORRAL_TIMEOUTT (did you mean CORRAL_TIMEOUT?)"]


def test_gunicorn_aliases_carry_the_value(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("asgi_lifespan = 'off'\nwebsocket_max_message_size = 1024\nreload = True\n")
    assert load_python_config(str(conf)) == {"lifespan": "off", "ws_max_size": 1024, "reload": True}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("reload", ""),  # a corral setting now: never "preload"
        ("certfile", ""),  # a corral setting now: never "error_logfile"
        ("http2_cleartext", "corral has no equivalent"),
        ("--port", "-b/--bind HOST:PORT"),
        ("--limit-max-requests", "--max-requests"),
        ("wokers", "did you mean 'workers'?"),
        ("worker_connections", "--max-applications"),
    ],
)
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
    from corral.master.config.carryover import effective
    from corral.shared.settings import Settings

    gthread = effective(Settings(worker_class="gthread", timeout=2))
    assert gthread.interface == "wsgi" and gthread.request_timeout == 2.0  # gunicorn's timeout bounded requests
    assert effective(Settings(worker_class="sync", request_timeout=9)).request_timeout == 9.0
    uvicorn = effective(Settings(worker_class="uvicorn.workers.UvicornWorker", timeout=2))
    assert uvicorn.interface == "auto" and uvicorn.request_timeout == 0.0  # an event loop: the watchdog only
    with pytest.raises(SettingError, match="cannot run worker class 'eventlet'"):
        Settings(worker_class="eventlet")


def test_a_uvicorn_worker_subclass_applies_its_config_kwargs(tmp_path, monkeypatch):
    """CONFIG_KWARGS win over the other sources (as over gunicorn's settings in uvicorn); those without a
    meaning here are named in one warning."""
    pytest.importorskip("uvicorn.workers")
    from corral.master.config.carryover import effective
    from corral.shared import worker_class
    from corral.shared.settings import Settings

    (tmp_path / "proj_workers.py").write_text(
        "from uvicorn.workers import UvicornWorker\n"
        "class MyWorker(UvicornWorker):\n"
        "    CONFIG_KWARGS = {'loop': 'asyncio', 'http': 'h11', 'lifespan': 'off', 'root_path': '/api',\n"
        "                     'proxy_headers': False, 'limit_concurrency': 50}\n"
        "class BadWorker(UvicornWorker):\n"
        "    CONFIG_KWARGS = {'lifespan': 'sometimes', 'backlog': 'deep'}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    worker_class.clear_cache()
    warnings: list[str] = []
    settings = effective(
        Settings(worker_class="proj_workers.MyWorker", workers=2, root_path="/other"), warn=warnings.append
    )
    assert (settings.interface, settings.lifespan, settings.root_path) == ("auto", "off", "/api")
    assert settings.forwarded_allow_ips == () and settings.request_timeout == 0.0
    assert (settings.max_applications, settings.pool_full) == (100, "503")  # 50 per worker, 503 past it
    assert warnings == [
        (
            "-k proj_workers.MyWorker: CONFIG_KWARGS ignored: loop='asyncio' (corral always runs "
            "uvloop), http='h11' (corral always parses HTTP/1.1 with httptools)"
        )
    ]
    with pytest.raises(ConfigProblems) as raised:
        effective(Settings(worker_class="proj_workers.BadWorker"))
    assert [p.split(":")[0] for p in raised.value.problems] == [
        "invalid value for --lifespan (from CONFIG_KWARGS of proj_workers.BadWorker)",
        "invalid value for --backlog (from CONFIG_KWARGS of proj_workers.BadWorker)",
    ]
    worker_class.clear_cache()


def test_port_web_concurrency_and_forwarded_allow_ips_are_gunicorns_defaults(tmp_path):
    """As in gunicorn's config.py: PORT makes the default bind 0.0.0.0:$PORT, WEB_CONCURRENCY (Heroku's
    buildpack pads it: "02") and FORWARDED_ALLOW_IPS are defaults, below the config file and the rest."""
    environ = {"PORT": "5123", "WEB_CONCURRENCY": "02", "FORWARDED_ALLOW_IPS": "*"}
    settings = collect({}, None, environ=environ, folder=str(tmp_path))
    assert (settings.bind, settings.workers, settings.forwarded_allow_ips) == (("0.0.0.0:5123",), 2, ("*",))
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("bind = ['[::]:5123']\nworkers = 3\n")
    settings = collect({"workers": "4"}, str(conf), environ=environ, folder=str(tmp_path))
    assert (settings.bind, settings.workers) == (("[::]:5123",), 4)
    with pytest.raises(ConfigProblems) as caught:
        collect({}, None, environ={"WEB_CONCURRENCY": "many"}, folder=str(tmp_path))
    assert caught.value.problems == [
        (
            "invalid value for --workers (from environment variable WEB_CONCURRENCY, gunicorn's default): "
            "expected an integer, got 'many'"
        )
    ]
