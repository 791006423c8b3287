"""The exit-code table of docs/signals.md, both columns: each start-up failure run under `serve` and under
gunicorn itself (the installed gunicorn 27), the same command line in the same folder. corral gives each fix
its own code (2 the config, 4 the app, 6 the address); gunicorn folds most into 1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import WAIT, clean_env, free_port

pytest.importorskip("gunicorn")
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))

FILES = {
    "wsgiapp.py": "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n",
    "raises.py": "raise RuntimeError('the app refuses to import')\n",
    "noapp.py": "something_else = 1\n",
    "broken.conf.py": "import no_such_module_for_the_config\n",
    "badvalue.conf.py": "workers = 'many'\n",
}


def run(argv: list[str], cwd: Path) -> int:
    """Run `argv` to its end (bounded; its whole process group is killed past WAIT) and return its code."""
    proc = subprocess.Popen(
        argv,
        cwd=str(cwd),
        env=clean_env({"HOME": str(cwd)}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # HOME: gunicorn's control socket
    try:
        return proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
        raise AssertionError(f"{argv} did not exit within {WAIT}s") from None


@pytest.mark.parametrize(
    "args, serve_code, gunicorn_code",
    [
        pytest.param(["--workers", "lots", "wsgiapp:app"], 2, 2, id="bad flag value"),
        pytest.param(["-c", "broken.conf.py", "wsgiapp:app"], 2, 1, id="config file fails to run"),
        pytest.param(["-c", "missing.conf.py", "wsgiapp:app"], 2, 1, id="config file missing"),
        pytest.param(["-c", "badvalue.conf.py", "wsgiapp:app"], 2, 1, id="bad value in the config file"),
        pytest.param(["--pid", "held.pid", "wsgiapp:app"], 2, 1, id="pid file of a running process"),
        pytest.param(["no_such_app_module:app"], 4, 3, id="app module missing"),
        pytest.param(["raises:app"], 4, 3, id="app import raises"),
        pytest.param(["noapp:app"], 4, 4, id="no such app in the module"),
        pytest.param(["--check-config", "no_such_app_module:app"], 4, 1, id="check-config, app missing"),
        pytest.param(["BIND IN USE", "wsgiapp:app"], 6, 1, id="address in use"),
    ],
)
def test_exit_codes_against_gunicorns(tmp_path, args, serve_code, gunicorn_code):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "held.pid").write_text(f"{os.getpid()}\n")  # this test's own process: alive
    port = free_port()
    with socket.socket() as holder:
        if args[0] == "BIND IN USE":
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", port))
            holder.listen()
            args = args[1:]
        common = ["-b", f"127.0.0.1:{port}", *args]
        codes = (run([sys.executable, "-m", "corral.master", *common], tmp_path), run([GUNICORN, *common], tmp_path))
    assert codes == (serve_code, gunicorn_code)
