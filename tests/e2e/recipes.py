"""The deployment recipes, read from the files the documentation includes (docs/recipes/), so that the e2e
tests run exactly what the pages print.

Each recipe is a file of its own (docs/recipes/nginx.conf, corral.service, ...); the deployment page
includes it with pymdownx.snippets (`--8<-- "recipes/nginx.conf"`), and tests/docs checks that every file
here is included by a page. The tests then apply only mechanical substitutions (paths, ports, the app, the
`serve` path), each of which must match, so that a recipe edit that the tests no longer cover fails loudly
instead of passing.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"

# What the recipes use for paths and the app; the tests swap these out.
RUN_DIR = "/run/corral/"
APP_DIR = "/srv/app"
SERVE = "/srv/app/.venv/bin/serve"
APP_SPEC = "myproject.asgi:application"


def recipe(name: str) -> str:
    """The text of docs/recipes/<name>."""
    path = RECIPES / name
    assert path.is_file(), f"no recipe {path}"
    return path.read_text()


def substitute(text: str, old: str, new: str, count: int | None = None) -> str:
    """`text` with `old` replaced by `new`; fails when `old` is missing (or occurs other than `count` times)."""
    occurrences = text.count(old)
    assert occurrences and (count is None or occurrences == count), (
        f"recipe drifted: expected {count or 'some'} {old!r}, found {occurrences}"
    )
    return text.replace(old, new)


def substitute_re(text: str, pattern: str, new: str) -> str:
    """`text` with the one match of regex `pattern` replaced by `new` (a template: \\1 etc. work)."""
    result, count = re.subn(pattern, new, text, flags=re.MULTILINE)
    assert count == 1, f"recipe drifted: expected one match of {pattern!r}, found {count}"
    return result


def command_line(name: str) -> str:
    """The one command line of a shell recipe (its comment lines left out)."""
    lines = [line for line in recipe(name).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f"recipes/{name} must hold one command line"
    return lines[0]


def serve_argv() -> list[str]:
    """The `serve` command line of recipes/serve.sh, split like a shell would."""
    return shlex.split(command_line("serve.sh"))


def unit(name: str) -> dict[str, list[str]]:
    """A systemd unit recipe as {Key: [values]} (sections flattened; keys may repeat)."""
    values: dict[str, list[str]] = {}
    for line in recipe(name).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not a Key=value line: {line!r}"
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
    """A recipe's serve argv with this machine's `serve`, `run_dir` for /run/corral/ and `app` for the app."""
    assert argv[0] == SERVE, f"the recipe's serve command should start with {SERVE}, not {argv[0]}"
    assert argv[-1] == APP_SPEC, f"the recipe's serve command should end with the app {APP_SPEC}, not {argv[-1]}"
    rest = [arg.replace(RUN_DIR, f"{run_dir}/") for arg in argv[1:-1]]
    return [*local_serve(), *rest, app]
