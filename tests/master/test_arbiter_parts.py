"""The master's small parts: limit spreading, the control channel, the pid file, status, new settings."""

from __future__ import annotations

import os
import socket
import time

import pytest

from corral.master.arbiter.channel import Channel, pair
from corral.master.arbiter.workerinfo import split_limit
from corral.master.cli import main
from corral.master.status.control import ControlServer, control_paths, format_table, query
from corral.master.status.pidfile import Pidfile, PidfileError, read_pid
from corral.shared.exitcodes import BIND_ERROR, ExitCode
from corral.shared.settings import SettingError, Settings


@pytest.mark.parametrize(
    "total, workers, expected",
    [
        (10, 3, [4, 3, 3]),
        (10, 2, [5, 5]),
        (1000, 3, [334, 333, 333]),
        (7, 7, [1] * 7),
        (5, 1, [5]),
        (3, 0, []),
    ],
)
def test_split_limit_gives_the_remainder_to_the_first_and_sums_exactly(total, workers, expected):
    assert split_limit(total, workers) == expected
    assert sum(expected) == total or workers == 0


def test_split_limit_never_gives_zero():
    assert split_limit(2, 4) == [1, 1, 1, 1]


def test_channel_keeps_message_boundaries_and_reports_eof():
    master, worker = pair()
    try:
        assert worker.send("ready")
        assert worker.send("hb", requests=3)
        messages, eof = master.receive()
        assert messages == [{"t": "ready"}, {"t": "hb", "requests": 3}] and not eof
        assert master.receive() == ([], False)
        worker.close()
        assert master.receive() == ([], True)
        assert not worker.send("hb")  # closed: dropped, no exception
    finally:
        master.close()
        worker.close()


def test_channel_send_to_a_dead_peer_does_not_raise():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = Channel(a)
    b.close()
    assert channel.send("limit", max_applications=3) is False
    channel.close()


def test_pidfile_refuses_a_live_owner_replaces_a_stale_one_and_removes_only_its_own(tmp_path):
    path = tmp_path / "serve.pid"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(PidfileError, match="belongs to running process"):
        Pidfile(str(path)).create(os.getpid())
    path.write_text("999999999\n")
    pidfile = Pidfile(str(path))
    pidfile.create(os.getpid())
    assert read_pid(str(path)) == os.getpid()
    pidfile.rename(str(path) + ".oldbin")
    assert read_pid(str(path) + ".oldbin") == os.getpid() and not path.exists()
    path.write_text("12345\n")  # a new master's file now: not ours to remove
    pidfile.path = str(path)
    pidfile.unlink()
    assert path.exists()


def test_control_socket_round_trip_and_table(tmp_path):
    pidfile = tmp_path / "serve.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    server = ControlServer(str(pidfile), os.getpid())
    assert server.path == control_paths(str(pidfile), os.getpid())[0]
    document = {
        "master": {
            "pid": os.getpid(),
            "name": "apps:app",
            "started": time.time() - 5,
            "target": 2,
            "max_applications": 10,
            "generation": 0,
        },
        "workers": [
            {
                "pid": 11,
                "number": 1,
                "state": "ready",
                "age": 3.0,
                "requests": 7,
                "instances": 2,
                "limit": 5,
                "rss": 30 << 20,
                "cpu": 1.5,
            }
        ],
    }
    import threading

    client: list = []
    thread = threading.Thread(target=lambda: client.append(query(str(pidfile))))
    thread.start()
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        server.answer(document)
        time.sleep(0.01)
    thread.join(10)
    server.close()
    assert client == [document]
    assert not os.path.exists(server.path)
    table = format_table(document)
    assert "2/5" in table and "30.0M" in table and "INSTANCES" in table


def test_control_path_falls_back_when_too_long(tmp_path):
    deep = tmp_path / ("x" * 120) / "serve.pid"
    (path,) = control_paths(str(deep), 42)
    assert len(path) < 108 and path.endswith("42.ctl")


@pytest.mark.parametrize(
    "value, expected",
    [("022", 0o22), ("0o27", 0o27), (18, 18), ("0", 0), ("007", 0o7), ("18", 18), ("0x12", 0o22), (" 0022 ", 0o22)],
)
def test_umask_reads_values_as_gunicorn_does(value, expected):
    """A leading 0 (or 0o) is octal, 0x hexadecimal, anything else decimal: gunicorn's own parser agrees."""
    assert Settings(umask=value).umask == expected
    gunicorn_config = pytest.importorskip("gunicorn.config")
    if isinstance(value, str):
        assert gunicorn_config.auto_int(None, value.strip()) == expected


@pytest.mark.parametrize(
    "name, value",
    [
        ("umask", "08"),
        ("umask", "0o1000"),
        ("max_worker_memory", "lots"),
        ("user", "no-such-user-here"),
        ("timeout", "-1"),
    ],
)
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(SettingError, match="invalid value for --"):
        Settings(**{name: value})


def test_master_settings_defaults_and_sizes():
    settings = Settings(max_worker_memory="512M", user="0", group="0")
    assert settings.max_worker_memory == 512 << 20
    assert (settings.user, settings.group) == (0, 0)
    assert Settings().timeout == 30.0 and Settings().worker_boot_retries == 3 and Settings().pidfile is None


def test_bind_error_is_its_own_exit_code():
    assert BIND_ERROR == 6 and ExitCode(6) is BIND_ERROR


def test_cli_unknown_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--timout", "3", "apps:app"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err == "serve: error: no such option --timout; did you mean --timeout?\n"


def test_cli_print_config_lists_every_setting(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_WORKERS", raising=False)
    with pytest.raises(SystemExit) as exit:
        main(["--print-config", "-w", "4", "-t", "0", "--preload"])
    assert exit.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert "workers = 4" in out and "timeout = 0.0" in out and "preload_app = True" in out
    assert len(out) == len(Settings.__init__.__globals__["REGISTRY"])
