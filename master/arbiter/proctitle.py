"""Process titles (`corral: master [APP]`, `corral: worker N [APP]`), best effort."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["set_title"]

_set: Callable[[str], None] | None
try:
    from setproctitle import setproctitle as _set
except ImportError:  # pragma: no cover - setproctitle is a dependency, but titles are cosmetic
    _set = None


def set_title(role: str, name: str) -> None:
    if _set is not None:
        _set(f"corral: {role} [{name}]")
