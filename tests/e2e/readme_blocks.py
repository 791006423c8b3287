"""The README's production blocks, extracted so that the e2e tests run exactly what the README prints.

A block is found by its first line, a comment marker such as `# corral: nginx` or `# corral.service`; the
tests then apply only mechanical substitutions (paths, ports, the app, the `serve` path), each of which
must match, so that a README edit that the tests no longer cover fails loudly instead of passing.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)

# What the README's blocks use for paths and the app; the tests swap these out.
RUN_DIR = "/run/corral/"
APP_DIR = "/srv/app"
SERVE = "/srv/app/.venv/bin/serve"
APP_SPEC = "myproject.asgi:application"


def block(marker: str, info: str | None = None) -> str:
    """The body of the one fenced block whose first line starts with `# <marker>`."""
    found = []
    for match in FENCE.finditer(README.read_text()):
        body = match.group(2)
        first = body.split("\n", 1)[0].strip()
        if re.match(rf"#\s*{re.escape(marker)}(\s|$)", first):
            if info is not None:
                assert match.group(1).strip() == info, f"README block {marker!r} is fenced as {match.group(1)!r}"
            found.append(body)
    assert len(found) == 1, f"README.md must have exactly one fenced block starting with '# {marker}', has {len(found)}"
    return found[0]


def substitute(text: str, old: str, new: str, count: int | None = None) -> str:
    """`text` with `old` replaced by `new`; fails when `old` is missing (or occurs other than `count` times)."""
    occurrences = text.count(old)
    assert occurrences and (count is None or occurrences == count), (
        f"README block drifted: expected {count or 'some'} {old!r}, found {occurrences}")
    return text.replace(old, new)


def substitute_re(text: str, pattern: str, new: str) -> str:
    """`text` with the one match of regex `pattern` replaced by `new` (a template: \\1 etc. work)."""
    result, count = re.subn(pattern, new, text, flags=re.M)
    assert count == 1, f"README block drifted: expected one match of {pattern!r}, found {count}"
    return result


def serve_argv() -> list[str]:
    """The README's `serve` command line (the `# corral: serve` block), split like a shell would."""
    lines = [line for line in block("corral: serve", "sh").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 1, "the `# corral: serve` block must hold one command line"
    return shlex.split(lines[0])


def unit(marker: str) -> dict[str, list[str]]:
    """A systemd unit from the README as {Key: [values]} (sections flattened; keys may repeat)."""
    values: dict[str, list[str]] = {}
    for line in block(marker, "ini").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{marker}: not a Key=value line: {line!r}"
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def local_serve() -> list[str]:
    """The command that runs this checkout's `serve`: the venv's console script, else `python -m`."""
    script = Path(sys.executable).with_name("serve")
    if script.exists():
        return [str(script)]
    found = shutil.which("serve")
    return [found] if found else [sys.executable, "-m", "corral.master"]


def localize_serve(argv: list[str], run_dir: Path, app: str) -> list[str]:
    """The README's serve argv with this machine's `serve`, `run_dir` for /run/corral/ and `app` for the app."""
    assert argv[0] == SERVE, f"the README's serve command should start with {SERVE}, not {argv[0]}"
    assert argv[-1] == APP_SPEC, f"the README's serve command should end with the app {APP_SPEC}, not {argv[-1]}"
    rest = [arg.replace(RUN_DIR, f"{run_dir}/") for arg in argv[1:-1]]
    return [*local_serve(), *rest, app]
