import logging
import os
import re

import pytest

from corral.shared.settings import Settings
from corral.worker.accesslog import ACCESS_LOGGER_NAME, AccessLog, make_access_log


def make_scope(**extra):
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/a b/c",
        "raw_path": b"/a%20b/c",
        "query_string": b"x=1&y=2",
        "client": ("203.0.113.9", 5555),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"example.com"),
            (b"user-agent", b"curl/8.0"),
            (b"referer", b"http://ref.example/"),
            (b"x-request-id", b"abc"),
        ],
    }
    scope.update(extra)
    return scope


RESPONSE_HEADERS = [(b"Content-Type", b"text/plain"), (b"content-length", b"5")]


def render(fmt, scope=None, status=200, sent=5, duration=1.234567, headers=RESPONSE_HEADERS):
    log = AccessLog(fmt, logging.getLogger("test.access"))
    return log.render(scope or make_scope(), status, sent, duration, headers)


@pytest.mark.parametrize("atom,expected", [
    ("h", "203.0.113.9"),
    ("l", "-"),
    ("u", "-"),
    ("r", "POST /a%20b/c?x=1&y=2 HTTP/1.1"),
    ("m", "POST"),
    ("U", "/a b/c"),
    ("q", "x=1&y=2"),
    ("H", "HTTP/1.1"),
    ("s", "200"),
    ("B", "5"),
    ("b", "5"),
    ("f", "http://ref.example/"),
    ("a", "curl/8.0"),
    ("T", "1"),
    ("M", "1234"),
    ("D", "1234567"),
    ("L", "1.234567"),
    ("p", f"<{os.getpid()}>"),
    ("{x-request-id}i", "abc"),
    ("{X-Request-ID}i", "abc"),
    ("{content-type}o", "text/plain"),
    ("{CONTENT-LENGTH}o", "5"),
    ("{missing}i", "-"),
    ("{missing}o", "-"),
    ("nonsense", "-"),
])
def test_each_atom(atom, expected):
    assert render(f"%({atom})s") == expected


def test_time_atom_format():
    assert re.fullmatch(r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]", render("%(t)s"))


def test_environment_atom(monkeypatch):
    monkeypatch.setenv("CORRAL_TEST_ACCESS_VAR", "hello")
    assert render("%({CORRAL_TEST_ACCESS_VAR}e)s") == "hello"
    assert render("%({corral_test_access_var}e)s") == "hello"
    monkeypatch.delenv("CORRAL_TEST_ACCESS_VAR")
    assert render("%({CORRAL_TEST_ACCESS_VAR}e)s") == "-"


def test_missing_values():
    scope = {"type": "http", "path": "/", "headers": [], "client": None, "query_string": b""}
    line = render('%(h)s "%(r)s" %(f)s %(a)s %(b)s %(B)s %(q)s|', scope=scope, sent=0)
    assert line == '- "GET / HTTP/1.1" - - - 0 |'


def test_request_line_without_raw_path_or_query():
    scope = make_scope(query_string=b"")
    del scope["raw_path"]
    assert render("%(r)s", scope=scope) == "POST /a b/c HTTP/1.1"


def test_websocket_scope_has_get():
    scope = make_scope(type="websocket", query_string=b"")
    del scope["method"]
    assert render("%(m)s %(r)s", scope=scope) == "GET GET /a%20b/c HTTP/1.1"


def test_default_gunicorn_format():
    line = render(Settings().access_log_format, status=404, sent=0)
    assert re.fullmatch(
        r'203\.0\.113\.9 - - \[[^\]]+\] "POST /a%20b/c\?x=1&y=2 HTTP/1\.1" 404 - "http://ref\.example/" "curl/8\.0" '
        r'\d+ms', line
    )


def test_percent_escape_and_other_specs():
    assert render("100%% %(s)s %(D)d") == "100% 200 1234567"


def test_only_used_atoms_computed():
    log = AccessLog("%(s)s %(s)s %({a}i)s", logging.getLogger("test.access"))
    assert [atom for atom, _ in log._extractors] == ["s", "{a}i"]


def test_duplicate_headers_joined():
    scope = make_scope(headers=[(b"x-a", b"1"), (b"x-a", b"2")])
    assert render("%({x-a}i)s", scope=scope) == "1, 2"


def test_broken_format_fails_at_construction():
    with pytest.raises((ValueError, TypeError)):
        AccessLog("%(s", logging.getLogger("test.access"))


def test_call_emits_to_logger(caplog):
    logger = logging.getLogger("test.access.emit")
    log = AccessLog("%(m)s %(s)s", logger)
    with caplog.at_level(logging.INFO, logger="test.access.emit"):
        log(make_scope(), 201, 0, 0.0, [])
    assert [r.getMessage() for r in caplog.records] == ["POST 201"]


def test_call_skipped_when_logger_disabled(caplog):
    logger = logging.getLogger("test.access.off")
    logger.setLevel(logging.WARNING)
    with caplog.at_level(logging.WARNING, logger="test.access.off"):
        AccessLog("%(s)s", logger)(make_scope(), 200, 0, 0.0, [])
    assert caplog.records == []


def test_make_access_log_off():
    assert make_access_log(Settings()) is None


def _cleanup_access_logger():
    logger = logging.getLogger(ACCESS_LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def test_make_access_log_file_and_reopen(tmp_path):
    path = tmp_path / "access.log"
    try:
        log = make_access_log(Settings(accesslog=str(path), access_log_format="%(m)s %(U)s %(s)s"))
        assert log is not None
        log(make_scope(), 200, 5, 0.1, [])
        rotated = tmp_path / "access.log.1"
        path.rename(rotated)
        log.reopen()
        log(make_scope(method="GET"), 204, 0, 0.1, [])
        for handler in log.logger.handlers:
            handler.flush()
        assert rotated.read_text() == "POST /a b/c 200\n"
        assert path.read_text() == "GET /a b/c 204\n"
        # building it again (a reload) replaces, not duplicates, the handler
        log = make_access_log(Settings(accesslog=str(path), access_log_format="%(s)s"))
        assert len(log.logger.handlers) == 1
    finally:
        _cleanup_access_logger()


def test_make_access_log_dash_is_stdout_as_in_gunicorn(capsys):
    try:
        log = make_access_log(Settings(accesslog="-", access_log_format="%(s)s %(h)s"))
        log(make_scope(), 500, 0, 0.0, [])
        captured = capsys.readouterr()
        assert captured.out == "500 203.0.113.9\n" and captured.err == ""
    finally:
        _cleanup_access_logger()


def test_default_format_shows_the_duration(capsys):
    try:
        log = make_access_log(Settings(accesslog="-"))
        log(make_scope(), 200, 13, 0.0421, [])
        line = capsys.readouterr().out.rstrip("\n")
        assert line.endswith('" 42ms'), line
        assert ' 200 13 "' in line
    finally:
        _cleanup_access_logger()
