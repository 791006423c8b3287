"""The documentation site (mkdocs.yml, docs/) and the README: the settings reference lists every setting of the
registry, every deployment recipe the e2e tests run is on a page, every page is in the navigation, the
uvicorn page covers uvicorn's whole command line, and no page names internal work items."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from corral.master.cli import _known_options
from corral.master.config.peer_names import PEER_FLAGS
from corral.shared.settings import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
WORK_ITEM = re.compile(r"[Ii]ssues? #?[0-9]+")


def _hooks():
    spec = importlib.util.spec_from_file_location("corral_docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


# ---------------------------------------------------------------------------- the settings reference


def test_the_settings_reference_has_every_setting_once_with_its_four_spellings():
    hooks = _hooks()
    text = hooks.settings_reference()
    for name, setting in REGISTRY.items():
        heading = f"### `{name}` {{#{name}}}"
        assert text.count(heading) == 1, name
        block = text[text.index(heading) :].split("\n### ", 1)[0]
        assert f"`{setting.env}`" in block, name
        assert f"`{name} = " in block, name
        assert setting.help in block, name
        if setting.cli:
            for flag in setting.flags:
                assert f"`{flag}" in block, (name, flag)
        else:
            assert "| no flag |" in block, name
        assert f"| [`{name}`](#{name}) |" in text, name  # the index table
    assert text.count("\n### ") == len(REGISTRY)
    assert f"{len(REGISTRY)} settings" in text


def test_the_defaults_on_the_page_parse_back_to_the_registrys_defaults():
    """What the page shows as a default is what a user may write: it parses to the same value."""
    hooks = _hooks()
    for name, setting in REGISTRY.items():
        shown = hooks.default_text(setting)
        if not shown or not setting.cli:
            continue  # unset/empty, or a hook (a callable): nothing to write
        assert setting.parse(shown) == setting.default, (name, shown)


def test_every_section_has_a_title_and_the_marker_is_on_the_settings_page():
    hooks = _hooks()
    assert set(hooks.sections()) <= set(hooks.SECTIONS), "a new settings section: give it a title in docs/hooks.py"
    assert hooks.MARKER in (DOCS / "settings.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the docs extra)")
def test_the_site_builds_strict_and_its_settings_page_lists_every_setting(tmp_path):
    """`mkdocs build --strict` (what CI runs), then the built settings page: an anchor per setting."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    html = (tmp_path / "site" / "settings" / "index.html").read_text()
    ids = set(re.findall(r'<h3 id="([a-z0-9_]+)"', html))
    assert ids == set(REGISTRY)
    deployment = (tmp_path / "site" / "deployment" / "index.html").read_text()
    assert "--8&lt;--" not in deployment and "keepalive_timeout" in deployment  # the recipes were included
    assert not (tmp_path / "site" / "hooks.py").exists()  # the build's own code is not published


# ---------------------------------------------------------------------------- pages and recipes


def test_every_recipe_is_included_by_a_page_inside_a_fence():
    recipes = sorted(path.name for path in (DOCS / "recipes").iterdir() if path.is_file())
    assert recipes, "docs/recipes/ is empty"
    included: dict[str, int] = {}
    for page in _pages():
        for fence in re.finditer(r"^```[a-z]+\n--8<-- \"recipes/([^\"]+)\"\n```$", page.read_text(), re.MULTILINE):
            included[fence.group(1)] = included.get(fence.group(1), 0) + 1
    assert {name: included.get(name, 0) for name in recipes} == dict.fromkeys(recipes, 1)


def test_every_page_is_in_the_navigation_and_every_nav_entry_exists():
    nav = re.findall(r"^\s*- [^:\n]+: (\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE)
    assert len(nav) == len(set(nav))
    assert set(nav) == {str(page.relative_to(DOCS)) for page in _pages()}


def test_no_page_names_internal_work_items():
    for path in [README, *_pages()]:
        found = WORK_ITEM.search(path.read_text())
        assert found is None, f"{path.relative_to(ROOT)}: {found.group(0)!r}: say what the product does instead"


def test_the_readme_is_short_and_starts_with_the_two_set_up_commands():
    text = README.read_text()
    assert 150 <= len(text.splitlines()) <= 250
    first_block = re.search(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert first_block is not None
    lines = first_block.group(1).splitlines()
    assert lines[0].startswith("python3 -m venv .venv") and "serve " in lines[0]
    assert lines[1] == "python -m pytest"
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), link


def test_the_readmes_production_command_is_the_serve_recipe():
    """The README is no site page (it cannot include a recipe): its copy of the command is checked instead."""
    text = README.read_text()
    block = re.search(r"^## Production\n.*?^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block is not None
    recipe = [
        line
        for line in (DOCS / "recipes" / "serve.sh").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(recipe) == 1
    expected = shlex.split(recipe[0])
    assert expected[0].endswith("/bin/serve")
    command = block.group(1).replace("\\\n", " ")  # a shell's line continuation
    assert shlex.split(command) == ["serve", *expected[1:]]


# ---------------------------------------------------------------------------- migrating from uvicorn


def _uvicorn_options() -> set[str]:
    main = pytest.importorskip("uvicorn.main")
    command = getattr(main.main, "__self__", main.main)  # the click command (its `main` may be bound)
    options = set()
    for param in command.params:
        options.update(opt for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--"))
    return options - {"--help"}


def _uvicorn_table() -> list[tuple[str, str]]:
    text = (DOCS / "migrating-from-uvicorn.md").read_text()
    table = text[text.index("| uvicorn | corral | notes |") :]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((cells[0], cells[1]))
    return rows


def test_the_uvicorn_page_covers_every_uvicorn_flag():
    theirs = _uvicorn_options()
    listed = {flag for left, _ in _uvicorn_table() for flag in re.findall(r"`(--[a-z0-9-]+)`", left)}
    assert theirs - listed == set(), "uvicorn flags missing from docs/migrating-from-uvicorn.md"
    assert listed - theirs == set(), "flags on the page that uvicorn does not have"


def test_the_uvicorn_pages_corral_flags_exist_and_serve_answers_the_others():
    known = _known_options()
    for left, right in _uvicorn_table():
        for flag in re.findall(r"(?<![\w-])(--?[a-z0-9][a-z0-9-]*)", right.replace("/", " ")):
            assert flag in known, (left, flag)
    for flag in _uvicorn_options() - known:
        assert flag in PEER_FLAGS, f"serve has no answer for uvicorn's {flag}: add it to PEER_FLAGS"
