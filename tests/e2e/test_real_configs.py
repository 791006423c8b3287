"""Real gunicorn deployments, replayed under `serve`: each folder of tests/e2e/real_configs holds a public
project's gunicorn config and start command verbatim (SOURCE.md says whose, under which licence, and what
the replay swaps: the app module, and where a port or path is fixed, how it is moved). Each is started the way
its project starts it, with `gunicorn` meaning `serve`, and must start, answer where it binds (IPv4, and IPv6
where it binds [::]), run its hooks, log where and as it configures, and send its statsd names.

How a folder is run and what it must show: its replay.toml (bench/replay.py reads it; the same runner puts
the deployments side by side with gunicorn itself: `python -m bench.gunicorn_sidebyside FOLDER`).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.replay import Deployment, Observation, deployments, replay  # noqa: E402 - after the root joins the path

CONFIGS = Path(__file__).resolve().parent / "real_configs"
DEPLOYMENTS = deployments(CONFIGS)


def test_every_folder_names_its_source_and_licence():
    assert len(DEPLOYMENTS) >= 10
    for deployment in DEPLOYMENTS:
        source = (deployment.folder / "SOURCE.md").read_text()
        for field in ("Repository:", "Path", "Commit:", "Licence:", "Swapped:"):
            assert field in source, f"{deployment.name}/SOURCE.md lacks {field}"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d.name)
def test_a_real_deployment_runs_under_serve(deployment: Deployment, tmp_path: Path) -> None:
    pytest.importorskip("uvicorn.workers")  # the ASGI ones import UvicornWorker in their config or name it
    observed = replay(deployment, "serve", tmp_path)
    check(deployment.expect, observed)


def check(expect: dict, observed: Observation) -> None:
    """Everything `expect` (a replay.toml's [expect]) says the deployment shows, against one run."""
    context = f"\n--- stdout\n{observed.stdout[-4000:]}\n--- stderr\n{observed.stderr[-4000:]}"
    assert observed.started, "it did not start" + context
    assert observed.exit_code == expect.get("exit_code", 0), context
    assert observed.ipv4 is expect.get("ipv4", True), context
    assert observed.ipv6 is expect.get("ipv6", False), context
    assert observed.workers == expect["workers"], context
    assert observed.processes == expect["workers"] + 1, context  # the master and its workers, nothing else
    answered = sum(1 for value in (observed.ipv4, observed.ipv6) if value)
    probes = [line for line in observed.access_lines() if "/replay/probe" in line]
    if expect.get("access", True):
        assert len(probes) == answered, context
        stream = {"stdout": observed.stdout, "stderr": observed.stderr}[expect.get("access_stream", "stdout")]
        assert all(line in stream for line in probes), context
        for line in probes:
            if "access_regex" in expect:
                assert re.fullmatch(expect["access_regex"], line), f"{line!r} is not the configured format"
    else:
        assert probes == [], context
    for text in expect.get("lines", []):
        assert text in observed.output, f"{text!r} never appeared" + context
    for name in expect.get("loggers", []):
        assert name in observed.loggers(), context
    names = observed.statsd_names()
    for metric in expect.get("statsd", []):
        assert metric in names, (metric, observed.statsd)
    if "statsd_tags" in expect:
        lines = [line for datagram in observed.statsd for line in datagram.splitlines()]
        assert lines and all(line.endswith(expect["statsd_tags"]) for line in lines), lines
    assert all(observed.files.values()), observed.files
    if "long_url" in expect:
        assert observed.long_url == expect["long_url"]
    if "body_env" in expect:
        assert json.loads(observed.bodies[0])["env"] == expect["body_env"]
    if "metrics" in expect:
        from prometheus_client.parser import text_string_to_metric_families

        samples = {
            s.name: s.value for family in text_string_to_metric_families(observed.bodies[-1]) for s in family.samples
        }
        for name, value in expect["metrics"].items():
            assert samples.get(name) == value, (name, samples)
    warnings = observed.warnings()
    assert len(warnings) == len(expect.get("warnings", [])), warnings
    for text, line in zip(expect.get("warnings", []), warnings):
        assert text in line, (text, line)
