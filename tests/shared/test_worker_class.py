"""`-k/--worker-class` resolved by what the class is: gunicorn's and uvicorn's names, a project's subclass
imported (uvicorn and gunicorn are test extras here), the same class read from its source when uvicorn is
not importable, and what its CONFIG_KWARGS become."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

from corral.shared import worker_class
from corral.shared.settings import SettingError, Settings
from corral.shared.worker_class import ASGI, WSGI, WorkerClassError, kwargs_settings, resolve

MY_WORKER = """
from uvicorn.workers import UvicornWorker
import uvicorn.workers as uw


class MyUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "asyncio", "http": "auto", "lifespan": "off", "proxy_headers": False,
                     "root_path": "/api", "use_colors": False}


class Spread(uw.UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "ws_ping_interval": None}


class Inherits(MyUvicornWorker):
    pass
"""

SYNC_WORKER = """
from gunicorn.workers.sync import SyncWorker


class MySync(SyncWorker):
    pass


class NotAWorker:
    pass
"""

GEVENT_WORKER = """
from gunicorn.workers import ggevent


class MyGevent(ggevent.GeventWorker):
    pass
"""


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Write a module under a fresh name (resolution is cached per path) on the import path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    worker_class.clear_cache()
    yield lambda source: _write(tmp_path, source)
    worker_class.clear_cache()


def _write(folder, source):
    name = f"workers_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


@pytest.fixture
def without_uvicorn_and_gunicorn(monkeypatch):
    """As in an image where corral replaced gunicorn: neither can be imported."""
    for name in (
        "uvicorn",
        "uvicorn.workers",
        "gunicorn",
        "gunicorn.workers",
        "gunicorn.workers.sync",
        "gunicorn.workers.ggevent",
    ):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    "text, interface, kwargs",
    [
        ("sync", WSGI, {}),
        ("gthread", WSGI, {}),
        ("egg:gunicorn#gthread", WSGI, {}),
        ("gunicorn.workers.gthread.ThreadWorker", WSGI, {}),
        ("asgi", ASGI, {}),
        ("uvicorn.workers.UvicornWorker", ASGI, {"loop": "auto", "http": "auto"}),
        ("uvicorn_worker.UvicornH11Worker", ASGI, {"loop": "asyncio", "http": "h11"}),
    ],
)
def test_gunicorns_and_uvicorns_names(text, interface, kwargs):
    found = resolve(text)
    assert (found.interface, found.config_kwargs, found.how) == (interface, kwargs, "")


@pytest.mark.parametrize("text", ["gevent", "eventlet", "tornado", "gunicorn.workers.ggevent.GeventWorker"])
def test_other_concurrency_models_are_refused(text):
    with pytest.raises(WorkerClassError, match="corral cannot run worker class"):
        resolve(text)


def test_a_projects_uvicorn_worker_is_imported_with_its_config_kwargs(module):
    pytest.importorskip("uvicorn.workers")
    name = module(MY_WORKER)
    found = resolve(f"{name}.MyUvicornWorker")
    assert found.interface == ASGI and found.how == ""
    assert found.config_kwargs == {
        "loop": "asyncio",
        "http": "auto",
        "lifespan": "off",
        "proxy_headers": False,
        "root_path": "/api",
        "use_colors": False,
    }
    assert resolve(f"{name}.Spread").config_kwargs == {"loop": "auto", "http": "auto", "ws_ping_interval": None}
    assert resolve(f"{name}.Inherits").config_kwargs["root_path"] == "/api"


def test_without_uvicorn_the_class_is_read_from_its_source(module, without_uvicorn_and_gunicorn):
    name = module(MY_WORKER)
    found = resolve(f"{name}.MyUvicornWorker")
    assert found.interface == ASGI
    assert found.how == "read from its source (uvicorn is not installed here)"
    assert found.config_kwargs["lifespan"] == "off" and found.config_kwargs["proxy_headers"] is False
    # `{**UvicornWorker.CONFIG_KWARGS, ...}` and `uw.UvicornWorker`: the base's known kwargs, then its own
    assert resolve(f"{name}.Spread").config_kwargs == {"loop": "auto", "http": "auto", "ws_ping_interval": None}
    assert resolve(f"{name}.Inherits").config_kwargs["root_path"] == "/api"  # inherited from a class beside it


@pytest.mark.parametrize("hidden", [False, True])
def test_gunicorn_subclasses(module, request, hidden):
    pytest.importorskip("gunicorn.workers.sync")
    if hidden:
        request.getfixturevalue("without_uvicorn_and_gunicorn")
    name = module(SYNC_WORKER)
    found = resolve(f"{name}.MySync")
    assert found.interface == WSGI
    assert found.how == ("read from its source (gunicorn is not installed here)" if hidden else "")
    with pytest.raises(
        WorkerClassError,
        match="neither a uvicorn worker nor gunicorn's sync/gthread" if not hidden else "cannot be imported",
    ):
        resolve(f"{name}.NotAWorker")
    gevent = module(GEVENT_WORKER)  # imported, or (without gevent or gunicorn) read: refused either way
    with pytest.raises(WorkerClassError, match="monkey-patched greenlets"):
        resolve(f"{gevent}.MyGevent")


def test_a_class_that_cannot_be_imported_nor_read(module):
    found = resolve("no_such_package_here.workers.UvicornWorkerPlus")
    assert found.interface == ASGI and "taken as ASGI by its name" in found.how and found.config_kwargs == {}
    with pytest.raises(WorkerClassError, match=r"cannot be imported .no module 'no_such_package_here'"):
        resolve("no_such_package_here.workers.Plain")
    with pytest.raises(SettingError, match="invalid value for --worker-class: corral cannot run worker class 'gevent'"):
        Settings(worker_class="gevent")  # refused as a value; what a path names is resolved later (carryover)


def test_config_kwargs_become_settings_or_are_named_as_ignored():
    found, ignored = kwargs_settings(
        {
            "loop": "asyncio",
            "http": "httptools",
            "lifespan": "off",
            "proxy_headers": False,
            "ws_ping_interval": None,
            "limit_concurrency": 10,
            "use_colors": True,
            "timeout_keep_alive": 7,
            "http2": False,
            "nonsense": 1,
        },
        workers=4,
    )
    assert found == {
        "lifespan": "off",
        "forwarded_allow_ips": (),
        "ws_ping_interval": 0.0,
        "pool_full": "503",
        "max_applications": 40,
        "keepalive": 7,
        "http": "1",
    }
    assert ignored == [
        "loop='asyncio' (corral always runs uvloop)",
        "use_colors=True (corral's logs are plain text)",
        "nonsense=1 (not an argument of uvicorn's Config)",
    ]


def test_relative_imports_are_followed_when_reading_the_source(tmp_path, monkeypatch, without_uvicorn_and_gunicorn):
    package = tmp_path / f"proj_{uuid.uuid4().hex[:8]}"
    (package / "workers").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text(
        "from uvicorn_worker import UvicornWorker\n\n\n"
        "class Base(UvicornWorker):\n    CONFIG_KWARGS = {'lifespan': 'on'}\n"
    )
    (package / "workers" / "__init__.py").write_text(
        "from ..base import Base\nfrom .extra import Extra\n\n\nclass Worker(Base):\n    pass\n"
    )
    (package / "workers" / "extra.py").write_text(
        "from .. import base\n\n\nclass Extra(base.Base):\n    CONFIG_KWARGS = dict(lifespan='off', root_path='/x')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "uvicorn_worker", None)
    worker_class.clear_cache()
    assert resolve(f"{package.name}.workers.Worker").config_kwargs == {"lifespan": "on"}
    assert resolve(f"{package.name}.workers.Extra").config_kwargs == {"lifespan": "off", "root_path": "/x"}
    worker_class.clear_cache()
