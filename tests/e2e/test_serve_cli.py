"""`serve` start-up errors: one line, the right exit code, before any worker exists; and --check-config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import APP_IMPORT_ERROR, BIND_ERROR, CONFIG_ERROR, OK
from serve_harness import WAIT, Master, clean_env, free_port, write_apps


@pytest.fixture
def apps(tmp_path):
    return write_apps(tmp_path)


def serve(args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "corral.master", *args],
        cwd=str(cwd),
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("serve: error: "), result.stderr
    assert "Traceback" not in result.stderr and "Usage" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--wokers", "2", "apps:app"], "no such option --wokers; did you mean --workers?"),
        (
            ["-w", "lots", "apps:app"],
            "invalid value for --workers (from command line): expected an integer, got 'lots'",
        ),
        (["--umask", "999", "apps:app"], "invalid value for --umask (from command line)"),
        (["--max-worker-memory", "lots", "apps:app"], "invalid value for --max-worker-memory"),
        (["--log-level", "loud", "apps:app"], "invalid value for --log-level (from command line): expected one of"),
        ([], "missing the application"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(apps, args, expected):
    result = serve(args, apps)
    assert result.returncode == CONFIG_ERROR
    assert expected in one_error_line(result)


def test_three_bad_values_are_three_lines_and_exit_2(apps):
    result = serve(["-w", "lots", "--umask", "999", "--log-level", "loud", "apps:app"], apps)
    assert result.returncode == CONFIG_ERROR
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("serve: error: invalid value for ") for line in lines), lines
    assert "--workers (from command line): expected an integer, got 'lots'" in lines[0]
    assert "--umask (from command line): must be between 0 and 0o777, got '999'" in lines[1]
    assert "--log-level (from command line): expected one of debug, info, warning, error, critical" in lines[2]


def test_a_misspelt_config_key_is_a_warning_as_gunicorn_ignores_it(apps):
    (apps / "corral.conf.py").write_text(
        "from __future__ import annotations\nimport os\n"
        "threads_str = os.getenv('THREADS', '3')\nuse_loglevel = 'info'\n"
        "wokers = 2\nthreads = int(threads_str)\nloglevel = use_loglevel\n"
    )
    result = serve(["-c", "corral.conf.py", "--print-config", "apps:app"], apps)
    assert result.returncode == OK, result.stderr
    assert "threads = 3" in result.stdout.splitlines()
    assert result.stderr.strip().splitlines() == [
        (
            f"serve: warning: config file {apps / 'corral.conf.py'}: not a setting, ignored: 'wokers' (did you mean "
            "'workers'?)"
        )
    ]


def test_environment_variables_that_are_no_setting_do_not_stop_serve(apps):
    result = serve(
        ["--check-config", "apps:app"], apps, env={"CORRAL_TIMEOUTT": "3", "CORRAL_SRC": "/src", "CORRAL_HOME": "/srv"}
    )
    assert result.returncode == OK, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "serve: warning: environment: not a setting, ignored: CORRAL_TIMEOUTT (did you mean CORRAL_TIMEOUT?)"
    ]


@pytest.mark.parametrize("preload", [False, True])
def test_missing_module_fails_fast_with_exit_4(apps, preload):
    result = serve(["-b", f"127.0.0.1:{free_port()}", "nope:app"] + (["--preload"] if preload else []), apps)
    assert result.returncode == APP_IMPORT_ERROR
    assert "module 'nope' not found" in one_error_line(result)


@pytest.mark.parametrize("preload", [False, True])
def test_app_import_error_prints_the_traceback_once(apps, preload):
    result = serve(["-b", f"127.0.0.1:{free_port()}", "broken:app"] + (["--preload"] if preload else []), apps)
    assert result.returncode == APP_IMPORT_ERROR, result.stderr
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr
    assert "no_such_module_anywhere" in result.stderr
    assert "Booting worker" not in result.stderr


def test_missing_attribute_suggests(apps):
    result = serve(["-b", f"127.0.0.1:{free_port()}", "apps:ap"], apps)
    assert result.returncode == APP_IMPORT_ERROR
    assert "attribute 'ap' not found in 'apps'; did you mean 'app'?" in one_error_line(result)


def test_address_in_use_is_one_line_and_exit_6(apps):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = serve(["-b", f"127.0.0.1:{port}", "apps:app"], apps)
    assert result.returncode == BIND_ERROR
    assert f"cannot bind 127.0.0.1:{port}: address already in use" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_print_config_prints_effective_settings(apps):
    (apps / "pyproject.toml").write_text("[tool.corral]\nthreads = 3\n")
    result = serve(
        ["--print-config", "-w", "3", "--umask", "027", "--max-worker-memory", "1G", "apps:app"],
        apps,
        env={"CORRAL_TIMEOUT": "7"},
    )
    assert result.returncode == OK, result.stderr
    lines = result.stdout.splitlines()
    for expected in (
        "workers = 3",
        "threads = 3",
        "timeout = 7.0",
        "umask = 0o027",
        "max_worker_memory = 1073741824",
        "bind = 127.0.0.1:8000",
    ):
        assert expected in lines


def test_version_names_the_request_parser():
    def version(**env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "corral.master", "--version"],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env={**os.environ, **env},
        )
        assert result.returncode == OK and result.stdout.startswith("corral ")
        return result.stdout.strip()

    assert version(CORRAL_NO_EXTENSIONS="1").endswith("(request parser: pure Python (CORRAL_NO_EXTENSIONS is set))")
    if os.environ.get("REQUIRE_NATIVE"):  # CI: installed from a wheel built with a compiler
        assert version(CORRAL_NO_EXTENSIONS="").endswith("(request parser: compiled)")


def test_pid_file_of_a_live_process_is_refused(apps, tmp_path):
    pidfile = tmp_path / "serve.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process is alive
    result = serve(["-b", f"127.0.0.1:{free_port()}", "--pid", str(pidfile), "apps:app"], apps)
    assert result.returncode == CONFIG_ERROR
    assert "belongs to running process" in one_error_line(result)
    assert pidfile.read_text() == f"{os.getpid()}\n"


def test_status_without_a_master(tmp_path):
    result = serve(["status", "--pid", str(tmp_path / "none.pid")], tmp_path)
    assert result.returncode == 1
    assert "no pid in" in one_error_line(result)


def test_stale_pid_file_is_replaced_and_removed_at_exit(apps, tmp_path):
    pidfile = tmp_path / "serve.pid"
    pidfile.write_text("999999999\n")
    port = free_port()
    master = Master(["-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "apps:app"], apps, port, pidfile)
    try:
        master.wait_workers(1)
        assert pidfile.read_text() == f"{master.pid}\n"
    finally:
        assert master.stop() == OK
    assert not pidfile.exists()


def test_check_config_imports_the_app_as_gunicorn_does(apps):
    good = serve(["--check-config", "apps:app"], apps)
    assert good.returncode == OK, good.stderr
    assert "Booting worker" not in good.stderr
    broken = serve(["--check-config", "broken:app"], apps)  # imports a module that does not exist
    assert broken.returncode == APP_IMPORT_ERROR
    assert "no_such_module_anywhere" in broken.stderr and broken.stderr.count("Traceback") == 1
    missing = serve(["--check-config", "apps:nothing"], apps)
    assert missing.returncode == APP_IMPORT_ERROR and "attribute 'nothing' not found" in missing.stderr


def test_every_unknown_flag_and_bad_value_in_one_run(apps):
    (apps / "gunicorn.conf.py").write_text("wokers = 2\ndaemon = True\nthreads = 2\nbacklog = 'deep'\n")
    result = serve(
        [
            "--http2-cleartext",
            "upgrade",
            "--reload-engine",
            "inotify",
            "--port",
            "8000",
            "--timout",
            "3",
            "-w",
            "lots",
            "--umask",
            "999",
            "apps:app",
        ],
        apps,
        env={"CORRAL_KEEPALIVE": "long", "CORRAL_SRC": "/src"},
    )
    assert result.returncode == CONFIG_ERROR
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("serve: error: ")]
    assert len(errors) == 7, result.stderr
    text = "\n".join(errors)
    assert "no such option --port; corral's equivalent is -b/--bind HOST:PORT" in text
    assert "no such option --timout; did you mean --timeout?" in text
    assert "gunicorn's 'daemon' is not supported" in text
    assert "invalid value for --backlog (from config file" in text
    assert "invalid value for --keep-alive (from environment variable CORRAL_KEEPALIVE)" in text
    assert "invalid value for --workers (from command line)" in text
    assert "invalid value for --umask (from command line)" in text
    warnings = [line for line in lines if line.startswith("serve: warning: ")]
    assert len(warnings) == 3, result.stderr  # dropped, not errors; 'wokers' is ignored as gunicorn does
    assert "--http2-cleartext is ignored: corral serves h2c" in warnings[0]
    assert "--reload-engine is ignored" in warnings[1]
    assert "'wokers' (did you mean 'workers'?)" in warnings[2]
    assert "preload" not in result.stderr and "error-logfile" not in result.stderr


def test_worker_class_gevent_is_one_line(apps):
    result = serve(["-k", "gevent", "apps:app"], apps)
    assert result.returncode == CONFIG_ERROR
    line = one_error_line(result)
    assert "cannot run worker class 'gevent' (monkey-patched greenlets)" in line and "gthread (WSGI)" in line


def test_reload_without_watchfiles_is_one_line(apps, tmp_path):
    # sitecustomize hides watchfiles from this process (a None in sys.modules: "not importable").
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text("import sys\nsys.modules['watchfiles'] = None\n")
    port = free_port()
    result = serve(["--reload", "-b", f"127.0.0.1:{port}", "apps:app"], apps, env={"PYTHONPATH": str(shadow)})
    assert result.returncode == CONFIG_ERROR
    assert "--reload needs watchfiles: pip install 'corral[reload]'" in one_error_line(result)


def test_help_lists_the_carried_over_flags(apps):
    result = serve(["--help"], apps)
    assert result.returncode == OK, result.stderr
    for flag in (
        "--reload",
        "--reload-dir",
        "--request-timeout",
        "--capture-output",
        "-k, --worker-class",
        "-e, --env",
        "--pythonpath",
        "--check-config",
        "--print-config",
    ):
        assert flag in result.stdout, flag
    assert "--post-fork" not in result.stdout  # hooks: config file only


def test_pythonpath_and_wsgi_app_from_the_config_file(apps):
    lib = apps / "lib"
    lib.mkdir()
    (lib / "libapp.py").write_text("def app(environ, start_response):\n    return []\n")
    assert serve(["--check-config", "libapp:app"], apps).returncode == APP_IMPORT_ERROR
    assert serve(["--check-config", "--pythonpath", "lib", "libapp:app"], apps).returncode == OK
    (apps / "gunicorn.conf.py").write_text("wsgi_app = 'libapp:app'\npythonpath = 'lib'\n")
    result = serve(["--check-config"], apps)  # no APP on the command line: the file's wsgi_app
    assert result.returncode == OK, result.stderr
    assert "'libapp:app' are good" in result.stderr


def test_cmd_args_precedence(apps):
    (apps / "corral.conf.py").write_text("workers = 2\nthreads = 2\nbacklog = 10\n")
    (apps / "gunicorn.conf.py").write_text("workers = 9\n")  # corral.conf.py wins when both exist
    result = serve(
        ["--print-config", "--backlog", "30", "apps:app"],
        apps,
        env={"GUNICORN_CMD_ARGS": "--threads 3 --backlog 20 -w 4", "CORRAL_CMD_ARGS": "-w 5"},
    )
    assert result.returncode == OK, result.stderr
    lines = result.stdout.splitlines()
    # command line > CORRAL_CMD_ARGS > GUNICORN_CMD_ARGS > config file
    assert "backlog = 30" in lines and "workers = 5" in lines and "threads = 3" in lines
    bad = serve(["apps:app"], apps, env={"GUNICORN_CMD_ARGS": "--daemon --no-such-flag -w lots"})
    assert bad.returncode == CONFIG_ERROR
    errors = bad.stderr.strip().splitlines()
    assert len(errors) == 3, bad.stderr
    assert "GUNICORN_CMD_ARGS: gunicorn's --daemon is not supported" in errors[0]
    assert "GUNICORN_CMD_ARGS: no such option --no-such-flag" in errors[1]
    assert "invalid value for --workers (from GUNICORN_CMD_ARGS/CORRAL_CMD_ARGS)" in errors[2]


def test_config_file_named_in_gunicorn_cmd_args_or_as_a_python_module(apps):
    (apps / "deploy").mkdir()
    (apps / "deploy" / "__init__.py").write_text("")
    (apps / "deploy" / "gunicorn_conf.py").write_text("workers = 3\nuse_threads = 4\nthreads = use_threads\n")
    (apps / "gunicorn.conf.py").write_text("workers = 9\n")  # a -c anywhere wins over the default file
    for env, args in (
        ({"GUNICORN_CMD_ARGS": "-c deploy/gunicorn_conf.py"}, []),
        ({}, ["-c", "python:deploy.gunicorn_conf"]),
        ({"GUNICORN_CMD_ARGS": "-c python:deploy.gunicorn_conf"}, []),
    ):
        result = serve(["--print-config", *args, "apps:app"], apps, env=env)
        assert result.returncode == OK, result.stderr
        assert {"workers = 3", "threads = 4"} <= set(result.stdout.splitlines()), (env, args)
        assert "warning" not in result.stderr
    missing = serve(["-c", "python:deploy.nothing_here", "apps:app"], apps)
    assert missing.returncode == CONFIG_ERROR
    assert "config module 'deploy.nothing_here' not found on the import path" in one_error_line(missing)


def test_a_worker_class_path_is_resolved_after_pythonpath(apps):
    """gunicorn's sync worker subclassed in the project (found through --pythonpath): WSGI."""
    (apps / "lib").mkdir()
    (apps / "lib" / "projworkers.py").write_text(
        "from gunicorn.workers.sync import SyncWorker\n\n\nclass QuietSync(SyncWorker):\n    pass\n"
    )
    result = serve(
        ["--print-config", "--pythonpath", "lib", "-k", "projworkers.QuietSync", "-t", "12", "apps:app"], apps
    )
    assert result.returncode == OK, result.stderr
    lines = result.stdout.splitlines()
    assert "interface = wsgi" in lines and "request_timeout = 12.0" in lines
    unknown = serve(["--print-config", "-k", "projworkers.QuietSync", "apps:app"], apps)  # not on the path
    assert unknown.returncode == CONFIG_ERROR
    assert (
        "invalid value for --worker-class: worker class 'projworkers.QuietSync' cannot be imported (no module "
        "'projworkers')" in one_error_line(unknown)
    )
