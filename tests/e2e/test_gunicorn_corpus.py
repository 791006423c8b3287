"""gunicorn's own HTTP/1.1 request corpus, sent over real sockets to a real `serve` (see gunicorn_corpus.py).

Every valid case must reach the application as gunicorn's parser reads it (method, target split into path
and query with no fragment, version, header fields in order, body), on the ASGI path and on the native WSGI
path; every invalid case must be refused (a 4xx/5xx answer, or the connection closed with no answer) while
the worker goes on serving. The few deliberate differences are listed, with their reasons, in
gunicorn_corpus.py (REFUSED_VALID, SERVED_INVALID, DETAIL_DIFFERENCES, MISSING_HOST_REASON), and each is
checked to still be one.

One `serve -w 1` master per interface and per distinct set of limits the cases ask for (most share the
default one); the sdist is downloaded from PyPI once per session.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gunicorn_corpus as corpus
from serve_harness import Master, start_master, wait_until


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.Case]:
    sdist = corpus.download_sdist(tmp_path_factory.mktemp("gunicorn-sdist"))
    return corpus.load_cases(sdist)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, tuple[str, ...]], Master]]:
    """server(interface, args): a running `serve -w 1` of the echo app, one per (interface, args)."""
    folder = tmp_path_factory.mktemp("corpus-apps")
    (folder / "echo_asgi.py").write_text(textwrap.dedent(corpus.ASGI_APP))
    (folder / "echo_wsgi.py").write_text(textwrap.dedent(corpus.WSGI_APP))
    started: dict[tuple[str, tuple[str, ...]], Master] = {}

    def server(interface: str, args: tuple[str, ...]) -> Master:
        key = (interface, args)
        if key not in started:
            master = start_master(
                folder,
                "-w",
                "1",
                "--interface",
                "asgi3" if interface == "asgi" else interface,
                *args,
                f"echo_{interface}:app",
            )
            started[key] = master
            probe = corpus.probe_for(args)

            def answers() -> bool:
                if master.proc.poll() is not None:
                    raise AssertionError(f"serve {' '.join(args)} exited:\n{master.output}")
                try:
                    outcome = corpus.exchange(master.port, probe, 1, half_close=False)
                except OSError:
                    return False
                return bool(outcome.responses) and outcome.responses[0][0] == 200

            wait_until(answers, f"serve {' '.join(args)} to answer")
        return started[key]

    yield server
    for master in started.values():
        master.stop()


def test_corpus_is_complete(cases: list[corpus.Case]) -> None:
    valid = [c for c in cases if c.kind == "valid"]
    invalid = [c for c in cases if c.kind == "invalid"]
    assert (len(valid), len(invalid)) == (corpus.VALID_COUNT, corpus.INVALID_COUNT)
    names = {c.name for c in valid}
    for listed in (*corpus.REFUSED_VALID, *corpus.DETAIL_DIFFERENCES):
        assert listed in names, f"{listed} is listed as a difference but is no valid case"
    for listed in corpus.SERVED_INVALID:
        assert listed in {c.name for c in invalid}, f"{listed} is listed as a difference but is no invalid case"


def _check_valid(case: corpus.Case, server: Master, interface: str) -> None:
    compare = corpus.compare_asgi if interface == "asgi" else corpus.compare_wsgi
    refused = case.name in corpus.REFUSED_VALID
    host_added = corpus.lacks_host(case)
    if host_added:
        # As it is: the requests before the first HTTP/1.1 one without Host are served, that one gets 400.
        first = next(i for i, request in enumerate(case.requests) if corpus.request_lacks_host(request))
        bare = corpus.exchange(server.port, case.data, first + 1, half_close=False)
        statuses = [status for status, _ in bare.responses]
        assert statuses == [200] * first + [400], f"{case.id} without Host: {bare} ({corpus.MISSING_HOST_REASON})"
    data = corpus.add_host(case) if host_added else case.data
    expected = case.requests
    truncated = case.name in corpus.TRUNCATED_VALID
    outcome = corpus.exchange(server.port, data, len(expected), half_close=truncated)
    if refused:
        statuses = [status for status, _ in outcome.responses]
        assert (statuses and 400 <= statuses[0] < 600) or (not statuses and outcome.closed), (
            f"{case.id} is listed as refused ({corpus.REFUSED_VALID[case.name]}) but got {outcome}"
        )
        return
    assert len(outcome.responses) == len(expected), f"{case.id}: {outcome}"
    for number, ((status, body), request) in enumerate(zip(outcome.responses, expected)):
        got = corpus.answer(status, body)
        assert got is not None, f"{case.id} request {number}: {status} {body[:300]!r}"
        problems = compare(case, request, got, host_added and corpus.request_lacks_host(request))
        assert not problems, f"{case.id} request {number}: " + "; ".join(problems)


def _check_invalid(case: corpus.Case, server: Master) -> None:
    outcome = corpus.exchange(server.port, corpus.with_host(case.data), 2, half_close=True)
    served = [corpus.answer(status, body) for status, body in outcome.responses]
    if case.name in corpus.SERVED_INVALID:
        assert served and served[0] is not None, (
            f"{case.id} is listed as served ({corpus.SERVED_INVALID[case.name]}) but got {outcome}"
        )
        return
    statuses = [status for status, _ in outcome.responses]
    assert not any(s < 400 for s in statuses[:1]), f"{case.id} ({case.error}) was served: {outcome}"
    assert outcome.closed, f"{case.id}: the connection stayed open after {statuses}"


def _run(cases: list[corpus.Case], check: Callable[[corpus.Case], None]) -> tuple[int, list[str]]:
    """Run `check` on every case; returns how many passed and what failed (all of it, not the first)."""
    failures = []
    for case in cases:
        try:
            check(case)
        except (AssertionError, OSError) as exc:  # OSError: a timeout or a reset, reported with the rest
            failures.append(f"{case.id}: {exc!r}")
    return len(cases) - len(failures), failures


@pytest.mark.timeout(600)
@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_valid_corpus_is_served(cases, servers, interface: str) -> None:
    valid = [c for c in cases if c.kind == "valid"]
    pid = corpus.answer(
        *corpus.exchange(
            servers(interface, corpus.serve_args(corpus.Case("valid", "probe", b""))).port, corpus.PROBE, 1, False
        ).responses[0]
    )["pid"]
    passed, failures = _run(
        valid, lambda case: _check_valid(case, servers(interface, corpus.serve_args(case)), interface)
    )
    print(f"gunicorn {corpus.GUNICORN_VERSION} valid corpus, {interface}: {passed}/{len(valid)} as expected")
    print("\n".join(failures))
    assert not failures, f"{len(failures)} of {len(valid)} valid cases:\n" + "\n".join(failures)
    after = corpus.answer(
        *corpus.exchange(
            servers(interface, corpus.serve_args(corpus.Case("valid", "probe", b""))).port, corpus.PROBE, 1, False
        ).responses[0]
    )
    assert after["pid"] == pid, "the default server's worker changed during the corpus"


@pytest.mark.timeout(600)
def test_invalid_corpus_is_refused(cases, servers) -> None:
    invalid = [c for c in cases if c.kind == "invalid"]
    pid = corpus.answer(
        *corpus.exchange(
            servers("asgi", corpus.serve_args(corpus.Case("valid", "probe", b""))).port, corpus.PROBE, 1, False
        ).responses[0]
    )["pid"]
    passed, failures = _run(invalid, lambda case: _check_invalid(case, servers("asgi", corpus.serve_args(case))))
    print(f"gunicorn {corpus.GUNICORN_VERSION} invalid corpus: {passed}/{len(invalid)} as expected")
    print("\n".join(failures))
    assert not failures, f"{len(failures)} of {len(invalid)} invalid cases:\n" + "\n".join(failures)
    # Refusing 81 malformed requests cost the worker nothing: the same process answers.
    after = corpus.answer(
        *corpus.exchange(
            servers("asgi", corpus.serve_args(corpus.Case("valid", "probe", b""))).port, corpus.PROBE, 1, False
        ).responses[0]
    )
    assert after["pid"] == pid, "the default server's worker changed while refusing the invalid corpus"
