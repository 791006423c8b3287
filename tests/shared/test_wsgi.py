import asyncio
import contextvars
import hashlib
import io
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvloop

from corral.shared.wsgi import INPUT_BUFFER, ClientDisconnected, WsgiToAsgi

WAIT = 10  # bound on every wait between threads: a broken implementation fails instead of hanging

request_id = contextvars.ContextVar("request_id", default=None)


def make_scope(**overrides):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(overrides)
    return scope


def body_messages(*chunks):
    """http.request messages carrying `chunks`, the last one with more_body=False."""
    return [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]


class Client:
    """receive/send for one request: queued input messages, every sent message recorded."""

    def __init__(self, messages=None):
        self.inbox = asyncio.Queue()
        for message in messages if messages is not None else body_messages(b""):
            self.inbox.put_nowait(message)
        self.sent = []

    async def receive(self):
        return await self.inbox.get()

    async def send(self, message):
        self.sent.append(message)

    @property
    def start(self):
        assert self.sent[0]["type"] == "http.response.start"
        return self.sent[0]

    @property
    def bodies(self):
        return [m for m in self.sent if m["type"] == "http.response.body"]

    @property
    def body(self):
        return b"".join(m.get("body", b"") for m in self.bodies)

    @property
    def complete(self):
        return bool(self.bodies) and not self.bodies[-1].get("more_body", False)


def call(app, scope=None, messages=None, client=None):
    client = client or Client(messages)

    async def main():
        await app(scope or make_scope(), client.receive, client.send)

    asyncio.run(main())
    return client


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_hello_world(loop):
    client = Client()

    async def main():
        await WsgiToAsgi(hello)(make_scope(), client.receive, client.send)

    if loop == "uvloop":
        ev_loop = uvloop.new_event_loop()
        try:
            ev_loop.run_until_complete(main())
        finally:
            ev_loop.close()
    else:
        asyncio.run(main())
    # A single-chunk response: the start and one final body message.
    assert client.sent == [
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]},
        {"type": "http.response.body", "body": b"Hello, world!", "more_body": False},
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


def test_streamed_generator_response_arrives_chunk_by_chunk():
    """Each chunk is produced only after the previous one was sent: the response is not collected."""
    sent_events = {b"one": threading.Event(), b"two": threading.Event()}

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one"
        assert sent_events[b"one"].wait(WAIT)
        yield b"two"
        assert sent_events[b"two"].wait(WAIT)
        yield b"three"

    class Recording(Client):
        async def send(self, message):
            await super().send(message)
            if message.get("body") in sent_events:
                sent_events[message["body"]].set()

    client = call(WsgiToAsgi(app), client=Recording())
    assert client.start["status"] == 200
    assert [m["body"] for m in client.bodies if m["body"]] == [b"one", b"two", b"three"]
    assert all(m["more_body"] for m in client.bodies[:-1])
    assert client.complete


def test_headers_wait_for_the_first_chunk_of_a_lazy_generator():
    def app(environ, start_response):
        # start_response is called only when iteration begins, as generators do.
        start_response("201 Created", [("X-Lazy", "yes")])
        yield b""
        yield b"body"

    client = call(WsgiToAsgi(app))
    assert client.start["status"] == 201
    assert client.start["headers"] == [(b"x-lazy", b"yes")]
    assert client.body == b"body" and client.complete


def test_write_callable():
    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"a")
        write(b"b")
        return [b"c"]

    client = call(WsgiToAsgi(app))
    assert client.body == b"abc" and client.complete


def test_content_length_truncates_and_stops_iteration():
    produced = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "4")])
        for chunk in (b"ab", b"cdef", b"never"):
            produced.append(chunk)
            yield chunk

    client = call(WsgiToAsgi(app))
    assert client.body == b"abcd" and client.complete
    assert produced == [b"ab", b"cdef"]


class ClosingIterable:
    def __init__(self, chunks, fail_at=None):
        self.chunks = chunks
        self.fail_at = fail_at
        self.closed = threading.Event()

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("iteration failed")
            yield chunk

    def close(self):
        self.closed.set()


def test_close_called_on_success():
    result = ClosingIterable([b"a", b"b"])

    def app(environ, start_response):
        start_response("200 OK", [])
        return result

    client = call(WsgiToAsgi(app))
    assert client.body == b"ab"
    assert result.closed.is_set()


def test_close_called_when_iteration_fails_and_error_propagates():
    result = ClosingIterable([b"a", b"b"], fail_at=1)

    def app(environ, start_response):
        start_response("200 OK", [])
        return result

    client = Client()
    with pytest.raises(RuntimeError, match="iteration failed"):
        call(WsgiToAsgi(app), client=client)
    assert result.closed.is_set()
    assert not client.complete


def test_exception_before_response_propagates_without_sending():
    def app(environ, start_response):
        raise KeyError("broken")

    client = Client()
    with pytest.raises(KeyError):
        call(WsgiToAsgi(app), client=client)
    assert client.sent == []


def test_close_called_and_app_stopped_on_client_disconnect_mid_stream():
    state = {"finished": False, "closed": threading.Event()}

    def app(environ, start_response):
        start_response("200 OK", [])

        def stream():
            try:
                yield b"first"
                # Keep producing until the server stops us; the bound only keeps a broken test finite.
                for _ in range(10**7):
                    yield b"more"
                state["finished"] = True
            finally:
                state["closed"].set()

        return stream()

    class Leaving(Client):
        async def send(self, message):
            await super().send(message)
            if message["type"] == "http.response.body" and len(self.bodies) == 1:
                await self.inbox.put({"type": "http.disconnect"})

    client = call(WsgiToAsgi(app), client=Leaving())
    assert state["closed"].is_set()
    assert not state["finished"]
    assert not client.complete


def test_send_failure_closes_iterable_and_propagates():
    result = ClosingIterable([b"a"] * 1000)

    def app(environ, start_response):
        start_response("200 OK", [])
        return result

    class Broken(Client):
        async def send(self, message):
            if message["type"] == "http.response.body":
                raise OSError("connection lost")
            await super().send(message)

    with pytest.raises(OSError, match="connection lost"):
        call(WsgiToAsgi(app), client=Broken())
    assert result.closed.is_set()


def test_exc_info_replaces_headers_before_the_response_started():
    def app(environ, start_response):
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("handled")
        except ValueError:
            start_response("500 Internal Server Error", [("X-Error", "1")], sys.exc_info())
        return [b"error page"]

    client = call(WsgiToAsgi(app))
    assert client.start["status"] == 500
    assert client.start["headers"] == [(b"x-error", b"1")]
    assert client.body == b"error page"


def test_exc_info_reraised_after_the_response_started():
    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())  # re-raises
        return [b"unreachable"]

    client = Client()
    with pytest.raises(ValueError, match="late failure"):
        call(WsgiToAsgi(app), client=client)
    assert not client.complete


def test_second_start_response_without_exc_info_raises():
    errors = []

    def app(environ, start_response):
        start_response("200 OK", [])
        try:
            start_response("500 Internal Server Error", [])
        except Exception as exc:
            errors.append(exc)
        return [b"ok"]

    client = call(WsgiToAsgi(app))
    assert client.start["status"] == 200 and len(errors) == 1


def test_streamed_request_body_read_readline_and_iteration():
    seen = {}

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        seen["line1"] = stream.readline()
        seen["limited"] = stream.readline(3)
        seen["exact"] = stream.read(4)
        seen["lines"] = list(stream)
        seen["eof"] = stream.read()
        start_response("200 OK", [])
        return [b"ok"]

    messages = body_messages(b"first li", b"ne\nsecond\n", b"", b"abcd", b"x\ny\n", b"z")
    call(WsgiToAsgi(app), messages=messages)
    assert seen == {
        "line1": b"first line\n",
        "limited": b"sec",
        "exact": b"ond\n",
        "lines": [b"abcdx\n", b"y\n", b"z"],
        "eof": b"",
    }


def test_read_blocks_until_more_body_arrives():
    """The second part is only sent once the application asks for it, so read() must wait for it."""

    async def main():
        loop = asyncio.get_running_loop()
        wanted = asyncio.Event()
        parts = []

        def app(environ, start_response):
            stream = environ["wsgi.input"]
            parts.append(stream.read(5))
            loop.call_soon_threadsafe(wanted.set)
            parts.append(stream.read(5))
            parts.append(stream.readlines())
            start_response("200 OK", [])
            return [b"".join(parts[:2])]

        messages = iter(body_messages(b"hello", b"world"))

        async def receive():
            message = next(messages, None)
            if message is None:
                await asyncio.Event().wait()  # nothing more: the client only waits for the response
            if message["body"] == b"world":
                await asyncio.wait_for(wanted.wait(), WAIT)
            return message

        client = Client()
        await WsgiToAsgi(app)(make_scope(method="POST"), receive, client.send)
        return client, parts

    client, parts = asyncio.run(main())
    assert parts == [b"hello", b"world", []]
    assert client.body == b"helloworld"


def test_ten_megabyte_body_in_many_messages_with_bounded_buffering():
    payload = os.urandom(10 * 1024 * 1024)
    chunk = 64 * 1024
    consumed = [0]
    violations = []

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        digest = hashlib.sha256()
        while True:
            data = stream.read(chunk)
            if not data:
                break
            digest.update(data)
            consumed[0] += len(data)
        start_response("200 OK", [])
        return [digest.hexdigest().encode()]

    messages = iter(body_messages(*(payload[i : i + chunk] for i in range(0, len(payload), chunk))))
    received = [0]

    async def receive():
        message = next(messages, None)
        if message is None:
            await asyncio.Event().wait()
        received[0] += len(message["body"])
        # Backpressure: the body is never pulled much further ahead of what the application has read.
        if received[0] - consumed[0] > INPUT_BUFFER + 2 * chunk:
            violations.append(received[0] - consumed[0])
        return message

    client = Client()

    async def main():
        await WsgiToAsgi(app)(make_scope(method="POST"), receive, client.send)

    asyncio.run(main())
    assert client.body == hashlib.sha256(payload).hexdigest().encode()
    assert violations == []


def test_big_body_read_all_at_once():
    payload = os.urandom(3 * 1024 * 1024 + 17)

    def app(environ, start_response):
        data = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [hashlib.sha256(data).digest()]

    parts = [payload[i : i + 100_000] for i in range(0, len(payload), 100_000)]
    client = call(WsgiToAsgi(app), make_scope(method="POST"), body_messages(*parts))
    assert client.body == hashlib.sha256(payload).digest()


def test_disconnect_while_reading_body_raises_oserror():
    async def main():
        loop = asyncio.get_running_loop()
        reading = asyncio.Event()
        errors = []

        def app(environ, start_response):
            stream = environ["wsgi.input"]
            first = stream.read(4)
            loop.call_soon_threadsafe(reading.set)
            try:
                stream.read()
            except OSError as exc:
                errors.append(exc)
            start_response("400 Bad Request", [])
            return [first]

        messages = iter([{"type": "http.request", "body": b"part", "more_body": True}, {"type": "http.disconnect"}])

        async def receive():
            message = next(messages)
            if message["type"] == "http.disconnect":
                await asyncio.wait_for(reading.wait(), WAIT)  # the client leaves while the app reads
            return message

        client = Client()
        await WsgiToAsgi(app)(make_scope(method="POST"), receive, client.send)
        return client, errors

    client, errors = asyncio.run(main())
    assert len(errors) == 1 and isinstance(errors[0], ClientDisconnected)
    assert not client.complete


def test_request_abandoned_while_queued_does_not_run_the_app():
    release = threading.Event()
    calls = []

    def app(environ, start_response):
        calls.append(1)
        start_response("200 OK", [])
        return [b"late"]

    with ThreadPoolExecutor(1) as executor:
        executor.submit(release.wait, WAIT)  # occupy the only thread

        async def main():
            client = Client([{"type": "http.request", "body": b"x", "more_body": True}, {"type": "http.disconnect"}])
            task = asyncio.create_task(WsgiToAsgi(app, executor=executor)(make_scope(), client.receive, client.send))
            for _ in range(1000):  # the request's receive loop takes the disconnect within a few iterations
                if client.inbox.empty():
                    break
                await asyncio.sleep(0)
            release.set()
            await asyncio.wait_for(task, WAIT)
            return client

        try:
            client = asyncio.run(main())
        finally:
            release.set()
    assert calls == []
    assert client.sent == []


def test_disconnect_before_request_returns_quietly():
    client = call(WsgiToAsgi(hello), messages=[{"type": "http.disconnect"}])
    assert client.sent == []


def test_concurrent_requests_run_on_different_threads_at_once():
    barrier = threading.Barrier(2, timeout=WAIT)
    threads = []

    def app(environ, start_response):
        threads.append(threading.get_ident())
        barrier.wait()  # raises BrokenBarrierError unless both requests are in the app together
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = WsgiToAsgi(app)

    async def main():
        clients = [Client(), Client()]
        await asyncio.gather(*(wrapped(make_scope(), c.receive, c.send) for c in clients))
        return clients

    clients = asyncio.run(main())
    assert [c.body for c in clients] == [b"ok", b"ok"]
    assert len(set(threads)) == 2


def test_executor_argument_and_context_are_respected():
    seen = {}

    def app(environ, start_response):
        seen["thread"] = threading.current_thread().name
        seen["request_id"] = request_id.get()
        start_response("200 OK", [])
        return [b"ok"]

    with ThreadPoolExecutor(1, thread_name_prefix="custom-wsgi") as executor:

        async def main():
            request_id.set("r-42")
            client = Client()
            await WsgiToAsgi(app, executor=executor)(make_scope(), client.receive, client.send)
            return client

        client = asyncio.run(main())
    assert client.body == b"ok"
    assert seen == {"thread": seen["thread"], "request_id": "r-42"}
    assert seen["thread"].startswith("custom-wsgi")


def test_executor_subclass_gets_submit_calls():
    """A plain ThreadPoolExecutor takes a request without a Future (see _Job); a subclass, which may have
    its own submit(), is always called through submit()."""
    submitted = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(fn)
            return super().submit(fn, *args, **kwargs)

    with Counting(1) as executor:
        client = call(WsgiToAsgi(hello, executor=executor))
    assert client.body == b"Hello, world!"
    assert len(submitted) == 1


def test_default_executor_is_the_runtime_pool():
    seen = []

    def app(environ, start_response):
        seen.append(threading.current_thread().name)
        start_response("200 OK", [])
        return [b"ok"]

    call(WsgiToAsgi(app))
    assert seen[0].startswith("corral-pool")


def test_list_response_with_bytes_like_chunks_and_bytesio_input():
    def app(environ, start_response):
        assert isinstance(environ["wsgi.input"], io.BufferedIOBase) or hasattr(environ["wsgi.input"], "read")
        start_response("200 OK", [])
        return (bytearray(b"a"), b"", memoryview(b"b"))

    client = call(WsgiToAsgi(app))
    assert client.body == b"ab" and client.complete


def test_streamed_response_applies_backpressure_to_the_application():
    from corral.shared.wsgi import OUTPUT_WINDOW

    chunk = b"x" * 65536
    delivered = [0]
    violations = []

    def app(environ, start_response):
        start_response("200 OK", [])
        produced = 0
        for _ in range(100):
            # The thread may only run a bounded distance ahead of what has been handed to send().
            if produced - delivered[0] > 2 * (OUTPUT_WINDOW + len(chunk)):
                violations.append(produced - delivered[0])
            produced += len(chunk)
            yield chunk

    class Slow(Client):
        async def send(self, message):
            delivered[0] += len(message.get("body", b""))
            for _ in range(3):
                await asyncio.sleep(0)
            self.sent.append({**message, "body": len(message.get("body", b""))})

    client = call(WsgiToAsgi(app), client=Slow())
    assert sum(m["body"] for m in client.bodies) == 100 * len(chunk)
    assert client.complete
    assert violations == []


def test_request_dropped_by_executor_shutdown_raises():
    release = threading.Event()
    executor = ThreadPoolExecutor(1)
    executor.submit(release.wait, WAIT)  # occupy the only thread

    async def main():
        client = Client()
        task = asyncio.create_task(WsgiToAsgi(hello, executor=executor)(make_scope(), client.receive, client.send))
        await asyncio.sleep(0)  # the request runs up to waiting for its (queued) job
        executor.shutdown(wait=False, cancel_futures=True)
        release.set()
        with pytest.raises(RuntimeError, match="shut down"):
            await asyncio.wait_for(task, WAIT)

    try:
        asyncio.run(main())
    finally:
        release.set()
        executor.shutdown(wait=True)
