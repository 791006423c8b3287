"""A strict reading of a /metrics page with prometheus_client's own parsers (and `promtool check metrics`
when it is installed): every family typed and documented, every sample under its own typed family.

prometheus_client's text parser is lenient: a sample whose name its family's TYPE line does not allow (a
`foo_total` under `# TYPE foo counter`) is not an error but an extra, untyped family of its own, and the typed
family is left with no samples. `families` counts the TYPE lines against the parsed families to catch that.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

__all__ = ["families", "samples", "promtool_check", "SUFFIXES"]

#: The sample names each family type may carry, as suffixes of the family's name.
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created")}


def families(text: str, openmetrics: bool = False) -> dict[str, Any]:
    """The page's families by name, after checking names, types, HELP and every sample."""
    lines = text.splitlines()
    typed = [line.split(" ", 3)[2] for line in lines if line.startswith("# TYPE ")]
    helped = [line.split(" ", 3)[2] for line in lines if line.startswith("# HELP ")]
    assert helped == typed, "each family's HELP and TYPE lines name the same metric, in the same order"
    parsed = list((parse_openmetrics if openmetrics else parse_text)(text))
    assert len(parsed) == len(typed), (
        "samples outside their typed family (the parser made untyped families of them): "
        f"{sorted({f.name for f in parsed} - set(typed))}"
    )
    by_name: dict[str, Any] = {}
    for family in parsed:
        assert family.name not in by_name, f"{family.name} twice"
        assert family.type in SUFFIXES, f"{family.name}: type {family.type}"
        assert family.documentation.strip(), f"{family.name}: no HELP"
        allowed = {family.name + suffix for suffix in SUFFIXES[family.type]}
        for sample in family.samples:
            assert sample.name in allowed, f"{sample.name} under {family.type} {family.name}"
        by_name[family.name] = family
    return by_name


def samples(by_name: dict[str, Any]) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in by_name.values() for s in f.samples}


def promtool_check(text: str) -> bool:
    """`promtool check metrics` (Prometheus' own linter) on the text page, when promtool is installed; False
    when it is not (the parser checks above still ran)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return False
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return True
