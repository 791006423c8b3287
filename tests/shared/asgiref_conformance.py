"""asgiref's own test suite, run against corral's bridging layer.

corral.shared (and corral.worker.app.pool) promise asgiref's API module for module. This runner checks the
promise with asgiref's own tests: it downloads the asgiref sdist with pip into a temporary folder (asgiref's
code never enters this repository), keeps only its ``tests/`` folder and its pytest settings, and generates
next to them a package named ``asgiref`` whose modules re-export corral's (``asgiref.sync`` answers with
``corral.shared.sync``, ``asgiref.server`` with ``corral.worker.app.pool``...). Each asgiref test module
then runs in its own pytest process, with a per-test and a per-module timeout; the outcome of every test is
read back from a JUnit XML report.

The installed asgiref (Django depends on it) must never answer: the generated package comes first on
``PYTHONPATH``, a conftest checks at start-up that ``asgiref`` is the generated package and its modules are
corral's, and at the end that no module of the real asgiref was loaded; the runner checks the conftest ran.

Usage, outside pytest: ``python tests/shared/asgiref_conformance.py [test_sync.py ...]`` prints a report
per module (``--keep DIR`` keeps the prepared tree there).
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

ASGIREF_VERSION = "3.13.0"

#: asgiref module -> the corral module that answers for it.
MODULE_MAP = {
    "compatibility": "corral.shared.compatibility",
    "current_thread_executor": "corral.shared.current_thread_executor",
    "local": "corral.shared.local",
    "server": "corral.worker.app.pool",
    "sync": "corral.shared.sync",
    "testing": "corral.shared.testing",
    "timeout": "corral.shared.timeout",
    "wsgi": "corral.shared.wsgi",
}

#: asgiref's private names that its tests import at module level and corral has no counterpart of: the
#: generated modules define them as placeholders that fail on use, so that the rest of the module runs.
PRIVATE_PLACEHOLDERS = {
    "local": ["_DefaultLocal"],
}

#: asgiref internals that its behaviour tests read to see which executor or context is in force. Each has
#: an exact counterpart in corral (a context variable, the executor a context owns), so rather than lose
#: those tests the generated asgiref.sync installs read-only views of corral's counterparts under
#: asgiref's names, in the test process only:
#:   AsyncToSync.executors.current          -> corral.shared.sync._current_executor.get(None)
#:   SyncToAsync.thread_sensitive_context   -> corral.shared.sync._thread_sensitive_context (the ContextVar)
#:   SyncToAsync.context_to_thread_executor -> context -> the executor a ThreadSensitiveContext made itself
#:                                             (`in`, [], get, pop: what the tests use)
_SYNC_VIEWS = """

# Read-only views of asgiref internals its tests read, onto corral's counterparts (see the runner).
class _CurrentExecutorView:
    @property
    def current(self):
        return _current_executor.get(None)


class _ContextExecutorsView:
    def _find(self, context):
        executor = getattr(context, "_own_executor", None)
        if executor is None or context._own_pid != __corral_target__._pid:  # the live pid (fork)
            raise KeyError(context)
        return executor

    def __contains__(self, context):
        try:
            self._find(context)
        except KeyError:
            return False
        return True

    def __getitem__(self, context):
        return self._find(context)

    def get(self, context, default=None):
        return self[context] if context in self else default

    def pop(self, context, *default):
        if context not in self and default:
            return default[0]
        executor = self._find(context)
        context._own_executor = None  # handed over to the caller, who shuts it down
        return executor


AsyncToSync.executors = _CurrentExecutorView()
SyncToAsync.thread_sensitive_context = _thread_sensitive_context
SyncToAsync.context_to_thread_executor = _ContextExecutorsView()
"""
SHIM_EXTRAS = {"sync": _SYNC_VIEWS}

#: Tests of asgiref's private internals, not of its API: node id (relative to the sdist) -> why excluded.
EXCLUDED: dict[str, str] = {
    "tests/test_local.py::test_new_returns_specialized_subclass": (
        "asserts type(Local()) is asgiref.local._DefaultLocal, a private class: corral's Local() is a Local "
        "(Local(thread_critical=True) is a private subclass, as in asgiref)"
    ),
    "tests/test_sync.py::test_sync_to_async_thread_handler_child_is_partial": (
        "overrides SyncToAsync.thread_handler(loop, exc_info, task_context, func, child), asgiref's private "
        "hook (its docstring: 'Canary, not a compatibility promise'); corral has no such method"
    ),
}

#: asgiref 3.13 supports Python 3.11+, and these of its tests use 3.11 APIs in their own code: on Python 3.10
#: they fail before they reach the bridge, so they are excluded there (node id -> what the test itself needs).
NEEDS_PYTHON_311: dict[str, str] = {
    "tests/test_sync.py::test_sync_to_async_with_blocker_non_thread_sensitive": "asyncio.timeout (3.11)",
    "tests/test_sync.py::test_two_nested_tasks_with_asyncio_run": "asyncio.Barrier (3.11)",
    "tests/test_sync_executor_context_scenario.py::test_force_new_context_keeps_executor_bindings_local_to_each_task": (
        "asyncio.TaskGroup (3.11), in the child process it starts"
    ),
    "tests/test_sync_thread_sensitive_context.py::test_executor_context_siblings_are_isolated": (
        "asyncio.Barrier (3.11)"
    ),
    "tests/test_sync_contextvars.py::test_sync_to_async_contextvars_with_custom_context_and_parallel_tasks": (
        "create_task(context=) (3.11): asgiref's own skipif"
    ),
    "tests/test_testing.py::test_receive_output_timeout_restores_cancellation_count": (
        "Task.cancelling() (3.11), and pytest.raises(TimeoutError) for asyncio.TimeoutError, which is the builtin "
        "TimeoutError only from 3.11"
    ),
}
if sys.version_info < (3, 11):
    EXCLUDED.update(NEEDS_PYTHON_311)

#: The test modules of the asgiref 3.13.0 sdist (checked against the download: none may go unrun).
ASGIREF_MODULES = (
    "test_benchmark_local.py", "test_compatibility.py", "test_garbage_collection.py", "test_local.py",
    "test_server.py", "test_sync.py", "test_sync_contextvars.py", "test_sync_executor_context_scenario.py",
    "test_sync_thread_sensitive_context.py", "test_testing.py", "test_timeout.py", "test_wsgi.py",
)  # fmt: skip

#: Per-test limit inside a module run (pytest-timeout), and the limit for a whole module's process.
TEST_TIMEOUT = 30
MODULE_TIMEOUT = 240

#: Outcomes that count as a pass: asgiref's own xfail marks (its suite expects these to fail on asgiref),
#: unless the test only "failed" by hanging until the per-test timeout.
PASSING = frozenset({"passed", "xfailed"})


@dataclass
class ModuleResult:
    """The outcome of one asgiref test module: per-test outcomes, and why the run itself failed, if it did."""

    module: str
    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed/failed/error/skipped/xfailed
    messages: dict[str, str] = field(default_factory=dict)  # node id -> first line of the failure
    problem: str = ""  # the module did not run to the end (timeout, crash, the guard did not answer)
    output: str = ""

    def failures(self) -> dict[str, str]:
        """Non-excluded tests that did not pass, with their outcome and message."""
        return {
            node: f"{outcome}: {self.messages.get(node, '')}".rstrip(": ")
            for node, outcome in self.outcomes.items()
            if outcome not in PASSING and node not in EXCLUDED
        }

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for node, outcome in self.outcomes.items():
            key = "excluded" if node in EXCLUDED else outcome
            counts[key] = counts.get(key, 0) + 1
        text = ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))
        return f"{self.module}: {text or 'no tests'}" + (f" [{self.problem}]" if self.problem else "")


# --------------------------------------------------------------------------------------------------------
# Preparing the tree


def download_sdist(dest: Path) -> Path:
    """The asgiref sdist, fetched with pip; raises RuntimeError (with pip's output) when it cannot."""
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        # Only its tests/ folder is used, never its package: asgiref 3.13 requires Python 3.11+ to install.
        "--ignore-requires-python", f"asgiref=={ASGIREF_VERSION}", "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    sdists = sorted(dest.glob(f"asgiref-{ASGIREF_VERSION}.tar.gz"))
    if proc.returncode != 0 or not sdists:
        raise RuntimeError(
            f"could not download the asgiref {ASGIREF_VERSION} sdist (the conformance tests need PyPI): "
            f"{' '.join(command)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return sdists[0]


def extract_tests(sdist: Path, root: Path) -> None:
    """Extract the sdist's tests/ folder into root/tests and its pytest settings into root/pytest.ini."""
    prefix = f"asgiref-{ASGIREF_VERSION}/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix + "tests/") and m.isfile()]
        if not members:
            raise RuntimeError(f"{sdist.name} has no tests/ folder")
        for member in members:
            target = root / member.name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]  # a regular file of the sdist
        setup_cfg = tar.extractfile(prefix + "setup.cfg").read().decode()  # type: ignore[union-attr]  # a regular file of the sdist
    # asgiref's own pytest settings (asyncio mode, loop scope), as its tox runs them.
    parser = configparser.ConfigParser()
    parser.read_string(setup_cfg)
    options = dict(parser["tool:pytest"]) if parser.has_section("tool:pytest") else {}
    options["testpaths"] = "tests"
    lines = ["[pytest]"] + [f"{key} = {value}" for key, value in options.items()]
    (root / "pytest.ini").write_text("\n".join(lines) + "\n")


_SHIM_MODULE = '''"""Generated by corral's asgiref conformance runner: asgiref.{name} answered by {target}."""
import {target} as _corral_target

globals().update(
    {{key: value for key, value in vars(_corral_target).items() if not (key.startswith("__") and key.endswith("__"))}}
)
__all__ = list(getattr(_corral_target, "__all__", ()))
__corral_target__ = _corral_target
del _corral_target
'''

_PLACEHOLDER = '''

class {name}:
    """Placeholder for asgiref's private {module}.{name}: corral has no such internal."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("asgiref.{module}.{name}: an asgiref internal that corral does not have")
'''

_SHIM_INIT = '''"""Generated by corral's asgiref conformance runner: corral's modules under asgiref's names."""
__version__ = "{version}"
__corral_shim__ = True
'''

# Runs in every module's pytest process (rootdir conftest): proves that the generated package answers.
_GUARD_CONFTEST = '''"""Generated by corral's asgiref conformance runner: asgiref must be corral's, not the real one."""
import importlib
import os
import sys

SHIM_DIR = {shim_dir!r}
MODULE_MAP = {module_map!r}

import asgiref

answering = os.path.realpath(asgiref.__file__)
if not getattr(asgiref, "__corral_shim__", False) or not answering.startswith(SHIM_DIR):
    raise RuntimeError(f"asgiref is answered by {{asgiref.__file__}}, not by the generated package in {{SHIM_DIR}}")
for name, target in MODULE_MAP.items():
    module = importlib.import_module("asgiref." + name)
    if module.__corral_target__ is not importlib.import_module(target):
        raise RuntimeError(f"asgiref.{{name}} does not answer with {{target}}")


def pytest_sessionfinish(session, exitstatus):
    strays = sorted(
        name for name, module in list(sys.modules.items())
        if (name == "asgiref" or name.startswith("asgiref."))
        and not os.path.realpath(getattr(module, "__file__", "") or "").startswith(SHIM_DIR)
    )
    with open(os.path.join(os.path.dirname(SHIM_DIR), "guard-" + str(os.getpid())), "w") as report:
        report.write("strays: " + ",".join(strays) + "\\n")
'''


def write_shim(root: Path) -> Path:
    """Generate root/shim/asgiref (corral's modules under asgiref's names) and the guard conftest."""
    shim_dir = root / "shim"
    package = shim_dir / "asgiref"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(_SHIM_INIT.format(version=ASGIREF_VERSION))
    for name, target in MODULE_MAP.items():
        source = _SHIM_MODULE.format(name=name, target=target)
        for placeholder in PRIVATE_PLACEHOLDERS.get(name, ()):
            source += _PLACEHOLDER.format(module=name, name=placeholder)
        source += SHIM_EXTRAS.get(name, "")
        (package / f"{name}.py").write_text(source)
    guard = _GUARD_CONFTEST.format(shim_dir=str(shim_dir.resolve()), module_map=MODULE_MAP)
    (root / "conftest.py").write_text(guard)
    return shim_dir


def prepare(root: Path) -> list[str]:
    """Download and lay out everything under root; returns the asgiref test modules found."""
    download = root / "download"
    download.mkdir(parents=True, exist_ok=True)
    extract_tests(download_sdist(download), root)
    write_shim(root)
    return sorted(path.name for path in (root / "tests").glob("test_*.py"))


# --------------------------------------------------------------------------------------------------------
# Running


def run_module(root: Path, module: str, timeout: float = MODULE_TIMEOUT, *, shim: bool = True) -> ModuleResult:
    """Run one asgiref test module in its own pytest process under root (as laid out by `prepare`).

    ``shim=False`` leaves the generated package off the path (to check that the guard then refuses to run).
    """
    result = ModuleResult(module)
    report = root / f"junit-{module}.xml"
    report.unlink(missing_ok=True)
    for stale in root.glob("guard-*"):
        stale.unlink()
    env = dict(os.environ)
    path = [str(root / "shim")] if shim else []
    env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    command = [
        sys.executable, "-m", "pytest", f"tests/{module}", "-c", "pytest.ini", "--rootdir", ".",
        "-p", "no:cacheprovider", "-q", "-rfE", f"--junitxml={report}", f"--timeout={TEST_TIMEOUT}",
        "--benchmark-disable",
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        result.output = proc.stdout + proc.stderr
        if proc.returncode not in (0, 1, 5):  # 1: some tests failed (read below), 5: none collected
            result.problem = f"pytest exited {proc.returncode}"
    except subprocess.TimeoutExpired as expired:
        result.problem = f"the module did not finish within {timeout:.0f} s"
        result.output = _text(expired.stdout) + _text(expired.stderr)
    guards = list(root.glob("guard-*"))
    if not guards:
        result.problem = result.problem or "the asgiref guard did not report (did the session start?)"
    else:
        strays = guards[0].read_text().strip().removeprefix("strays:").strip()
        if strays:
            result.problem = f"the real asgiref was imported: {strays}"
    if report.exists():
        _read_junit(report, result)
    elif not result.problem:
        result.problem = "no JUnit report"
    return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _read_junit(report: Path, result: ModuleResult) -> None:
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        classname = case.get("classname", "")
        # "tests.test_sync.ClassName" or "tests.test_sync" -> tests/test_sync.py[::ClassName]::name
        parts = classname.split(".")
        node = "/".join(parts[:2]) + ".py"
        node += "".join(f"::{part}" for part in parts[2:]) + f"::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = ("failed" if child.tag == "failure" else "error"), child.get("message", "")
            elif child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome, message = ("xfailed" if xfail else "skipped"), child.get("message", "")
        if outcome == "xfailed" and float(case.get("time") or 0) >= TEST_TIMEOUT * 0.9:
            # An xfail mark also swallows pytest-timeout's failure: a hang is not asgiref's expected failure.
            outcome, message = "failed", f"hung until the {TEST_TIMEOUT} s test timeout (inside an xfail)"
        if node in result.outcomes and outcome == "passed":
            continue  # a teardown error is a second testcase entry: keep the worse outcome
        result.outcomes[node] = outcome
        result.messages[node] = message.splitlines()[0][:300] if message else ""


def main(argv: list[str]) -> int:
    keep = None
    if argv[:1] == ["--keep"]:
        keep, argv = Path(argv[1]), argv[2:]
    with tempfile.TemporaryDirectory(prefix="corral-asgiref-") as tmp:
        root = keep or Path(tmp)
        modules = prepare(root)
        status = 0
        for module in argv or modules:
            result = run_module(root, module)
            print(result.summary())
            for node, why in sorted(result.failures().items()):
                print(f"    {node}: {why}")
            if result.problem or result.failures():
                status = 1
                if result.problem:
                    print("\n".join("    | " + line for line in result.output.splitlines()[-30:]))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
