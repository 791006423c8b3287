"""--reload (development): editing a file under a running server reloads it through HUP's path; a save that
breaks the import keeps the old workers serving; the next good save recovers."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral.shared.exitcodes import OK
from serve_harness import Master, free_port, get, wait_until

pytest.importorskip("watchfiles")

APP = """
import helper

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": helper.VERSION.encode()})
"""


def save(path, text: str) -> None:
    """Save as most editors do: a whole new file renamed over the old one (one change, never half a file)."""
    temporary = path.with_name(path.name + ".saving~")  # matches the default exclude '*~'
    temporary.write_text(text)
    os.replace(temporary, path)


def body(port: int) -> str | None:
    try:
        status, text = get(port, "/", timeout=10)
    except OSError:
        return None
    return text if status == 200 else None


def test_edit_break_and_fix_under_a_running_server(tmp_path):
    (tmp_path / "devapp.py").write_text(textwrap.dedent(APP))
    (tmp_path / "helper.py").write_text("VERSION = 'one'\n")
    (tmp_path / "notes.txt").write_text("not python\n")
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    master = Master(
        ["--reload", "-w", "2", "-b", f"127.0.0.1:{port}", "--pid", str(pidfile), "devapp:app"], tmp_path, port, pidfile
    )
    try:
        first = {w["pid"] for w in master.wait_workers(2)}
        master.wait_for_line("for changes (--reload)")
        assert body(port) == "one"

        (tmp_path / "notes.txt").write_text("still not python\n")  # not *.py: no reload
        save(tmp_path / "helper.py", "VERSION = 'two!'\n")  # another size: a .pyc is keyed on mtime (s) + size
        wait_until(lambda: body(port) == "two!", "the edited module to be served")
        second = {w["pid"] for w in master.wait_workers(2, lambda ws: not {w["pid"] for w in ws} & first)}
        reloads = [line for line in master.output.splitlines() if "Reloading: " in line]
        assert reloads and all("helper.py changed" in line for line in reloads), reloads  # never notes.txt

        save(tmp_path / "helper.py", "VERSION = 'three'\nraise RuntimeError('half-written save')\n")
        master.wait_for_line("Reload failed, keeping the running workers")
        assert master.output.count("Reload failed") == 1  # the error, logged once (with its traceback)
        assert "RuntimeError: half-written save" in master.output
        assert body(port) == "two!"  # the old workers still serve
        assert {w["pid"] for w in master.wait_workers(2)} == second

        save(tmp_path / "helper.py", "VERSION = 'four, fixed'\n")
        wait_until(lambda: body(port) == "four, fixed", "the fixed module to be served")
        master.wait_workers(2, lambda ws: not {w["pid"] for w in ws} & second)
        assert master.output.count("Reload failed") == 1
    finally:
        assert master.stop() == OK
    assert "Traceback" not in master.output.split("half-written save")[-1]  # nothing failed after the fix


def test_reload_refused_with_preload(tmp_path):
    import subprocess

    (tmp_path / "devapp.py").write_text(textwrap.dedent(APP))
    (tmp_path / "helper.py").write_text("VERSION = 'one'\n")
    result = subprocess.run(
        [sys.executable, "-m", "corral.master", "--reload", "--preload", "devapp:app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--reload cannot work with --preload" in result.stderr
