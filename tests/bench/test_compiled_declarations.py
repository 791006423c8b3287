"""`python -m bench.compiled` types corral's classes with the declarations in bench/cython/: they must name
exactly the attributes the classes have, or the typed build breaks (an attribute missing from a declaration
raises AttributeError only in that build). Compared here with the classes' `__slots__`, without Cython."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

DECLARATIONS = Path(__file__).resolve().parents[2] / "bench" / "cython"
_CLASS = re.compile(r"^cdef class (\w+)(?:\((\w+)\))?:\s*$")
_FIELDS = re.compile(r"^\s+cdef (?:public )?(?:object|bint|bytes|list|Py_ssize_t) (.+)$")


def declared(pxd: Path) -> dict[str, tuple[str | None, set[str]]]:
    """class name -> (declared base, attribute names) of one .pxd file."""
    classes: dict[str, tuple[str | None, set[str]]] = {}
    current = None
    for line in pxd.read_text().splitlines():
        if match := _CLASS.match(line):
            current = match.group(1)
            classes[current] = (match.group(2), set())
        elif current and (match := _FIELDS.match(line)):
            classes[current][1].update(name.strip() for name in match.group(1).split(","))
    return classes


def slots(cls: type) -> set[str]:
    """Every slot of `cls` and its bases (what a Python instance can hold)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        value = klass.__dict__.get("__slots__", ())
        names.update((value,) if isinstance(value, str) else value)
    return names


PXD_FILES = sorted(DECLARATIONS.rglob("*.pxd"))
# Every declared class: (module, name) -> (declared base name, its own fields).
ALL = {
    (".".join(p.relative_to(DECLARATIONS).with_suffix("").parts), name): value
    for p in PXD_FILES
    for name, value in declared(p).items()
}
BASES = {base for base, _ in ALL.values() if base is not None}


def fields_with_bases(module: str, name: str) -> set[str]:
    base, fields = ALL[(module, name)]
    if base is None:
        return set(fields)
    cls = getattr(importlib.import_module(module), name)
    base_cls = next(c for c in cls.__mro__[1:] if c.__name__ == base)
    return fields | fields_with_bases(base_cls.__module__, base)


def test_declarations_exist() -> None:
    assert {p.relative_to(DECLARATIONS).with_suffix("").as_posix() for p in PXD_FILES} >= {
        "corral/worker/http1/connection",
        "corral/worker/wsgi/call",
        "corral/worker/wsgi/cycle",
        "corral/worker/http1/protocol",
    }


@pytest.mark.parametrize("key", sorted(ALL), ids=lambda k: f"{k[0].rpartition('.')[2]}.{k[1]}")
def test_declared_attributes_are_the_slots(key: tuple[str, str]) -> None:
    module, name = key
    cls = getattr(importlib.import_module(module), name)
    fields = fields_with_bases(module, name)
    if name in BASES:
        # A base may declare its subclasses' attributes (WsgiCall holds WsgiCycle's, so that the methods of
        # both read C fields): it must at least hold its own slots.
        missing = slots(cls) - fields
        assert not missing, f"{module}.{name}: __slots__ {sorted(missing)} are not declared"
    else:
        assert fields == slots(cls), (
            f"{module}.{name}: declared {sorted(fields - slots(cls))} are not slots, "
            f"slots {sorted(slots(cls) - fields)} are not declared"
        )


def test_the_typed_builds_source_edits_still_apply():
    """bench.compiled edits two sources for the typed build (TYPED_EDITS): each edit's text must still be there."""
    sys.path.insert(0, str(DECLARATIONS.parents[1]))
    try:
        compiled = importlib.import_module("bench.compiled")
    finally:
        sys.path.remove(str(DECLARATIONS.parents[1]))
    assert compiled.TYPED_EDITS
    for name, edits in compiled.TYPED_EDITS.items():
        text = compiled._source(name, True)
        for old, new in edits:
            assert old not in text and new in text, name
