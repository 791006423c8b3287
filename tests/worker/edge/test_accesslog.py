import logging
import os
import re

import pytest

from corral.shared.settings import Settings
from corral.worker.edge.accesslog import ACCESS_LOGGER_NAME, GUNICORN_ACCESS_FORMAT, AccessLog, make_access_log
from corral.worker.edge.sessionlog import SessionLog, WebSocketSession


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


@pytest.mark.parametrize(
    "atom,expected",
    [
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
    ],
)
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
    assert line == '- "GET / HTTP/1.1" - - 0 0 |'  # gunicorn's %(b)s is "0" for no body (CLF's would be "-")


def test_request_line_without_raw_path_or_query():
    scope = make_scope(query_string=b"")
    del scope["raw_path"]
    assert render("%(r)s", scope=scope) == "POST /a b/c HTTP/1.1"


def test_websocket_scope_has_get():
    scope = make_scope(type="websocket", query_string=b"")
    del scope["method"]
    assert render("%(m)s %(r)s", scope=scope) == "GET GET /a%20b/c HTTP/1.1"


def test_default_format_is_gunicorns():
    assert Settings().access_log_format == GUNICORN_ACCESS_FORMAT
    gunicorn_config = pytest.importorskip("gunicorn.config")
    assert gunicorn_config.AccessLogFormat.default == GUNICORN_ACCESS_FORMAT


TIME = re.compile(r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]")


def gunicorn_line(fmt, scope, status, sent, duration, response_headers):
    """The line gunicorn's own Logger writes for the same request (its atoms and its SafeAtoms)."""
    import datetime
    from types import SimpleNamespace

    glogging = pytest.importorskip("gunicorn.glogging")
    environ = {
        "REQUEST_METHOD": scope["method"],
        "PATH_INFO": scope["path"],
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "RAW_URI": scope["raw_path"].decode("latin-1")
        + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""),
        "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
        "REMOTE_ADDR": scope["client"][0],
    }
    for key, value in scope["headers"]:
        environ["HTTP_" + key.decode().upper().replace("-", "_")] = value.decode("latin-1")
    request = SimpleNamespace(headers=[(k.decode().upper(), v.decode("latin-1")) for k, v in scope["headers"]])
    response = SimpleNamespace(
        status=f"{status} Whatever", sent=sent, headers=[(k.decode(), v.decode("latin-1")) for k, v in response_headers]
    )
    logger = glogging.Logger.__new__(glogging.Logger)  # its atoms() only; no handlers set up
    atoms = logger.atoms(response, request, environ, datetime.timedelta(seconds=duration))
    return fmt % glogging.SafeAtoms(atoms)


@pytest.mark.parametrize("case", ["plain", "no body", "quotes", "basic auth", "other atoms"])
def test_lines_are_gunicorns_byte_for_byte(case):
    import base64

    fmt, scope, status, sent = GUNICORN_ACCESS_FORMAT, make_scope(), 200, 5
    if case == "no body":
        status, sent = 204, 0
    elif case == "quotes":
        scope["headers"] = [(b"user-agent", b'evil "agent" 1.0'), (b"referer", b'http://x/"q"')]
    elif case == "basic auth":
        scope["headers"].append((b"authorization", b"Basic " + base64.b64encode(b"alice:secret")))
    elif case == "other atoms":
        fmt = "%(m)s %(U)s ?%(q)s %(H)s %(B)s %(T)s %(M)s %(D)s %(L)s %(p)s %({x-request-id}i)s %({content-type}o)s"
    ours = render(fmt, scope=scope, status=status, sent=sent, duration=1.234567)
    theirs = gunicorn_line(fmt, scope, status, sent, 1.234567, RESPONSE_HEADERS)
    assert TIME.sub("[T]", ours) == TIME.sub("[T]", theirs)
    if case == "basic auth":
        assert " - alice [" in ours
    if case == "quotes":
        assert '"evil \\"agent\\" 1.0"' in ours


def test_time_atom_is_gunicorns_format():
    assert TIME.fullmatch(render("%(t)s"))
    time_format = pytest.importorskip("gunicorn.glogging").Logger.now(None)
    assert TIME.fullmatch(time_format)


def test_a_bad_authorization_header_is_no_user():
    for value in (b"Basic !!!notbase64", b"Bearer abc", b"Basic"):
        assert render("%(u)s", scope=make_scope(headers=[(b"authorization", value)])) == "-"


def test_percent_escape_and_other_specs():
    assert render("100%% %(s)s %(D)d") == "100% 200 1234567"


def test_only_used_atoms_computed():
    log = AccessLog("%(s)s %(s)s %({a}i)s", logging.getLogger("test.access"))
    assert [atom for atom, _, _ in log._extractors] == ["s", "{a}i"]


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


def test_the_record_carries_the_atoms_as_gunicorns_does(caplog):
    """gunicorn logs `access_log.info(format, atoms)`: formatters that read record.args keep working, for atoms
    the format does not name too."""
    logger = logging.getLogger("test.access.args")
    log = AccessLog(GUNICORN_ACCESS_FORMAT, logger)
    with caplog.at_level(logging.INFO, logger="test.access.args"):
        log(make_scope(), 200, 5, 0.25, RESPONSE_HEADERS)
    (record,) = caplog.records
    assert record.msg == GUNICORN_ACCESS_FORMAT
    assert record.args["h"] == "203.0.113.9" and record.args["s"] == 200
    assert (record.args["M"], record.args["L"], record.args["U"]) == (250, "0.250000", "/a b/c")
    assert record.args["{x-request-id}i"] == "abc" and record.args["{X-Request-Id}i"] == "abc"
    assert record.args["nonsense"] == "-"


def test_a_format_without_atoms(caplog):
    logger = logging.getLogger("test.access.noatoms")
    with caplog.at_level(logging.INFO, logger="test.access.noatoms"):
        AccessLog("100%% served", logger)(make_scope(), 200, 0, 0.0, [])
    assert [r.getMessage() for r in caplog.records] == ["100% served"]


def test_websocket_close_line_is_the_format_with_corrals_atoms(caplog):
    logger = logging.getLogger("test.access.ws")
    session = WebSocketSession(4001, 23, 15, 3, 2)
    scope = make_scope(type="websocket", query_string=b"")
    del scope["method"]
    with caplog.at_level(logging.INFO, logger="test.access.ws"):
        SessionLog(AccessLog(GUNICORN_ACCESS_FORMAT, logger)).websocket_closed(scope, 2.5, session)
        SessionLog(AccessLog("%(s)s %(ws_close)s %(ws_in)s %(ws_out)s", logger)).websocket_closed(scope, 2.5, session)
        AccessLog("%(s)s %(ws_close)s", logger)(make_scope(), 200, 0, 0.0, [])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith('"GET /a%20b/c HTTP/1.1" 101 15 "http://ref.example/" "curl/8.0"'), lines[0]
    assert lines[1:] == ["101 4001 23 15", "200 -"]


def test_call_skipped_when_logger_disabled(caplog):
    logger = logging.getLogger("test.access.off")
    logger.setLevel(logging.WARNING)
    with caplog.at_level(logging.WARNING, logger="test.access.off"):
        AccessLog("%(s)s", logger)(make_scope(), 200, 0, 0.0, [])
    assert caplog.records == []


def test_make_access_log_off():
    assert make_access_log(Settings()) is None


def _cleanup_access_logger():
    for name in (ACCESS_LOGGER_NAME, "gunicorn.access"):
        logger = logging.getLogger(name)
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


def test_default_line_and_logger_are_gunicorns(capsys):
    try:
        log = make_access_log(Settings(accesslog="-"))
        assert log.logger.name == "gunicorn.access"
        log(make_scope(), 200, 13, 0.0421, [])
        line = capsys.readouterr().out.rstrip("\n")
        assert (
            TIME.sub("[T]", line) == '203.0.113.9 - - [T] "POST /a%20b/c?x=1&y=2 HTTP/1.1" 200 13 '
            '"http://ref.example/" "curl/8.0"'
        )
    finally:
        _cleanup_access_logger()


def test_naming_corral_keeps_corrals_logger(capsys):
    try:
        log = make_access_log(Settings(accesslog="-", naming="corral", access_log_format="%(s)s %(M)sms"))
        assert log.logger.name == "corral.access"
        log(make_scope(), 200, 13, 0.0421, [])
        assert capsys.readouterr().out == "200 42ms\n"
    finally:
        _cleanup_access_logger()


def _fresh_access_logger():
    """No handler left on the access loggers by an earlier test (caplog's among them)."""
    for name in (ACCESS_LOGGER_NAME, "gunicorn.access"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if getattr(handler, "_corral_access", False):
                handler.close()


def test_lines_of_a_loop_turn_are_written_together_at_its_end_as_logging_writes_them(tmp_path):
    """With corral's own handler, lines skip logging's records and go out at the end of the loop's turn: the
    file holds what logging would have written, line for line, in order."""
    import asyncio

    _fresh_access_logger()
    direct_path, logged_path = tmp_path / "direct.log", tmp_path / "logged.log"
    scopes = [make_scope(path=f"/p{i}", raw_path=f"/p{i}".encode()) for i in range(300)]
    try:
        log = make_access_log(Settings(accesslog=str(direct_path)))
        assert log is not None and log.direct is not None

        async def serve_a_turn():
            for scope in scopes:  # more than DirectLines.MAX_LINES: some written before the turn ends
                log(scope, 200, 5, 0.001, [])
            held = direct_path.read_text().count("\n")
            await asyncio.sleep(0)  # the turn ends: the rest is written
            return held

        held = asyncio.run(serve_a_turn())
        assert held == 256  # the first MAX_LINES, at the bound; the rest waited for the turn's end
        _cleanup_access_logger()
        logged = make_access_log(Settings(accesslog=str(logged_path)))
        logged.direct = None  # through logging, as before
        for scope in scopes:
            logged(scope, 200, 5, 0.001, [])
        for handler in logged.logger.handlers:
            handler.flush()
        assert TIME.sub("[T]", direct_path.read_text()) == TIME.sub("[T]", logged_path.read_text())
        assert len(direct_path.read_text().splitlines()) == 300
    finally:
        _cleanup_access_logger()


def test_a_handler_filter_or_formatter_added_later_sends_lines_through_logging(tmp_path, caplog):
    """A hook (post_fork, when_ready) may add a handler or a filter to the access logger: they then see every
    line, as under gunicorn, and corral's own file still gets it through its handler."""
    _fresh_access_logger()
    path = tmp_path / "access.log"
    try:
        log = make_access_log(Settings(accesslog=str(path), access_log_format="%(s)s %(U)s"))
        seen: list[logging.LogRecord] = []
        extra = logging.Handler()
        extra.emit = seen.append  # type: ignore[method-assign]  # a spy
        log.logger.addHandler(extra)
        log(make_scope(), 201, 0, 0.0, [])
        log.logger.removeHandler(extra)
        dropping = logging.Filter("nothing-by-this-name")  # a filter that drops every record
        log.logger.addFilter(dropping)
        log(make_scope(), 202, 0, 0.0, [])
        log.logger.removeFilter(dropping)
        ours = log.logger.handlers[0]
        ours.setFormatter(logging.Formatter("access: %(message)s"))
        log(make_scope(), 203, 0, 0.0, [])
        log.flush()
        ours.flush()
        assert [record.getMessage() for record in seen] == ["201 /a b/c"]
        assert seen[0].args["s"] == 201  # the atoms as the record's args, as gunicorn's
        assert path.read_text() == "201 /a b/c\naccess: 203 /a b/c\n"
    finally:
        _cleanup_access_logger()


def test_held_lines_are_written_at_a_reopen_and_when_flushed(tmp_path):
    import asyncio

    _fresh_access_logger()
    path = tmp_path / "access.log"
    try:
        log = make_access_log(Settings(accesslog=str(path), access_log_format="%(s)s"))

        async def turn():
            log(make_scope(), 200, 0, 0.0, [])
            assert path.read_text() == ""  # held for the turn's end
            rotated = tmp_path / "access.log.1"
            path.rename(rotated)
            log.reopen()  # logrotate's USR1: the old file gets what was held before it
            assert rotated.read_text() == "200\n"
            log(make_scope(), 204, 0, 0.0, [])
            log.flush()  # the worker stopping
            assert path.read_text() == "204\n"

        asyncio.run(turn())
    finally:
        _cleanup_access_logger()
