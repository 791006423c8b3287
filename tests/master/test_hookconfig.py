"""master/hooks/cfg.py: gunicorn's `cfg` over corral's settings answers what gunicorn's Config answers, and
`server.LISTENERS`' wrappers read as gunicorn's sockets do."""

from __future__ import annotations

import os
import socket

import pytest

from corral.master.config.peer_names import GUNICORN
from corral.master.hooks.cfg import HookConfig, Listener
from corral.shared.settings import Settings

gunicorn_config = pytest.importorskip("gunicorn.config")

#: Where corral's answer differs from gunicorn's default on purpose.
DIFFERENT = {
    "sendfile": "corral has no sendfile path: False",
    "control_socket": "gunicorn's default is a path in the home folder; corral's status socket is elsewhere",
    "ssl_context": "gunicorn's default is a function building its context; corral has none to give",
    "logger_class": "gunicorn's attribute is the class; corral names gunicorn's default",
}


def test_every_gunicorn_setting_is_an_attribute():
    ours = HookConfig(Settings(), "app:app")
    theirs = gunicorn_config.Config()
    for setting in gunicorn_config.KNOWN_SETTINGS:
        value = getattr(ours, setting.name)  # never AttributeError: gunicorn's hooks read any of them
        if GUNICORN[setting.name].kind in ("noop", "refuse") and setting.name not in DIFFERENT:
            expected = getattr(theirs, setting.name)
            if callable(expected):  # gunicorn's unset hooks are functions that do nothing
                assert callable(value) and value(None, None) is None, setting.name
            else:
                assert value == expected, setting.name


def test_gunicorns_computed_attributes():
    ours = HookConfig(
        Settings(
            bind=("127.0.0.1:8001", "[::1]:8002", "unix:/tmp/x.sock"),
            raw_env=("A=1", "B=x=y"),
            user=0,
            workers=3,
            reuse_port=True,
        ),
        "proj.wsgi:application",
    )
    theirs = gunicorn_config.Config()
    for name, value in (
        ("bind", ["127.0.0.1:8001", "[::1]:8002", "unix:/tmp/x.sock"]),
        ("raw_env", ["A=1", "B=x=y"]),
        ("user", 0),
        ("workers", 3),
        ("reuse_port", True),
        ("default_proc_name", "proj.wsgi:application"),
    ):
        theirs.set(name, value)
    for attribute in (
        "address",
        "env",
        "uid",
        "gid",
        "user",
        "group",
        "workers",
        "reuse_port",
        "proc_name",
        "is_ssl",
        "worker_connections",
        "paste_global_conf",
        "bind",
        "raw_env",
    ):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert ours.settings["workers"].value == 3 and ours.settings["workers"].get() == 3
    assert ours.worker_class_str == "asgi"
    assert HookConfig(Settings(worker_class="sync")).worker_class_str == "sync"
    assert HookConfig(Settings(certfile="/etc/cert.pem")).is_ssl == "/etc/cert.pem"
    assert HookConfig(Settings(lifespan="off")).asgi_lifespan == "off"  # carried over under corral's name


def test_unknown_names_and_writes_fail_as_in_gunicorn():
    cfg = HookConfig(Settings())
    with pytest.raises(AttributeError, match="No configuration setting for: no_such_thing"):
        cfg.no_such_thing  # noqa: B018 - reading it is the test
    with pytest.raises(AttributeError, match="Invalid access!"):
        cfg.workers = 4


def test_listeners_read_as_gunicorns_sockets(tmp_path):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "s.sock"))
    try:
        port = tcp.getsockname()[1]
        assert str(Listener(tcp)) == f"http://127.0.0.1:{port}" and str(Listener(tcp, tls=True)).startswith("https")
        assert Listener(tcp).cfg_addr == ("127.0.0.1", port) and Listener(tcp).fileno() == tcp.fileno()
        assert str(Listener(unix)) == f"unix:{tmp_path / 's.sock'}" and Listener(unix).cfg_addr == str(
            tmp_path / "s.sock"
        )
        assert Listener(tcp).sock is tcp and Listener(unix).FAMILY == socket.AF_UNIX
    finally:
        tcp.close()
        unix.close()
        os.unlink(tmp_path / "s.sock")
