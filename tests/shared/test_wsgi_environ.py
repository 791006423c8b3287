"""WsgiToAsgi: the hello-world round trip, the environ and scope checks."""

import asyncio

import pytest
import uvloop

from corral.shared.wsgi import WsgiToAsgi
from wsgi_helpers import Client, body_messages, call, hello, make_scope


@pytest.mark.parametrize("coalesce", [False, True], ids=["asgiref-shape", "coalesced"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_hello_world(loop, coalesce):
    client = Client()

    async def main():
        await WsgiToAsgi(hello, coalesce=coalesce)(make_scope(), client.receive, client.send)

    if loop == "uvloop":
        ev_loop = uvloop.new_event_loop()
        try:
            ev_loop.run_until_complete(main())
        finally:
            ev_loop.close()
    else:
        asyncio.run(main())
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    if coalesce:
        # corral's shape (the worker's): a single-chunk response is one final body message.
        assert client.sent == [start, {"type": "http.response.body", "body": b"Hello, world!", "more_body": False}]
    else:
        # asgiref's shape: the chunk with more_body, then a closing empty message.
        assert client.sent == [
            start,
            {"type": "http.response.body", "body": b"Hello, world!", "more_body": True},
            {"type": "http.response.body"},
        ]


def capture_environ(store):
    def app(environ, start_response):
        store.update(environ)
        store["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b""]

    return app


def test_environ_fields():
    environ = {}
    scope = make_scope(
        method="POST",
        scheme="https",
        http_version="2",
        root_path="/app",
        path="/app/caf\u00e9/\u00fc",
        query_string=b"a=1&b=%20",
        headers=[
            (b"host", b"example.com"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"5"),
            (b"x-multi", b"one"),
            (b"x-multi", b"two"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x-latin", b"caf\xe9"),
            (b"x_smuggled", b"dropped"),
        ],
        client=("10.1.2.3", 4321),
        server=("example.com", 8443),
    )
    client = call(WsgiToAsgi(capture_environ(environ)), scope, body_messages(b"hello"))
    assert client.start["status"] == 200
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == "/app"
    assert environ["PATH_INFO"] == "/caf\u00e9/\u00fc".encode("utf-8").decode("latin-1")
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["CONTENT_LENGTH"] == "5"
    assert environ["SERVER_NAME"] == "example.com"
    assert environ["SERVER_PORT"] == "8443"
    assert environ["REMOTE_ADDR"] == "10.1.2.3"
    assert environ["REMOTE_PORT"] == "4321"
    assert environ["SERVER_PROTOCOL"] == "HTTP/2"
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["HTTP_X_MULTI"] == "one,two"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_LATIN"] == "caf\u00e9"
    assert "HTTP_X_SMUGGLED" not in environ
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["body"] == b"hello"
    errors = environ["wsgi.errors"]
    assert errors is not None
    errors.write("a line for wsgi.errors\n")
    errors.flush()
    for key, value in environ.items():
        if key.isupper():
            assert type(value) is str, key  # PEP 3333: CGI variables are native strings


def test_environ_defaults_and_root_path_boundaries():
    environ = {}
    app = WsgiToAsgi(capture_environ(environ))
    call(app, {"type": "http", "method": "GET", "path": "/application", "root_path": "/app", "query_string": b"",
               "headers": [], "http_version": "1.0"})  # fmt: skip
    assert environ["SCRIPT_NAME"] == "/app"
    assert environ["PATH_INFO"] == "/application"  # "/app" is not a path segment of it
    assert environ["SERVER_NAME"] == "localhost" and environ["SERVER_PORT"] == "80"
    assert "REMOTE_ADDR" not in environ and "CONTENT_LENGTH" not in environ
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["body"] == b""

    environ.clear()
    call(app, make_scope(root_path="/app", path="/app"))
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "")
    environ.clear()
    call(app, make_scope(root_path="", path="/x/y"))
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/x/y")


def test_too_many_duplicate_headers_is_a_400():
    client = call(WsgiToAsgi(hello, duplicate_header_limit=2), make_scope(headers=[(b"x-a", b"1")] * 3))
    assert client.start["status"] == 400


def test_non_http_scope_is_rejected():
    with pytest.raises(ValueError):
        call(WsgiToAsgi(hello), {"type": "lifespan"})
