"""What RFC 9112 allows that llhttp refuses, on its own (HTTP11Connection, no I/O) and on a real server:
methods llhttp does not know, whitespace around a chunk extension's `;` and `=`, trailer fields that must not
be trailers; and the `#fragment` of a target, which reaches neither path nor query string (ASGI and WSGI).

Every case is fed whole, one byte at a time, cut at every position, and behind other requests in one read:
the connection must find the same requests with the same bodies whatever the reads were.
"""

from __future__ import annotations

import json

import pytest

from corral.shared.settings import Settings
from corral.worker.http1.connection import HTTP11Connection, ProtocolError
from corral.worker.http1.limits import Limits
from worker_http_helpers import Client, run_server, settings


class Request:
    def __init__(self, method: bytes, target: bytes) -> None:
        self.method = method
        self.target = target
        self.body = b""
        self.complete = False

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk

    def on_body_complete(self) -> None:
        self.complete = True


class Handler:
    def __init__(self) -> None:
        self.made: list[Request] = []

    def on_request(self, method, http_version, target, headers, keep_alive, expect_continue, has_body, forwarded):
        request = Request(method, target)
        self.made.append(request)
        return request

    def start_request(self, request):
        pass


def parse(reads: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
    """(method, target, body) of every complete request in `reads`, fed in turn."""
    handler = Handler()
    state = HTTP11Connection(handler, Limits.from_settings(Settings()))
    for data in reads:
        state.feed(data)
        while state.active is not None:
            state.response_done()  # answered at once: the next one starts
    return [(r.method, r.target, r.body) for r in handler.made if r.complete]


def splits(data: bytes) -> list[list[bytes]]:
    """The ways a client's bytes may arrive: whole, a byte at a time, cut once at every position."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def parsed_every_way(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    results = [parse(reads) for reads in splits(data)]
    for reads, result in zip(splits(data), results):
        assert result == results[0], f"cut as {[len(r) for r in reads]}: {result} != {results[0]}"
    return results[0]


def refused_every_way(data: bytes) -> None:
    for reads in splits(data):
        with pytest.raises(ProtocolError) as info:
            parse(reads)
        assert 400 <= info.value.status < 500


GET = b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /before HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\nFOO /smuggled HTTP/1.1\r\n\r\nxx\r\n"
AFTER = b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"


# ---------------------------------------------------------------------------- methods


@pytest.mark.parametrize(
    "method", [b"LINK", b"PURGE", b"-BLARGH", b"FOO_BAR", b"M-SEARCH", b"DESCRIBE", b"BREW", b"X1!", b"A" * 20]
)
def test_a_token_method_reaches_the_application(method):
    request = method + b" /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    assert parsed_every_way(request) == [(method, b"/x?y=1", b"hello")]
    # Behind other requests in the same read, and followed by one: framing is Content-Length's alone (the
    # POST's body holds a request line that must stay body).
    assert parsed_every_way(GET + POST + request + AFTER) == [
        (b"GET", b"/before", b""),
        (b"POST", b"/before", POST[-30:]),
        (method, b"/x?y=1", b"hello"),
        (b"GET", b"/after", b""),
    ]


def test_a_token_method_with_a_chunked_body():
    request = b"PROPPATCHX /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 ; a=b\r\nabc\r\n0\r\n\r\n"
    assert parsed_every_way(request + AFTER) == [(b"PROPPATCHX", b"/p", b"abc"), (b"GET", b"/after", b"")]


@pytest.mark.parametrize(
    "method",
    [
        b"get",  # gunicorn's rule: no lowercase letter (methods are case-sensitive: this is no GET)
        b"-bl",
        b"AB",  # 3 to 20 characters
        b"A" * 21,
        b"GET:",  # not a token
        b"bla:rgh",
        b"GET\x00",
        b"GET\xc3\x9f",
        b"G#T",
    ],
)
def test_a_method_that_is_no_method_is_400(method):
    refused_every_way(method + b" /x HTTP/1.1\r\nHost: a\r\n\r\n")
    refused_every_way(GET + method + b" /x HTTP/1.1\r\nHost: a\r\n\r\n")


def test_an_unknown_method_keeps_the_asterisk_rule():
    refused_every_way(b"BREW * HTTP/1.1\r\nHost: a\r\n\r\n")  # RFC 9112 section 3.2.4: OPTIONS only


# ---------------------------------------------------------------------------- chunk extensions


@pytest.mark.parametrize(
    "line",
    [
        b"5 ; ext=1",
        b"5; some; parameters=stuff",
        b"5 ;a = b",
        b"5\t;x",
        b'5;x="a b"',
        b'5 ; x = "q\\"z"',
        b"5;k",
        b"0005",
        b"5;a=b;c=d",
        b"5;a=",
        b"5;=b",  # outside the grammar, but llhttp takes them: so must the rest (see chunked.py)
    ],
)
def test_chunk_extensions_take_bad_whitespace(line):
    request = (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\nhello\r\n0 ; end\r\n\r\n"
    )
    assert parsed_every_way(request + AFTER) == [(b"POST", b"/c", b"hello"), (b"GET", b"/after", b"")]
    assert parsed_every_way(GET + request) == [(b"GET", b"/before", b""), (b"POST", b"/c", b"hello")]


def test_a_long_chunked_body_with_bad_whitespace_late():
    chunks = b"".join(b"%x\r\n%s\r\n" % (n, b"x" * n) for n in range(1, 40))  # llhttp decodes these
    request = (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"3 ; late\r\nend\r\n0\r\nX-Checksum: 1\r\n\r\n"
    )
    body = b"".join(b"x" * n for n in range(1, 40)) + b"end"
    for reads in ([request + AFTER], [request[:300], request[300:] + AFTER], [request[:-20], request[-20:], AFTER]):
        assert parse(reads) == [(b"POST", b"/c", body), (b"GET", b"/after", b"")]


@pytest.mark.parametrize(
    "line",
    [
        b"5 ",  # whitespace without an extension (RFC 9112: BWS only before ';')
        b" 5",
        b"+5",
        b"-5",
        b"0x5",
        b"5_0",
        b"5;",
        b"5; ",
        b"5;a b",
        b"5;ext=val\rue",
        b"5\n;",
        b";a=b",
        b"",
        b"5;a=b ",
    ],
)
def test_a_chunk_size_line_outside_the_grammar_is_400(line):
    refused_every_way(
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\nhello\r\n0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "field",
    [
        b"Host: evil",
        b"Content-Length: 9",
        b"Transfer-Encoding: chunked",
        b"Trailer: X",
        b"Authorization: Basic eDp5",
        b"TE: trailers",
    ],
)
def test_a_trailer_field_that_must_not_be_one_is_400(field):
    refused_every_way(
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + field + b"\r\n\r\n"
    )
    refused_every_way(
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ; x\r\nhello\r\n0\r\n"
        + field
        + b"\r\n\r\n"
    )


def test_other_trailer_fields_are_dropped():
    request = (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ; x\r\nhello\r\n0\r\n"
        b"X-Checksum: abc\r\nExpires: never\r\n\r\n"
    )
    assert parsed_every_way(request + AFTER) == [(b"POST", b"/c", b"hello"), (b"GET", b"/after", b"")]


# ---------------------------------------------------------------------------- on a real server


async def echo_app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "body": body.decode(),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": payload})


def wsgi_echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [])
    return [
        json.dumps(
            {
                "method": environ["REQUEST_METHOD"],
                "path": environ["PATH_INFO"],
                "query": environ["QUERY_STRING"],
                "body": body.decode(),
            }
        ).encode()
    ]


@pytest.mark.parametrize("wsgi", [False, True], ids=["asgi", "wsgi"])
def test_the_fragment_reaches_neither_path_nor_query(wsgi):
    with (
        run_server(wsgi_echo if wsgi else echo_app, settings(), wsgi=wsgi) as (host, port, _),
        Client(host, port) as client,
    ):
        for target, path, query in [
            ("/forums/1?page=1#posts-17408", "/forums/1", "page=1"),
            ("/a#frag?not=query", "/a", ""),
            ("/b%20c#x", "/b c", ""),
            ("http://example.com/d?e=1#f", "/d", "e=1"),
        ]:
            answer = json.loads(client.get(target).body)
            assert (answer["path"], answer["query"]) == (path, query), target
            if not wsgi:
                assert "#" not in answer["raw_path"], target


@pytest.mark.parametrize("wsgi", [False, True], ids=["asgi", "wsgi"])
def test_methods_and_chunk_extensions_on_a_real_server(wsgi):
    with (
        run_server(wsgi_echo if wsgi else echo_app, settings(), wsgi=wsgi) as (host, port, _),
        Client(host, port) as client,
    ):
        client.send(
            b"PURGE /cache HTTP/1.1\r\nHost: a\r\n\r\n"
            b"-BLARGH /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ; ext=1\r\nhello\r\n0\r\n\r\n"
            b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        answers = [json.loads(client.response().body) for _ in range(3)]
        assert [(a["method"], a["path"], a["body"]) for a in answers] == [
            ("PURGE", "/cache", ""),
            ("-BLARGH", "/x", "hello"),
            ("GET", "/last", ""),
        ]
        client.send(b"get /lower HTTP/1.1\r\nHost: a\r\n\r\n")
        response = client.response()
        assert response.status == 400 and response.header("connection") == "close"
