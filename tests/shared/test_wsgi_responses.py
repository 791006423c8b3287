"""WsgiToAsgi: responses: streaming, write(), close(), errors, start_response and backpressure."""

import asyncio
import io
import sys
import threading

import pytest

from corral.shared.wsgi import WsgiToAsgi
from wsgi_helpers import WAIT, Client, call


@pytest.fixture(autouse=True, params=[False, True], ids=["asgiref-shape", "coalesced"])
def coalesce(request, monkeypatch):
    """Every test here runs with both message shapes: asgiref's (the default) and the worker's."""
    monkeypatch.setattr(WsgiToAsgi.__init__, "__kwdefaults__", {"executor": None, "coalesce": request.param})
    return request.param


def test_streamed_generator_response_arrives_chunk_by_chunk(coalesce):
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
    if coalesce:
        # corral's shape: the last chunk closes the response (it came with the end of the iterable).
        assert [m["body"] for m in client.bodies if m["body"]] == [b"one", b"two", b"three"]
        assert all(m["more_body"] for m in client.bodies[:-1])
    else:
        # asgiref's message shape: one message per chunk with more_body, then a closing empty one.
        assert client.bodies == [
            {"type": "http.response.body", "body": b"one", "more_body": True},
            {"type": "http.response.body", "body": b"two", "more_body": True},
            {"type": "http.response.body", "body": b"three", "more_body": True},
            {"type": "http.response.body"},
        ]
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
            if message["type"] == "http.response.body" and not self.inbox.qsize() and not hasattr(self, "left"):
                self.left = True  # once, after the first body message (counting self.bodies is quadratic)
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
        except Exception as exc:  # noqa: BLE001 - whatever start_response raises is recorded for the test to assert
            errors.append(exc)
        return [b"ok"]

    client = call(WsgiToAsgi(app))
    assert client.start["status"] == 200 and len(errors) == 1


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
