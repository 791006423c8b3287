"""What a compiled hot path buys: corral's own sources compiled with Cython, against the same sources as Python.

    pip install cython                      # and a C compiler
    python -m bench.compiled [--rounds 5] [--duration 3] [--builds plain,typed] [--apps wsgi,asgi]

Issue 11 asked what compiling the hot path (mypyc or Cython, with the pure-Python modules as the fallback)
would buy, and for a prototype if more than 20 %. This is that prototype, kept as a measurement rather than
shipped. It builds, in a temporary folder, the modules of `MODULES` from the checkout's `.py`
files, in two ways:

    plain   Cython compiles the Python as it is (generic object code, no declarations);
    typed   the same, with the augmenting declarations of bench/cython/corral/worker/**/*.pxd (Cython's "pure
            Python mode": the .py stays the source and the fallback): the parser state, the protocol, the
            ASGI and WSGI requests, flow control, the pool's record, the dispatcher and the thread pool become
            extension types whose attributes are C struct fields (the parser's counters and flags as C
            integers); two edits of the sources that extension types need are in `TYPED_EDITS`.

Then it serves `bench.apps:hello_wsgi` (and `bench.apps:hello`, ASGI) with each build and without one, in
interleaved rounds, one worker pinned to cpu 0 and wrk on cpu 1 (`bench.wsgi_dispatch`'s measure): the
server's CPU time per request is the figure to read (steadier than requests/s on a shared machine).

A build is served by `python -m bench.compiled serve BUILD_DIR -- <serve arguments>`: a meta path finder
loads the built extension modules in place of corral's `.py` modules, then corral's own CLI runs (its
workers are forked, so they inherit the finder). corral itself knows nothing of this.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import procs

#: The hot path's modules: the HTTP/1.1 parser callbacks, the response head and framing, the native WSGI path.
MODULES = (
    "corral.worker.http1.connection",
    "corral.worker.conn.response",
    "corral.worker.http1.framing",
    "corral.worker.wsgi.cycle",
    "corral.worker.wsgi.dispatch",
    "corral.worker.wsgi.call",
    "corral.worker.wsgi.threads",
    "corral.worker.wsgi.protocol",
    "corral.worker.http1.protocol",
    "corral.worker.http1.cycle",
    "corral.worker.conn.flow",
    "corral.worker.app.pool",
    "corral.shared.wsgi_environ",
)  # each from its file in the checkout: corral.worker.http1.cycle is worker/http1/cycle.py

#: What the typed build changes in the sources, module -> (old, new) pairs. An extension type cannot derive from
#: a Python class (asyncio needs only the methods), and no instance's __class__ can be set to one (the HTTP/2
#: detector then keeps its per-read phase test instead of becoming its base class). http2/detect.py is not compiled:
#: its edited source is loaded from the build instead.
TYPED_EDITS = {
    "corral.worker.http1.protocol": [("class HttpProtocol(asyncio.Protocol):", "class HttpProtocol:")],
    "corral.worker.http2.detect": [("http1.__class__ = base", "pass  # (bench.compiled: base is an extension type)")],
}

DECLARATIONS = Path(__file__).resolve().parent / "cython"
BUILD_DIR_VARIABLE = "BENCH_COMPILED_DIR"  # where main() built: bench.wsgi_dispatch's "-plain" / "-typed" variants


def build(dest: Path, typed: bool) -> None:
    """Compile MODULES into `dest` (in a corral/<package>/ layout, as cimports need); the extension modules
    go to `dest`/lib."""
    from Cython.Build import cythonize  # only this tool needs Cython
    from setuptools import Extension
    from setuptools.dist import Distribution

    dest.mkdir(parents=True, exist_ok=True)
    # Every package a module lies in (corral, corral/worker, corral/worker/http1, ...), as cimports need.
    for package in {"/".join(name.split(".")[:depth]) for name in MODULES for depth in range(1, name.count(".") + 1)}:
        (dest / package).mkdir(parents=True, exist_ok=True)
        (dest / package / "__init__.py").touch()
    extensions = []
    for name in MODULES:
        staged = dest / name.replace(".", "/")
        declarations = DECLARATIONS / (name.replace(".", "/") + ".pxd")
        if typed and declarations.exists():
            shutil.copyfile(declarations, staged.with_suffix(".pxd"))
        staged.with_suffix(".py").write_text(_source(name, typed))
        extensions.append(Extension(name, [str(staged.with_suffix(".py"))]))
    for name in TYPED_EDITS.keys() - set(MODULES) if typed else ():
        loaded = dest / "lib" / name.replace(".", "/")
        loaded.parent.mkdir(parents=True, exist_ok=True)
        loaded.with_suffix(".py").write_text(_source(name, typed))
    modules = cythonize(
        extensions,
        include_path=[str(dest)],
        quiet=True,
        nthreads=os.cpu_count() or 1,
        # Types come from the .pxd files only: annotations typed by Cython would change what a
        # function accepts (an `int` parameter refusing None), so the build would not be the sources.
        compiler_directives={"language_level": 3, "annotation_typing": False},
    )
    distribution = Distribution({"name": "corral-bench-compiled", "ext_modules": modules})
    command = distribution.get_command_obj("build_ext")
    command.build_lib = str(dest / "lib")
    command.build_temp = str(dest / "tmp")
    command.parallel = os.cpu_count() or 1
    command.ensure_finalized()
    command.run()


def _source(name: str, typed: bool) -> str:
    """The source of module `name`, with the typed build's edits when `typed`."""
    text = (Path(procs.ROOT) / name.removeprefix("corral.").replace(".", "/")).with_suffix(".py").read_text()
    for old, new in TYPED_EDITS.get(name, ()) if typed else ():
        if old not in text:
            raise RuntimeError(f"bench.compiled: {old!r} is no longer in {name}: update TYPED_EDITS")
        text = text.replace(old, new)
    return text


def built(kind: str) -> Path:
    """The extension modules of the `kind` ("plain", "typed") build that main() made: build(root / kind)."""
    return Path(os.environ[BUILD_DIR_VARIABLE]) / kind / "lib"


class _Compiled:
    """Loads MODULES from the extension modules of one build (and the typed build's edited sources)."""

    def __init__(self, lib: Path) -> None:
        self.lib = lib

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES and fullname not in TYPED_EDITS:
            return None
        folder = self.lib / fullname.rpartition(".")[0].replace(".", "/")
        for suffix in (*importlib.machinery.EXTENSION_SUFFIXES, ".py"):
            candidate = folder / (fullname.rpartition(".")[2] + suffix)
            if candidate.exists():
                return importlib.util.spec_from_file_location(fullname, candidate)
        if fullname not in MODULES:
            return None  # an edit of the typed build only: the plain build loads the checkout's source
        raise ImportError(f"bench.compiled: {fullname} was not built in {self.lib}")


def serve(lib: Path, argv: list[str]) -> int:
    sys.meta_path.insert(0, _Compiled(lib))
    from corral.master.cli import main as serve_main  # after the finder: workers inherit it

    sys.argv = ["serve", *argv]
    return serve_main()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        rest = argv[2:]
        return serve(Path(argv[1]), rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--builds", default="plain,typed")
    parser.add_argument("--apps", default="wsgi,asgi")
    parser.add_argument("--keep", metavar="DIR", help="build into DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    from bench import wsgi_dispatch

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="corral-compiled-"))
    try:
        kinds = args.builds.split(",")
        for kind in kinds:
            build(root / kind, typed=kind == "typed")
        variants = []
        for app in args.apps.split(","):
            base = "corral-pool" if app == "wsgi" else "corral-asgi"
            variants += [base] + [f"{base}-{kind}" for kind in kinds]
        os.environ[BUILD_DIR_VARIABLE] = str(root)
        return wsgi_dispatch.main(
            ["--rounds", str(args.rounds), "--duration", str(args.duration), "--variants", ",".join(variants)]
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
