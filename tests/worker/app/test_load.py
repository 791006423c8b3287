import asyncio
import functools
import itertools
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.worker.app.load import AppImportError, detect_interface, import_app, wrap_application

# ---------------------------------------------------------------------------- sample applications


async def asgi3_function(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi3"})


class Asgi3Object:
    async def __call__(self, scope, receive, send):
        await asgi3_function(scope, receive, send)


class Asgi2Class:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2-class"})


def asgi2_function(scope):
    async def instance(receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2-function"})

    return instance


def wsgi_function(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi:" + environ["PATH_INFO"].encode()]


class WsgiClass:
    """PEP 3333's class-as-application form."""

    def __init__(self, environ, start_response):
        self.start_response = start_response

    def __iter__(self):
        self.start_response("200 OK", [])
        yield b"wsgi-class"


class SyncAsgi3Middleware:
    """A middleware whose sync __call__ returns the inner app's coroutine."""

    def __call__(self, scope, receive, send):
        return asgi3_function(scope, receive, send)


def call(app, path="/"):
    """Drive an ASGI 3 app through one HTTP request; returns (status, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


# ---------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "app,expected",
    [
        (asgi3_function, "asgi3"),
        (Asgi3Object(), "asgi3"),
        (SyncAsgi3Middleware(), "asgi3"),
        (functools.partial(asgi3_function), "asgi3"),
        (Asgi2Class, "asgi2"),
        (asgi2_function, "asgi2"),
        (wsgi_function, "wsgi"),
        (WsgiClass, "wsgi"),
    ],
)
def test_detect_interface(app, expected):
    assert detect_interface(app) == expected


def test_detect_respects_asgiref_markers():
    def looks_wsgi(environ, start_response):
        pass

    looks_wsgi._asgi_single_callable = True
    assert detect_interface(looks_wsgi) == "asgi3"

    async def looks_asgi3(scope, receive, send):
        pass

    looks_asgi3._asgi_double_callable = True
    assert detect_interface(looks_asgi3) == "asgi2"


def test_detect_flask():
    flask = pytest.importorskip("flask")
    app = flask.Flask("corral_test_flask")
    assert detect_interface(app) == "wsgi"
    assert detect_interface(app.wsgi_app) == "wsgi"


@pytest.fixture(scope="module")
def django_configured():
    pytest.importorskip("django")
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, MIDDLEWARE=[], SECRET_KEY="x")
    django.setup(set_prefix=False)


urlpatterns: list = []  # ROOT_URLCONF for the Django tests


def test_detect_django_handlers(django_configured):
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    assert detect_interface(WSGIHandler()) == "wsgi"
    assert detect_interface(ASGIHandler()) == "asgi3"


# ---------------------------------------------------------------------------- wrapping


def test_wrap_asgi3_is_identity():
    assert wrap_application(asgi3_function) is asgi3_function


@pytest.mark.parametrize(
    "app,body",
    [
        (asgi3_function, b"asgi3"),
        (Asgi3Object(), b"asgi3"),
        (Asgi2Class, b"asgi2-class"),
        (asgi2_function, b"asgi2-function"),
    ],
)
def test_wrapped_asgi_apps_serve(app, body):
    assert call(wrap_application(app)) == (200, body)


def test_wrapped_wsgi_app_serves():
    with ThreadPoolExecutor(2) as executor:
        assert call(wrap_application(wsgi_function, executor=executor), "/x") == (200, b"wsgi:/x")


def test_wrapped_flask_app_serves():
    flask = pytest.importorskip("flask")
    app = flask.Flask("corral_test_flask_serve")
    app.add_url_rule("/hi", "hi", lambda: "hello from flask")
    with ThreadPoolExecutor(2) as executor:
        assert call(wrap_application(app, executor=executor), "/hi") == (200, b"hello from flask")


def test_explicit_interface_overrides_detection():
    # A *args sync callable is ambiguous (asgiref says ASGI 2); told "asgi3" it is taken as is.
    def odd(*args):
        return asgi3_function(*args)

    assert wrap_application(odd, "asgi3") is odd
    wrapped = wrap_application(asgi2_function, "asgi2")
    assert wrapped is not asgi2_function and call(wrapped) == (200, b"asgi2-function")
    from corral.shared.wsgi import WsgiToAsgi

    assert isinstance(wrap_application(wsgi_function, "wsgi"), WsgiToAsgi)
    with pytest.raises(ValueError):
        wrap_application(asgi3_function, "cgi")


# ---------------------------------------------------------------------------- importing

_counter = itertools.count()


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Write a uniquely named module on a temporary sys.path entry; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source):
        name = f"corral_app_{next(_counter)}_{id(tmp_path) & 0xFFFF}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return make


APP_SOURCE = """
    async def app(scope, receive, send):
        pass

    class Holder:
        class inner:
            async def asgi(scope, receive, send):
                pass

    def create_app(name="default", debug=False):
        async def made(scope, receive, send):
            pass
        made.config = (name, debug)
        return made

    def returns_none():
        return None

    application = app
    settings = {"a": 1}
"""


def test_import_module_attribute(make_module):
    name = make_module(APP_SOURCE)
    app = import_app(f"{name}:app")
    assert app.__name__ == "app" and detect_interface(app) == "asgi3"


def test_import_dotted_attribute(make_module):
    name = make_module(APP_SOURCE)
    assert import_app(f"{name}:Holder.inner.asgi").__name__ == "asgi"


def test_import_default_attribute_is_application(make_module):
    name = make_module(APP_SOURCE)
    assert import_app(name).__name__ == "app"


def test_import_factory_call_syntax(make_module):
    name = make_module(APP_SOURCE)
    assert import_app(f"{name}:create_app()").config == ("default", False)
    assert import_app(f"{name}:create_app('prod', debug=True)").config == ("prod", True)


def test_import_factory_flag(make_module):
    name = make_module(APP_SOURCE)
    assert import_app(f"{name}:create_app", factory=True).config == ("default", False)


@pytest.mark.parametrize(
    "spec", [":app", "mod:", "mod:app.", "mod:app[0]", "1mod:app", "mod:f(x)", "mod:f(**k)", "mod:a b"]
)
def test_bad_format(spec):
    with pytest.raises(AppImportError, match="invalid application spec"):
        import_app(spec)


def test_module_not_found(make_module):
    with pytest.raises(AppImportError, match="module 'corral_no_such_module_xyz' not found") as info:
        import_app("corral_no_such_module_xyz:app")
    assert info.value.__cause__ is None
    with pytest.raises(AppImportError, match="not found"):
        import_app("corral_no_such_package_xyz.sub:app")


def test_import_error_inside_module_keeps_traceback(make_module):
    name = make_module("import corral_dependency_that_is_missing\n")
    with pytest.raises(AppImportError) as info:
        import_app(f"{name}:app")
    message = str(info.value)
    assert "error while importing module" in message and "corral_dependency_that_is_missing" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert "\n" not in message


def test_exception_while_importing(make_module):
    name = make_module("raise RuntimeError('settings missing')\n")
    with pytest.raises(AppImportError, match="RuntimeError: settings missing") as info:
        import_app(f"{name}:app")
    assert isinstance(info.value.__cause__, RuntimeError)
    name = make_module("def broken(:\n")
    with pytest.raises(AppImportError, match="SyntaxError"):
        import_app(f"{name}:app")


def test_attribute_not_found_lists_names(make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(AppImportError) as info:
        import_app(f"{name}:ap")
    message = str(info.value)
    assert "attribute 'ap' not found" in message and "did you mean 'app'" in message and "create_app" in message
    with pytest.raises(AppImportError, match=r"attribute 'missing' not found in .*Holder"):
        import_app(f"{name}:Holder.missing")


def test_factory_returning_none(make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(AppImportError, match="returned None"):
        import_app(f"{name}:returns_none()")
    with pytest.raises(AppImportError, match="returned None"):
        import_app(f"{name}:returns_none", factory=True)


def test_factory_raising(make_module):
    name = make_module("def make():\n    raise KeyError('DATABASE_URL')\n")
    with pytest.raises(AppImportError, match="error calling factory") as info:
        import_app(f"{name}:make()")
    assert isinstance(info.value.__cause__, KeyError)


def test_not_callable(make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(AppImportError, match="not a callable application"):
        import_app(f"{name}:settings")
    with pytest.raises(AppImportError, match="not callable"):
        import_app(f"{name}:settings", factory=True)


def test_module_importable_from_current_directory(tmp_path, monkeypatch):
    (tmp_path / "corral_cwd_app_module.py").write_text("async def app(scope, receive, send):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(__import__("sys").modules, "corral_cwd_app_module", raising=False)
    assert import_app("corral_cwd_app_module:app").__name__ == "app"
