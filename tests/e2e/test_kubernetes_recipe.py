"""The Kubernetes Deployment recipe (docs/recipes/kubernetes.yaml): parsed as YAML, its `serve` arguments checked by
`serve --print-config` (so every flag exists and every value is valid), and cross-checked against the
settings they give: the probes on the health path and the bound port, the readiness probe failing within the
drain delay, the grace period above the drain plus the graceful timeout, the liveness probe never tripping
during a drain."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipes import local_serve, recipe
from serve_harness import WAIT, clean_env


def settings_of(args: list[str]) -> dict[str, str]:
    assert args[0] == "serve"
    result = subprocess.run(
        [*local_serve(), "--print-config", *args[1:]], capture_output=True, text=True, timeout=WAIT, env=clean_env()
    )
    assert result.returncode == 0, result.stderr
    values = {}
    for line in result.stdout.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name] = value
    return values


def test_the_deployment_agrees_with_the_settings_it_names():
    deployment = yaml.safe_load(recipe("kubernetes.yaml"))
    assert deployment["apiVersion"] == "apps/v1" and deployment["kind"] == "Deployment"
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # a rolling update never drops capacity
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    settings = settings_of(container["args"])
    port = int(settings["bind"].rsplit(":", 1)[1])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    drain, graceful = float(settings["drain_delay"]), float(settings["graceful_timeout"])
    assert drain > 0 and settings["health_path"] == "/healthz"
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"] == {"path": settings["health_path"], "port": port}
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    # Out of the Service's endpoints before the drain ends (the probe fails as soon as TERM starts the drain).
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain
    # Never killed by its liveness probe while it drains and finishes its requests.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain + graceful
    # SIGKILL only after the drain and the graceful stop have had their time.
    assert pod["terminationGracePeriodSeconds"] > drain + graceful
