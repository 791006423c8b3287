"""Helpers shared by the test_wsgi_*.py files (tests/shared/conftest.py puts this folder on sys.path)."""

import asyncio
import contextvars

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
    return [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]


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
