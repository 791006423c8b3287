"""WsgiToAsgi: the request body, client disconnects, and the executors requests run on."""

import asyncio
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.shared.wsgi import INPUT_BUFFER, ClientDisconnected, WsgiToAsgi
from wsgi_helpers import WAIT, Client, body_messages, call, hello, make_scope, request_id


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
