"""h2spec 2.6.0 (github.com/summerwind/h2spec), the HTTP/2 conformance suite nginx, h2o, Envoy and hypercorn
are checked with, against a real `serve`: h2c with prior knowledge (`--http 2`) and TLS (ALPN h2) pass every
case; `--http auto` on cleartext every case but the invalid preface, which that port answers as HTTP/1.1.

The binary: H2SPEC_BIN, else .h2spec/h2spec in the checkout, which .ci/run builds from h2spec's source (see
there). Without it the tests skip, saying how to build it - unless REQUIRE_H2SPEC is set (.ci/run sets it):
then they fail. (Not CORRAL_* names: serve refuses an unknown CORRAL_* variable, and tests run serve with
their environment.) h2spec writes a JUnit report, one testcase per case; a failing case is run again alone
with h2spec's verbose log, which the assertion shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import LIFESPAN, Master
from test_tls import make_certs

ROOT = Path(__file__).resolve().parents[2]
H2SPEC = Path(os.environ.get("H2SPEC_BIN") or ROOT / ".h2spec" / "h2spec")
CASES = 146  # h2spec 2.6.0's cases without --strict: generic/, http2/ (RFC 7540/9113), hpack/ (RFC 7541)
TIMEOUT = 3  # h2spec's wait for each expected frame (-o; its default is 2): passing cases never wait it out

# Cases h2spec fails against h2c (`--http 2`) or TLS, each with the reason corral cannot pass it: none.
KNOWN_FAILURES: dict[str, str] = {}

# Under `--http auto` a cleartext port speaks HTTP/1.1 as well as h2c: bytes that are not the HTTP/2 preface
# are an HTTP/1.1 request, and h2spec's "INVALID CONNECTION PREFACE" is a malformed one (400, close), not a
# GOAWAY. Checked to be the only difference.
AUTO_DIFFERENCES = {"http2/3.5/2": "an HTTP/1.1 port too: the invalid preface is a bad HTTP/1.1 request (400)"}

APP = (
    LIFESPAN
    + """
BODY = b"corral answers h2spec. " * 64  # the flow-control cases need a body longer than their windows

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": BODY})
"""
)


@pytest.fixture(scope="module")
def h2spec() -> Path:
    if not (H2SPEC.is_file() and os.access(H2SPEC, os.X_OK)):
        why = (
            f"h2spec is not built ({H2SPEC}): .ci/run builds it, or "
            f"`bash <shared>/tools/h2spec/build_h2spec.sh {ROOT / '.h2spec' / 'h2spec'}`"
        )
        if os.environ.get("REQUIRE_H2SPEC"):
            pytest.fail(why + " (REQUIRE_H2SPEC is set: it must run)")
        pytest.skip(why)
    return H2SPEC


@pytest.fixture
def serve(tmp_path, masters):
    (tmp_path / "h2spec_app.py").write_text(textwrap.dedent(APP))

    def start(*args: str) -> Master:
        master = masters(tmp_path, "-w", "1", *args, "h2spec_app:app")
        master.wait_workers(1)
        return master

    return start


def run_h2spec(h2spec: Path, report: Path, target: list[str]) -> dict[str, str | None]:
    """Every case's id (`http2/6.9.1/1`, as h2spec takes it) -> None when it passed, else why not."""
    done = subprocess.run(
        [str(h2spec), *target, "-o", str(TIMEOUT), "-j", str(report)], capture_output=True, text=True, timeout=600
    )
    assert report.is_file(), f"h2spec wrote no report (exit {done.returncode}):\n{done.stdout[-4000:]}{done.stderr}"
    results: dict[str, str | None] = {}
    for suite in ElementTree.parse(report).getroot().iter("testsuite"):
        # A group's cases are numbered from 1 in order (its strict-only cases, not run, come last).
        for number, case in enumerate(suite.iter("testcase"), 1):
            name = f"{suite.get('package')}/{number}"
            outcome = next(iter(case), None)  # <failure>, <error> or <skipped>; nothing when it passed
            results[name] = (
                None
                if outcome is None
                else (f"{outcome.tag}: {case.get('classname')}: {' / '.join((outcome.text or '').splitlines())}")
            )
    assert len(results) == CASES, f"h2spec ran {len(results)} cases, not {CASES}:\n{done.stdout[-4000:]}"
    return results


def check(h2spec: Path, report: Path, target: list[str], expected: dict[str, str]) -> None:
    results = run_h2spec(h2spec, report, target)
    failed = {name: why for name, why in results.items() if why is not None}
    if set(failed) != set(expected):
        details = []
        for name in sorted(set(failed) - set(expected)):  # h2spec's own log of each, run alone
            alone = subprocess.run(
                [str(h2spec), *target, "-o", str(TIMEOUT), "-v", name], capture_output=True, text=True, timeout=120
            )
            details.append(f"--- {name}: {failed[name]}\n{alone.stdout[-3000:]}")
        passing = sorted(set(expected) - set(failed))
        pytest.fail(
            f"h2spec {' '.join(target)}: {CASES - len(failed)}/{CASES} passed; unexpected failures "
            f"{sorted(set(failed) - set(expected))}, expected failures that passed {passing}\n" + "\n".join(details)
        )


def check_log(master: Master) -> None:
    # A peer's protocol error is logged with what was wrong, not a bare stream id.
    errors = re.findall(r"HTTP/2 protocol error from [^:]+: (.*)", master.output)
    assert errors, master.output[-3000:]
    assert not [error for error in errors if not re.search(r"[a-zA-Z]{3}.*\(\w+\)$", error)], errors


def test_h2spec_h2c_prior_knowledge_passes_every_case(h2spec, serve, tmp_path):
    master = serve("--http", "2")
    check(h2spec, tmp_path / "h2c.xml", ["-h", "127.0.0.1", "-p", str(master.port)], KNOWN_FAILURES)
    check_log(master)


def test_h2spec_tls_passes_every_case(h2spec, serve, tmp_path):
    certs = make_certs(tmp_path)
    master = serve("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]))
    check(h2spec, tmp_path / "tls.xml", ["-t", "-k", "-h", "127.0.0.1", "-p", str(master.port)], KNOWN_FAILURES)
    check_log(master)


def test_h2spec_h2c_on_an_http_auto_port(h2spec, serve, tmp_path):
    master = serve()
    check(
        h2spec,
        tmp_path / "auto.xml",
        ["-h", "127.0.0.1", "-p", str(master.port)],
        {**KNOWN_FAILURES, **AUTO_DIFFERENCES},
    )
