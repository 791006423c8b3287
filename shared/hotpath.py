"""The compiled hot path: which modules `pip install` compiles with Cython, and the switch back to Python.

`pip install` compiles the modules in `COMPILED` (the HTTP/1.1 parser callbacks, the response framing and
the native WSGI path) from their unchanged `.py` sources with Cython when it can (setup.py); the `.py`
files are installed beside the extension modules, and Python's import system prefers the extension. With
no compiler, or with `CORRAL_PURE_PYTHON=1` at install time, nothing is compiled and the same sources run
as Python.

`CORRAL_PURE_PYTHON=1` at run time makes the processes import those modules from their `.py` sources
even where compiled ones are installed: for a profiler or a debugger that needs Python frames, or to
tell whether a problem comes from the compilation. It must be in the environment before `corral` is
imported (the master's children inherit it).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

__all__ = ["COMPILED", "install_switch", "pure_python_requested", "compiled_modules"]

# name -> source path relative to the project root (setup.py reads this table; keep it literal).
COMPILED = {
    "corral.worker.http11": "worker/http11.py",
    "corral.worker.protocol": "worker/protocol.py",
    "corral.worker.response": "worker/response.py",
    "corral.worker.framing": "worker/framing.py",
    "corral.worker.wsgi_cycle": "worker/wsgi_cycle.py",
    "corral.worker.wsgi_call": "worker/wsgi_call.py",
    "corral.worker.wsgi_pool": "worker/wsgi_pool.py",
    "corral.worker.wsgi_protocol": "worker/wsgi_protocol.py",
    "corral.shared.wsgi_environ": "shared/wsgi_environ.py",
}


def pure_python_requested() -> bool:
    return os.environ.get("CORRAL_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no")


class _SourceFirst:
    """A meta path finder that loads the modules of `COMPILED` from their `.py` files."""

    @staticmethod
    def find_spec(fullname: str, path: list[str] | None, target: ModuleType | None = None):  # noqa: ANN205
        if fullname not in COMPILED or not path:
            return None
        filename = fullname.rpartition(".")[2] + ".py"
        for entry in path:
            source = os.path.join(entry, filename)
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def install_switch() -> None:
    """Called by `corral.shared` and `corral.worker` before any of their modules is imported."""
    if pure_python_requested() and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())


def compiled_modules() -> list[str]:
    """The modules of `COMPILED` that this interpreter would load from extension modules."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    out = []
    for name in COMPILED:
        module = sys.modules.get(name)
        if module is not None:
            origin = getattr(module, "__file__", "") or ""
        else:
            spec = importlib.util.find_spec(name)
            origin = (spec.origin or "") if spec is not None else ""
        if origin.endswith(suffixes):
            out.append(name)
    return out
