"""The table of peers' names: complete against gunicorn's settings, consistent with corral's registry, and
the README's gunicorn table generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.master.carryover import scan_flags
from corral.master.cli import _known_options
from corral.master.peer_names import GUNICORN, PEER_FLAGS, readme_table
from corral.shared.settings import REGISTRY

README = Path(__file__).resolve().parents[2] / "README.md"
CLI_ONLY = {"config", "check_config", "print_config"}


def test_readme_table_is_generated_from_the_table():
    text = README.read_text()
    block = re.search(r"<!-- gunicorn-table:start -->\n(.*?)\n<!-- gunicorn-table:end -->", text, re.S)
    assert block is not None
    assert block.group(1).splitlines() == readme_table()


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
    for name, entry in GUNICORN.items():
        for flag in entry.flags:
            kept, problems, warnings = scan_flags([flag, "x"] if entry.takes_value else [flag], known)
            if entry.kind == "noop":
                assert warnings and not problems and kept == [], flag
            elif entry.kind == "refuse":
                assert problems and "is not supported" in problems[0] and entry.note in problems[0], flag
            else:
                assert not problems, (flag, problems)
