"""The table of peers' names: complete against gunicorn's settings, consistent with corral's registry, and
the migration page (docs/migrating-from-gunicorn.md) generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.master.cli import _known_options
from corral.master.config import migration
from corral.master.config.carryover import scan_flags
from corral.master.config.migration import PATH, page
from corral.master.config.peer_names import GUNICORN, PEER_FLAGS
from corral.shared.settings import REGISTRY
from corral.shared.worker_class import KWARGS

ROOT = Path(__file__).resolve().parents[2]
CLI_ONLY = {"config", "check_config", "print_config"}


def test_the_committed_migration_page_is_the_generated_one():
    committed = ROOT / "docs" / "migrating-from-gunicorn.md"
    assert committed.read_text() == page(), "run: python -m corral.master.config.migration"
    assert "(docs/migrating-from-gunicorn.md)" in (ROOT / "README.md").read_text()  # the README links to it


def test_the_page_is_written_where_it_is_committed():
    """`python -m corral.master.config.migration` is run in a checkout; a wheel (CI installs one) has no docs/."""
    if Path(migration.__file__).resolve() != ROOT / "master" / "config" / "migration.py":  # CI's venv is in ROOT
        pytest.skip("corral is installed from a wheel, not run from this checkout")
    assert PATH == ROOT / "docs" / "migrating-from-gunicorn.md"


def test_the_migration_page_lists_every_gunicorn_setting_once():
    """Checked against gunicorn's own list: each setting is one row, in the section of what corral does."""
    config = pytest.importorskip("gunicorn.config")
    text = page()
    sections = re.split(r"^### ", text, flags=re.MULTILINE)
    kinds = {"Same meaning": ("same", "alias"), "Accepted and ignored": ("noop",), "Refused": ("refuse",)}
    seen: dict[str, str] = {}
    for section in sections[1:]:
        title = next(key for key in kinds if section.startswith(key))
        for name in re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE):
            assert name not in seen, name
            seen[name] = title
            assert GUNICORN[name].kind in kinds[title], name
    assert set(seen) == {setting.name for setting in config.KNOWN_SETTINGS}
    assert f"each of gunicorn's {len(config.KNOWN_SETTINGS)} settings" in text
    for name in KWARGS:  # and every uvicorn Config argument a UvicornWorker's CONFIG_KWARGS may hold
        assert re.search(rf"^\|[^|\n]*`{name}`", text, flags=re.MULTILINE), name


def test_every_config_kwarg_is_an_argument_of_uvicorns_config():
    import inspect

    config = pytest.importorskip("uvicorn.config")
    arguments = set(inspect.signature(config.Config.__init__).parameters) - {"self"}
    assert set(KWARGS) <= arguments
    assert arguments - set(KWARGS) == set(), "a uvicorn Config argument the table does not say anything about"


def test_every_gunicorn_setting_and_flag_is_in_the_table():
    config = pytest.importorskip("gunicorn.config")
    theirs = {setting.name: setting for setting in config.KNOWN_SETTINGS}
    assert set(theirs) == set(GUNICORN)
    for name, setting in theirs.items():
        assert set(setting.cli or ()) <= set(GUNICORN[name].flags), name


def test_the_table_agrees_with_the_registry():
    for name, entry in GUNICORN.items():
        if entry.kind == "alias":
            assert entry.corral in REGISTRY, name
        elif entry.kind == "same" and name not in CLI_ONLY:
            assert name in REGISTRY, name
        else:
            assert entry.kind == "same" or name not in REGISTRY, name
    known = _known_options()
    for flag, (corral, _) in PEER_FLAGS.items():
        if corral.startswith("-"):
            assert corral.split()[0].split("/")[-1] in known, flag


def test_every_gunicorn_flag_is_understood_or_explained():
    """A gunicorn flag is corral's, carried over, dropped with a warning, or refused saying why."""
    known = _known_options()
    for entry in GUNICORN.values():
        for flag in entry.flags:
            kept, problems, warnings = scan_flags([flag, "x"] if entry.takes_value else [flag], known)
            if entry.kind == "noop":
                assert warnings and not problems and kept == [], flag
            elif entry.kind == "refuse":
                assert problems and "is not supported" in problems[0] and entry.note in problems[0], flag
            else:
                assert not problems, (flag, problems)
