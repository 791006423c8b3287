"""`python -m bench cost` on corral alone, one short round: cost.md and cost.json are written and well-formed,
the per-request figures are there (CPU user and system, context switches, system calls when strace is
installed), and every process the bench started is gone. Not the figures themselves: the machine is shared.
And the /proc reading it rests on, against a process whose CPU time is known."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_quick import ROOT, assert_all_gone, table_rows  # after the path: tests/ is no package

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def run_cost(out: Path, *args: str) -> tuple[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_") or k == "CORRAL_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "cost", "--out", str(out), "--no-plots", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "cost.json") as f:
        data = json.load(f, parse_constant=lambda c: pytest.fail(f"{c} in cost.json: not strict JSON"))
    return (out / "cost.md").read_text(), data


@pytest.mark.timeout(240)
def test_cost_tables_json_and_cleanup(tmp_path: Path) -> None:
    setting = "pinned" if len(os.sched_getaffinity(0)) > 1 else "saturated"
    text, data = run_cost(
        tmp_path,
        "--paths",
        "asgi,wsgi-close,websocket",
        "--settings",
        setting,
        "--servers",
        "corral",
        "--rounds",
        "1",
        "--duration",
        "1",
        "--strace-duration",
        "1",
    )
    block = data["settings"][setting]
    assert block["workers"] == (1 if setting == "pinned" else len(os.sched_getaffinity(0)))
    for path, server in (("asgi", "corral"), ("wsgi-close", "corral-wsgi"), ("websocket", "corral")):
        run = block["paths"][path]["runs"][server][0]
        assert run["requests"] > 0 and run["errors"] == 0, run
        assert run["cpu_user_us"] > 0 and run["cpu_us"] == pytest.approx(run["cpu_user_us"] + run["cpu_sys_us"])
        assert run["csw"] == pytest.approx(run["vcsw"] + run["ivcsw"]) and run["csw"] >= 0
        calls = block["paths"][path]["syscalls"].get(server)
        if shutil.which("strace"):
            assert calls and calls["per_request"] > 0, block["paths"][path]
        # The page: the how-to, the summary line and the path's table with corral's row.
        rows = table_rows(text.replace(f"#### {setting} · {path}:", f"### {path}:"), path)
        assert server in rows and rows[server][0].replace(",", "").isdigit(), rows
    assert "python -m bench cost" in text and "## How to re-run" in text
    assert_all_gone(data)


def test_counters_read_a_known_cpu_time() -> None:
    """A child that burns about 0.3 s of user CPU in a second thread: the tree's user time covers it (ended
    threads included), and its context switches are counted per thread."""
    from bench import cost

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import threading, time, sys\n"
                "def burn():\n"
                "    end = time.thread_time() + 0.3\n"
                "    while time.thread_time() < end: pass\n"
                "t = threading.Thread(target=burn); t.start(); t.join()\n"
                "print('done', flush=True); sys.stdin.read()\n"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "done"
        got = cost.counters(child.pid)
        assert 0.25 <= got["user"] + got["system"] < 5, got
        assert got["vcsw"] + got["ivcsw"] >= 1, got
    finally:
        child.kill()
        child.wait(10)
