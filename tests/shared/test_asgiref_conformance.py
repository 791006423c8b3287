"""asgiref 3.13.0's own test suite against corral's bridging layer (see asgiref_conformance.py).

The sdist is downloaded from PyPI at test time: without network access these tests fail (they are part of
the contract, not optional). Each asgiref test module runs in its own process; every test must pass (or be
one of asgiref's own xfails) except the few listed in `EXCLUDED`, which test asgiref's private internals (and,
on Python 3.10, those in `NEEDS_PYTHON_311`, whose own code needs 3.11).
"""

import pytest

import asgiref_conformance as conformance


@pytest.fixture(scope="module")
def asgiref_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("asgiref-conformance")
    modules = conformance.prepare(root)
    assert sorted(modules) == sorted(conformance.ASGIREF_MODULES), "the sdist's test modules changed"
    return root


@pytest.mark.timeout(conformance.MODULE_TIMEOUT + 60)
@pytest.mark.parametrize("module", conformance.ASGIREF_MODULES)
def test_asgiref_module_passes(asgiref_tree, module):
    result = conformance.run_module(asgiref_tree, module)
    print(result.summary())
    assert not result.problem, f"{result.summary()}\n{result.output[-4000:]}"
    assert result.outcomes, f"no test ran in {module}\n{result.output[-4000:]}"
    failures = result.failures()
    assert not failures, "\n".join([result.summary()] + [f"  {node}: {why}" for node, why in sorted(failures.items())])
    # An exclusion that names no test of this module is stale: it would hide nothing and mislead.
    prefix = f"tests/{module}::"
    stale = [node for node in conformance.EXCLUDED if node.startswith(prefix) and node not in result.outcomes]
    assert not stale, f"excluded tests not found in {module}: {stale}"


def test_exclusions_name_known_modules():
    for node, reason in conformance.EXCLUDED.items():
        assert node.split("::")[0].removeprefix("tests/") in conformance.ASGIREF_MODULES, node
        assert reason.strip(), node


def test_guard_refuses_to_run_against_the_real_asgiref(asgiref_tree):
    """Without the generated package on the path, the installed asgiref (Django's dependency) would answer:
    the guard conftest stops the session instead of letting asgiref test itself."""
    pytest.importorskip("asgiref", reason="the real asgiref is not installed: nothing to refuse")
    result = conformance.run_module(asgiref_tree, "test_compatibility.py", shim=False)
    assert result.problem, result.summary()
    assert "not by the generated package" in result.output, result.output[-2000:]
    assert not any(outcome == "passed" for outcome in result.outcomes.values())
