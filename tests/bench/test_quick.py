"""`python -m bench --quick` on corral (+ uvicorn when installed): results.md and results.json are written and
well-formed, and every process the bench started is gone. Not the figures: the machine is shared."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(out: Path, *args: str) -> tuple[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_") or k == "CORRAL_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--no-plots", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (out / "results.md").read_text()
    assert text == proc.stdout.rstrip("\n") + "\n" or text.strip() in proc.stdout
    with open(out / "results.json") as f:
        data = json.load(f, parse_constant=lambda c: pytest.fail(f"{c} in results.json: not strict JSON"))
    return text, data


def assert_all_gone(data: dict) -> None:
    assert data["meta"]["left_running"] == []
    pids = data["meta"]["pids"]
    assert pids, "the bench reported no process started"
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"still running: {[' '.join(psutil.Process(p).cmdline()) for p in alive]}"


def table_rows(text: str, scenario: str) -> dict[str, list[str]]:
    """The rows of the markdown table under `### scenario: ...`, by first cell."""
    section = text.split(f"### {scenario}:", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) >= 3 and re.fullmatch(r"\|(---\|)+", lines[1]), section
    width = lines[0].count("|")
    assert all(line.count("|") == width for line in lines), section
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


@pytest.mark.timeout(240)
def test_quick_tables_json_and_cleanup(tmp_path: Path) -> None:
    has_uvicorn = _importable("uvicorn")
    text, data = run_bench(
        tmp_path / "a", "--servers", "corral,uvicorn", "--scenarios", "plaintext,idle", "--idle-connections", "100"
    )
    servers = ["corral", "uvicorn"] if has_uvicorn else ["corral"]
    if not has_uvicorn:
        assert "uvicorn" in data["skipped"]
    for scenario in ("plaintext", "idle"):
        rows = table_rows(text, scenario)
        assert sorted(rows) == sorted(servers)
        runs = data["scenarios"][scenario]["runs"]
        assert sorted(runs) == sorted(servers) and all(len(rs) == 1 for rs in runs.values())
    plain = data["scenarios"]["plaintext"]["runs"]["corral"][0]
    assert plain["rps"] > 0 and plain["errors"] == 0 and plain["tool"] == ("wrk" if shutil.which("wrk") else "builtin")
    assert re.match(r"[\d,]+$", table_rows(text, "plaintext")["corral"][0].split()[0])
    assert data["scenarios"]["idle"]["runs"]["corral"][0]["held"] == 100
    assert data["meta"]["generator"] == plain["tool"]
    assert_all_gone(data)


@pytest.mark.timeout(120)
def test_quick_builtin_generator(tmp_path: Path) -> None:
    """The built-in generator (what runs where wrk is not installed) against corral."""
    text, data = run_bench(tmp_path / "b", "--servers", "corral", "--scenarios", "plaintext", "--generator", "builtin")
    result = data["scenarios"]["plaintext"]["runs"]["corral"][0]
    assert result["tool"] == "builtin" and result["requests"] > 0 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["p999_ms"]
    assert list(table_rows(text, "plaintext")) == ["corral"]
    assert_all_gone(data)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.timeout(120)
def test_quick_close_and_latency(tmp_path: Path) -> None:
    """`close` (Connection: close on every request) and `latency` (sequential requests, one connection)."""
    text, data = run_bench(tmp_path / "c", "--servers", "corral", "--scenarios", "close,latency")
    close = data["scenarios"]["close"]["runs"]["corral"][0]
    assert close["rps"] > 0 and close["errors"] == 0
    lat = data["scenarios"]["latency"]["runs"]["corral"][0]
    assert lat["errors"] == 0 and lat["requests"] == 1000 and lat["reconnects"] == 1  # the 1,000-request cap
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
    assert list(table_rows(text, "close")) == list(table_rows(text, "latency")) == ["corral"]
    assert_all_gone(data)


def test_metrics_scenario_compares_corral_with_itself(tmp_path):
    text, data = run_bench(tmp_path / "m", "--servers", "corral", "--scenarios", "metrics")
    scenario = data["scenarios"]["metrics"]
    assert set(scenario["runs"]) == {"corral", "corral-metrics"} and scenario["baseline"] == "corral"
    assert all(r["errors"] == 0 and r["rps"] > 0 for rs in scenario["runs"].values() for r in rs)
    own = scenario["inprocess"]
    assert own["off_us"] > 0 and own["on_us"] > 0
    assert "| corral-metrics |" in text and "vs corral" in text and "In-process, the worker's Python path" in text
    assert_all_gone(data)
