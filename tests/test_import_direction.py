"""Imports go one way: master -> worker -> shared, and between the rooms of each as the table below says.

Every module under master/, worker/ and shared/ is parsed (not imported) and every import in it is checked,
at any depth: module level, inside functions, under `if TYPE_CHECKING:`. A module belongs to the longest
room its name starts with; it may import its own room and the rooms its room's entry allows. The table is
the rule: a new room is a new row. Inside the worker the protocols (http1, http2, websocket, wsgi) import
app/, edge/ and conn/, never the other way, and serve/ puts them together. Each room's `__init__` docstring
says the same in its "May import:" paragraph, and a test keeps the two equal. Apart from the rooms, no
module imports one that imports it back when they load (module level, outside `if TYPE_CHECKING:`).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
#: The code folders and the package each installs as (pyproject's package-dir).
FOLDERS = {"master": "corral.master", "worker": "corral.worker", "shared": "corral.shared"}

MASTER_ROOMS = (
    "corral.master.arbiter",
    "corral.master.config",
    "corral.master.hooks",
    "corral.master.listen",
    "corral.master.observe",
    "corral.master.status",
)

WORKER_ROOMS = (
    "corral.worker.app",
    "corral.worker.conn",
    "corral.worker.edge",
    "corral.worker.http1",
    "corral.worker.http2",
    "corral.worker.serve",
    "corral.worker.websocket",
    "corral.worker.wsgi",
)

#: What every protocol room may import: the rooms below the protocols.
_BELOW_PROTOCOLS = frozenset({"corral.worker.app", "corral.worker.edge", "corral.worker.conn", "corral.shared"})

#: Room -> the rooms it may import besides itself. An entry covers the rooms below it: "corral.worker" lets
#: the master import any room of the worker's. "bench" is here so that no product module may import it.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "corral.shared": frozenset(),
    # The registry (registry.py) imports no declaration; the declarations import it; __init__ imports all.
    "corral.shared.settings": frozenset({"corral.shared"}),
    "corral.worker": frozenset({"corral.shared"}),
    # serve/ puts the worker together: boot, the server, the protocol class each connection gets.
    "corral.worker.serve": frozenset(
        {
            "corral.worker.http1",
            "corral.worker.http2",
            "corral.worker.websocket",
            "corral.worker.wsgi",
            *_BELOW_PROTOCOLS,
        }
    ),
    # The protocols. HTTP/2 is told apart at an HTTP/1.1 connection's start and WSGI rides the HTTP/1.1
    # protocol: both build on http1/, which hands an upgrade to websocket/.
    "corral.worker.http2": frozenset({"corral.worker.http1", *_BELOW_PROTOCOLS}),
    "corral.worker.wsgi": frozenset({"corral.worker.http1", *_BELOW_PROTOCOLS}),
    "corral.worker.http1": frozenset({"corral.worker.websocket", *_BELOW_PROTOCOLS}),
    "corral.worker.websocket": _BELOW_PROTOCOLS,
    # Below the protocols: what wraps every connection, the application, what every protocol shares.
    "corral.worker.edge": frozenset({"corral.worker.conn", "corral.shared"}),
    "corral.worker.app": frozenset({"corral.shared"}),
    "corral.worker.conn": frozenset({"corral.shared"}),
    # cli.py and __main__.py: the command line hands the arbiter settings it resolved from config/.
    "corral.master": frozenset({*MASTER_ROOMS, "corral.worker", "corral.shared"}),
    "corral.master.arbiter": frozenset(
        {
            "corral.master.hooks",
            "corral.master.listen",
            "corral.master.observe",
            "corral.master.status",
            "corral.worker",
            "corral.shared",
        }
    ),
    "corral.master.config": frozenset({"corral.shared"}),
    "corral.master.hooks": frozenset(
        {"corral.master.config", "corral.master.listen", "corral.worker", "corral.shared"}
    ),
    "corral.master.listen": frozenset({"corral.worker", "corral.shared"}),
    "corral.master.observe": frozenset({"corral.master.listen", "corral.worker", "corral.shared"}),
    "corral.master.status": frozenset({"corral.shared"}),
    "bench": frozenset(),
}

#: Rooms whose `__init__` docstring must state their row ("May import: ..."); corral.master's and
#: corral.worker's own docstrings state their whole tables in prose.
DOCUMENTED = (*MASTER_ROOMS, *WORKER_ROOMS, "corral.shared.settings")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the imported module, absolute


def imports_of(module: str, source: str, is_package: bool = False) -> list[Import]:
    """Every import in `source` (the text of `module`), at any depth, relative ones made absolute.

    `from X import name` yields X and X.name: name may be a module (`from corral import master`), and when
    it is not, X.name lies in X's room anyway."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append(Import(module, node.lineno, target))
            found += [
                Import(module, node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"
            ]
    return found


def room_of(name: str, table: dict[str, frozenset[str]]) -> str | None:
    """The longest room `name` lies in, or None (the standard library, a third-party package)."""
    rooms = [room for room in table if name == room or name.startswith(room + ".")]
    return max(rooms, key=len, default=None)


def covers(entry: str, room: str) -> bool:
    return room == entry or room.startswith(entry + ".")


def violations(imports: list[Import], table: dict[str, frozenset[str]]) -> list[str]:
    """One line per import statement and room its importer's row does not allow."""
    found: dict[tuple[str, int, str], str] = {}
    for imp in imports:
        source, target = room_of(imp.module, table), room_of(imp.target, table)
        if target is None or source is None or target == source:
            continue
        if not any(covers(entry, target) for entry in table[source]):
            allowed = ", ".join(sorted(table[source])) or "no other room"
            line = f"{imp.module}:{imp.line} imports {imp.target}: {source} may import {allowed}"
            key = (imp.module, imp.line, target)
            found[key] = min(found.get(key, line), line, key=len)  # `from X import y`: X, not X.y
    return sorted(found.values())


def loops(edges: dict[str, list[str]]) -> list[list[str]]:
    """The loops of a directed graph (node -> the nodes it points at), each from where it closes."""
    found: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for other in edges.get(node, ()):
            if state.get(other) == "open":  # on the current path: a loop back to it
                found.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other, [*path, other])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])
    return found


def cycles(table: dict[str, frozenset[str]]) -> list[list[str]]:
    """The rooms that could import each other round a loop under the table (empty: it is one-way)."""
    return loops(
        {
            room: [other for other in table if other != room and any(covers(e, other) for e in allowed)]
            for room, allowed in table.items()
        }
    )


def _runs_at_load(body: list[ast.stmt]):
    """The statements of `body` that run when the module loads: not function bodies, not `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _runs_at_load(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _runs_at_load(getattr(node, field, None) or [])


def load_edges(module: str, source: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules of `known` that `module` imports while it loads (a package's `__init__` is its own name)."""
    tree = ast.parse(source)
    statements = [node for node in _runs_at_load(tree.body) if isinstance(node, (ast.Import, ast.ImportFrom))]
    targets = [imp.target for node in statements for imp in imports_of(module, ast.unparse(node), is_package)]
    return sorted({target for target in targets if target in known and target != module})


def package_dir(room: str) -> Path:
    for folder, package in FOLDERS.items():
        if covers(package, room):
            return ROOT / folder / Path(*room.split(".")[2:])
    return ROOT / Path(*room.split("."))


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the three code folders: name -> (file, is a package's __init__)."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_package else parts)))
            found[name] = (path, is_package)
    return found


def all_imports() -> list[Import]:
    return [
        imp for name, (path, is_package) in modules().items() for imp in imports_of(name, path.read_text(), is_package)
    ]


# -- the tree ---------------------------------------------------------------------------------------------


def test_imports_follow_the_table():
    found = violations(all_imports(), MAY_IMPORT)
    assert not found, "imports against the table:\n" + "\n".join(found)


def test_the_table_is_one_way():
    assert cycles(MAY_IMPORT) == []


def test_no_module_needs_one_that_needs_it_back():
    """Two modules importing each other as they load each run with the other half made: the settings
    registry's declarations did, before the registry became a package whose `__init__` imports them all."""
    found = modules()
    edges = {
        name: load_edges(name, path.read_text(), is_package, set(found)) for name, (path, is_package) in found.items()
    }
    assert loops(edges) == []


def test_the_scan_reads_the_whole_tree():
    """A scan that found nothing would pass the rule: it sees every module, and imports deep in functions."""
    assert {
        "corral.master",
        "corral.master.cli",
        "corral.master.arbiter.loop",
        "corral.worker.serve.server",
        "corral.worker.http2.protocol",
        "corral.shared.settings",
        "corral.shared.settings.registry",
    } <= set(modules())
    found = all_imports()
    for folder, package in FOLDERS.items():
        assert any(
            room_of(imp.module, MAY_IMPORT).startswith(package) and imp.target.startswith("corral.") for imp in found
        ), f"no corral import found under {folder}/"
    # cli.py imports the arbiter inside main(), so that `serve status` never loads it.
    nested = [
        imp for imp in found if imp.module == "corral.master.cli" and imp.target.startswith("corral.master.arbiter")
    ]
    assert nested, "the function-level imports of cli.py were not seen"


def test_every_package_is_a_room_and_every_room_a_package():
    """A folder missing from the table would fall into its parent's room and take that row's rights."""
    packages = {name for name, (_, is_package) in modules().items() if is_package}
    assert packages == {room for room in MAY_IMPORT if room.startswith("corral.")}
    for room in MAY_IMPORT:
        assert (package_dir(room) / "__init__.py").is_file(), room


@pytest.mark.parametrize("room", DOCUMENTED)
def test_each_room_says_what_it_may_import(room):
    docstring = ast.get_docstring(ast.parse((package_dir(room) / "__init__.py").read_text())) or ""
    paragraph = re.search(r"^May import:(.*?)(?:\n\n|\Z)", docstring, re.DOTALL | re.MULTILINE)
    assert paragraph, f"{room}'s __init__ has no 'May import:' paragraph"
    named = set(re.findall(r"`(corral(?:\.\w+)*)`", paragraph.group(1)))
    assert named == MAY_IMPORT[room]


def test_every_package_is_in_the_wheel():
    """pyproject lists the packages; one not listed works in an editable install and is missing from a wheel."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {name for name, (_, is_package) in modules().items() if is_package}
    assert set(listed) == packages


# -- the checker ------------------------------------------------------------------------------------------


def check(module: str, source: str, table=MAY_IMPORT, is_package: bool = False) -> list[str]:
    return violations(imports_of(module, source, is_package), table)


@pytest.mark.parametrize(
    "module, source, importing",
    [
        ("corral.shared.sync", "def f():\n    from corral.worker import server\n", "corral.worker"),
        ("corral.shared.sync", "from corral import master\n", "corral.master"),
        ("corral.worker.serve.server", "import corral.master.cli\n", "corral.master.cli"),
        ("corral.worker.serve.server", "import bench.apps\n", "bench.apps"),
        ("corral.master.config.sources", "from ..arbiter import loop\n", "corral.master.arbiter"),
        (
            "corral.master.observe.logs",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from corral.master.hooks.run import ServerView\n",
            "corral.master.hooks.run",
        ),
        ("corral.master.arbiter.loop", "from corral.master.cli import main\n", "corral.master.cli"),
        (
            "corral.master.status.control",
            "class C:\n    def m(self):\n        import corral.master.arbiter.workerinfo\n",
            "corral.master.arbiter.workerinfo",
        ),
        # The worker: below the protocols nothing imports one, and http1/ never imports what builds on it.
        (
            "corral.worker.app.pool",
            "from corral.worker.http1.protocol import HttpProtocol\n",
            "corral.worker.http1.protocol",
        ),
        (
            "corral.worker.edge.health",
            "def f():\n    from corral.worker.serve.server import WorkerServer\n",
            "corral.worker.serve.server",
        ),
        (
            "corral.worker.conn.flow",
            "from corral.worker.edge.datarate import RateSweep\n",
            "corral.worker.edge.datarate",
        ),
        (
            "corral.worker.websocket.handshake",
            "from corral.worker.http1.connection import ProtocolError\n",
            "corral.worker.http1.connection",
        ),
        (
            "corral.worker.http1.protocol",
            "def f():\n    from corral.worker.http2.protocol import H2Protocol\n",
            "corral.worker.http2.protocol",
        ),
        ("corral.worker.http2.detect", "from ..wsgi import protocol\n", "corral.worker.wsgi"),
        ("corral.shared.sync", "from corral.shared.settings import Settings\n", "corral.shared.settings"),
    ],
)
def test_the_checker_catches(module, source, importing):
    found = check(module, source)
    assert len(found) == 1 and found[0].startswith(f"{module}:"), found
    assert f" imports {importing}" in found[0]


@pytest.mark.parametrize(
    "module, source",
    [
        ("corral.master.arbiter.loop", "import os\nfrom corral.master.listen.sockets import bind_all\n"),
        ("corral.master.arbiter.loop", "from . import channel, shutdown\nfrom .workerinfo import Worker\n"),
        ("corral.master.cli", "def main():\n    from corral.master.arbiter.loop import Arbiter\n"),
        ("corral.worker.serve.server", "from corral.shared.settings import Settings\n"),
        ("corral.master", "from corral.master.cli import main\n"),
        ("corral.master.listen.tls", "from corral.worker.http2.detect import alpn_protocols\n"),
        ("corral.worker.http2.detect", "from corral.worker.http1.protocol import HttpProtocol\n"),
        ("corral.worker.http1.protocol", "from corral.worker.websocket.handshake import websocket_request\n"),
        (
            "corral.worker.wsgi.cycle",
            (
                "from corral.worker.app.pool import ApplicationInstance\n"
                "from corral.worker.edge.deadline import TIMEOUT_BODY\nfrom corral.worker.conn.phases import BODY\n"
            ),
        ),
        ("corral.worker.serve.server", "def f():\n    from corral.worker.wsgi.protocol import wsgi_setup\n"),
        ("corral.worker.edge.datarate", "from corral.worker.conn.phases import BUSY\n"),
        (
            "corral.shared.settings.compat",
            (
                "from corral.shared.settings.registry import declare\n"
                "from corral.shared.worker_class import check_refused\n"
            ),
        ),
    ],
)
def test_the_checker_allows(module, source):
    assert check(module, source, is_package=module == "corral.master") == []


def test_a_module_loop_is_found_and_what_does_not_run_at_load_is_not():
    known = {"pkg", "pkg.registry", "pkg.extra", "pkg.other"}
    # The old registry: the module imports its companion at its end, which imports it back.
    assert load_edges("pkg.registry", "x = 1\nfrom pkg import extra\n", False, known) == ["pkg", "pkg.extra"]
    assert load_edges("pkg.extra", "from pkg.registry import declare\n", False, known) == ["pkg.registry"]
    assert loops({"pkg.registry": ["pkg.extra"], "pkg.extra": ["pkg.registry"]}) == [
        ["pkg.registry", "pkg.extra", "pkg.registry"]
    ]
    # Inside a function, or for the type checker only, an import does not run at load.
    lazy = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.extra import E\n"
        "def f():\n    from pkg.other import O\n"
    )
    assert load_edges("pkg.registry", lazy, False, known) == []
    # Under try/if at module level, and in a class body, it does; a package's relative import is resolved.
    eager = "try:\n    import pkg.other\nexcept ImportError:\n    pass\nclass C:\n    from . import extra\n"
    assert load_edges("pkg", eager, True, known) == ["pkg.extra", "pkg.other"]


def test_a_loop_in_the_table_is_found():
    table = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset()}
    assert cycles(table) == [["a", "b", "c", "a"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []
