"""Run gunicorn deployments side by side: each folder under gunicorn itself, then under corral's `serve`, the
same command line, config and environment (bench/replay.py), and compare what a user sees.

    python -m bench.gunicorn_sidebyside FOLDER [--only NAME ...] [--json OUT]

FOLDER holds deployment folders (a replay.toml each, as tests/e2e/real_configs). Compared: does it start,
does it answer on IPv4 and on IPv6, how many workers and processes, the lines its hooks log (replay.toml's
`expect.lines`), where the access lines go (stdout or stderr) and their format (times, durations and
numbers masked), the gunicorn.* logger names a log config prints, the statsd names (and their DogStatsD
tags), the exit code of a stop. Not compared: the wording of the server's own error-log messages (corral's
are its own; the line format `[time] [pid] [LEVEL]` is gunicorn's) and the statsd names only corral sends
(`corral.*`, its own metrics next to gunicorn's). Warning lines of each are listed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bench.replay import Deployment, Observation, deployments, replay


def _stream(observed: Observation) -> str:
    lines = [line for line in observed.access_lines() if "/replay/probe" in line]
    if not lines:
        return "none"
    where = {"stdout" if line in observed.stdout else "stderr" for line in lines}
    return "+".join(sorted(where))


def _client(observed: Observation) -> str:
    """The first field of the probe's access lines when it is an address (%(h)s): the peer, or the client
    a trusted proxy named in X-Forwarded-For (the probe says 203.0.113.9, from 127.0.0.1)."""
    hosts = {line.split()[0] for line in observed.access_lines() if re.match(r"[\d.:a-f]+ ", line)}
    return ",".join(sorted(hosts)) or "-"


def _hooks(deployment: Deployment, observed: Observation) -> str:
    found = [text for text in deployment.expect.get("lines", []) if text in observed.output]
    return f"{len(found)}/{len(deployment.expect.get('lines', []))}"


def _gunicorn_statsd(observed: Observation) -> list[str]:
    return sorted(name for name in observed.statsd_names() if ".corral." not in f".{name}")


def compare(deployment: Deployment, gunicorn: Observation, serve: Observation) -> dict[str, tuple[str, str]]:
    """aspect -> (gunicorn's, serve's), as short strings."""

    def both(value) -> tuple[str, str]:
        return value(gunicorn), value(serve)

    return {
        "starts": both(lambda o: str(o.started)),
        "IPv4": both(lambda o: str(o.ipv4)),
        "IPv6": both(lambda o: str(o.ipv6)),
        "workers": both(lambda o: str(o.workers)),
        "processes": both(lambda o: str(o.processes)),
        "hook lines": both(lambda o: _hooks(deployment, o)),
        "access stream": both(_stream),
        "access format": both(lambda o: " | ".join(sorted(set(o.access_shapes()))) or "-"),
        "access %(h)s": both(_client),
        "loggers": both(lambda o: ",".join(sorted(o.loggers())) or "-"),
        "statsd names": both(lambda o: ",".join(_gunicorn_statsd(o)) or "-"),
        "exit code": both(lambda o: str(o.exit_code)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = []
    for deployment in deployments(args.folder):
        if args.only and deployment.name not in args.only:
            continue
        gunicorn = replay(deployment, "gunicorn")
        serve = replay(deployment, "serve")
        aspects = compare(deployment, gunicorn, serve)
        differs = {name: pair for name, pair in aspects.items() if pair[0] != pair[1]}
        results.append(
            {
                "deployment": deployment.name,
                "aspects": aspects,
                "differs": differs,
                "warnings": {"gunicorn": gunicorn.warnings(), "serve": serve.warnings()},
                "serve_only_statsd": sorted(set(serve.statsd_names()) - set(gunicorn.statsd_names())),
            }
        )
        status = (
            "same"
            if not differs
            else "differs: " + "; ".join(f"{name}: gunicorn {a!r} / serve {b!r}" for name, (a, b) in differs.items())
        )
        print(f"{deployment.name}: {status}", flush=True)
    print()
    print("| deployment | " + " | ".join(results[0]["aspects"]) + " |" if results else "no deployments")
    if results:
        print("|---" * (len(results[0]["aspects"]) + 1) + "|")
    for result in results:
        cells = []
        for a, b in result["aspects"].values():
            cells.append(f"= {a}" if a == b else f"**gunicorn {a} / serve {b}**")
        print(f"| {result['deployment']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
