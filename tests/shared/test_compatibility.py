import asyncio

from corral.shared.compatibility import double_to_single_callable, guarantee_single_callable, is_double_callable
from corral.shared.coroutines import markcoroutinefunction


async def _drive(app, scope):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


class ClassStyleApp:
    """ASGI 2: the class is called with the scope, the instance with (receive, send)."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await receive()
        await send({"type": "echo", "path": self.scope["path"]})


def function_style_app(scope):
    async def instance(receive, send):
        await send({"type": "echo", "path": scope["path"]})

    return instance


async def asgi3_app(scope, receive, send):
    await send({"type": "echo", "path": scope["path"]})


class Asgi3Instance:
    async def __call__(self, scope, receive, send):
        await send({"type": "echo", "path": scope["path"]})


def test_class_style_double_callable_is_wrapped():
    assert is_double_callable(ClassStyleApp)
    app = guarantee_single_callable(ClassStyleApp)
    assert app is not ClassStyleApp
    assert asyncio.run(_drive(app, {"type": "http", "path": "/c"})) == [{"type": "echo", "path": "/c"}]


def test_function_style_double_callable_is_wrapped():
    assert is_double_callable(function_style_app)
    app = guarantee_single_callable(function_style_app)
    assert asyncio.run(_drive(app, {"type": "http", "path": "/f"})) == [{"type": "echo", "path": "/f"}]


def test_asgi3_applications_are_left_alone():
    instance = Asgi3Instance()
    for app in (asgi3_app, instance):
        assert not is_double_callable(app)
        assert guarantee_single_callable(app) is app
    assert asyncio.run(_drive(instance, {"type": "http", "path": "/i"})) == [{"type": "echo", "path": "/i"}]


def test_markers_override_detection():
    def looks_double(scope):
        raise AssertionError("never called")

    looks_double._asgi_single_callable = True
    assert not is_double_callable(looks_double)

    async def looks_single(scope, receive, send):
        raise AssertionError("never called")

    looks_single._asgi_double_callable = True
    assert is_double_callable(looks_single)


def test_marked_coroutine_function_is_single_callable():
    def app(scope, receive, send):
        return asgi3_app(scope, receive, send)

    markcoroutinefunction(app)
    assert not is_double_callable(app)
    assert guarantee_single_callable(app) is app


def test_double_to_single_callable_passes_return_value():
    def app(scope):
        async def instance(receive, send):
            return scope["type"]

        return instance

    single = double_to_single_callable(app)
    assert asyncio.run(single({"type": "lifespan"}, None, None)) == "lifespan"
