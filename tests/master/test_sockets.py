"""Bind addresses: parsing, binding with clear errors, unix socket files, fd:// and systemd activation."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from corral.master.listen.sockets import Address, BindError, bind, bind_all, close_all, parse_address


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:8001", Address(socket.AF_INET, host="127.0.0.1", port=8001)),
        ("127.0.0.1", Address(socket.AF_INET, host="127.0.0.1", port=8000)),
        (":9000", Address(socket.AF_INET, host="0.0.0.0", port=9000)),
        ("[::1]:8002", Address(socket.AF_INET6, host="::1", port=8002)),
        ("[::]", Address(socket.AF_INET6, host="::", port=8000)),
        ("unix:/tmp/x.sock", Address(socket.AF_UNIX, path="/tmp/x.sock")),
    ],
)
def test_parse(text, expected):
    assert parse_address(text) == expected
    assert parse_address(str(expected)) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:70000", "out of range"),
        ("::1:8000", "write IPv6 addresses in brackets"),
        ("[::1", "write IPv6 addresses as [::1]:8000"),
        ("unix:", "unix: needs a path"),
        ("fd://x", "fd:// needs a file descriptor number"),
        ("fd://987", "fd 987 is not an open socket"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text, message):
    with pytest.raises(BindError, match=re.escape(message)):
        parse_address(text)


def test_bind_tcp_and_address_in_use():
    [sock] = bind_all(["127.0.0.1:0"])
    try:
        port = sock.getsockname()[1]
        assert sock.getblocking() is False
        with pytest.raises(BindError, match=rf"cannot bind 127.0.0.1:{port}: address already in use"):
            bind_all([f"127.0.0.1:{port}"])
    finally:
        close_all([sock])


def test_bind_all_is_all_or_nothing():
    [taken] = bind_all(["127.0.0.1:0"])
    try:
        port = taken.getsockname()[1]
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(BindError):
            bind_all(["127.0.0.1:0", f"127.0.0.1:{port}"])
        assert set(os.listdir("/proc/self/fd")) == before  # the first socket was closed again
    finally:
        close_all([taken])


def test_bind_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        [sock] = bind_all(["[::1]:0"])
    except BindError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    try:
        assert sock.family == socket.AF_INET6
        with socket.create_connection(("::1", sock.getsockname()[1]), timeout=5):
            pass
    finally:
        close_all([sock])


def test_unix_socket_stale_file_replaced_live_one_refused_and_unlinked(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a dead server's leftover
    [sock] = bind_all([f"unix:{path}"])
    try:
        with pytest.raises(BindError, match="address already in use"):
            bind_all([f"unix:{path}"])
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(5)
        client.connect(path)
        client.close()
    finally:
        close_all([sock], unlink=True)
    assert not os.path.exists(path)


def _ipv6_loopback() -> bool:
    """Whether this machine can bind and reach ::1 (containers may have IPv6 off)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def test_unspecified_ipv6_is_dual_stack_as_in_gunicorn():
    """`-b [::]:PORT` (Docker images' spelling of "everywhere") takes IPv4 clients too."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        [sock] = bind_all(["[::]:0"])
    except BindError as exc:
        pytest.skip(f"IPv6 unavailable: {exc}")
    try:
        port = sock.getsockname()[1]
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert _answers("127.0.0.1", port)
        if _ipv6_loopback():
            assert _answers("::1", port)
    finally:
        close_all([sock])


def test_ipv6_and_ipv4_wildcards_on_one_port_both_bind():
    """`-b 0.0.0.0:P -b [::]:P`, in either order: the IPv6 socket is then IPv6-only (a dual-stack one would
    collide with the IPv4 one), and both families are served."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    port = _free_port()
    for order in ([f"0.0.0.0:{port}", f"[::]:{port}"], [f"[::]:{port}", f"0.0.0.0:{port}"]):
        try:
            sockets = bind_all(order)
        except BindError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise
            pytest.skip(f"IPv6 unavailable: {exc}")
        try:
            six = next(s for s in sockets if s.family == socket.AF_INET6)
            assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert _answers("127.0.0.1", port)
            if _ipv6_loopback():
                assert _answers("::1", port)
        finally:
            close_all(sockets)


def test_ipv6_loopback_stays_ipv6_only():
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    [sock] = bind_all(["[::1]:0"])
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        close_all([sock])


def test_unix_socket_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("data")
    with pytest.raises(BindError):
        bind_all([f"unix:{path}"])
    assert path.read_text() == "data"


@pytest.mark.parametrize("umask, mode", [(0, 0o777), (0o007, 0o770), (0o077, 0o700)])
def test_unix_socket_umask(tmp_path, umask, mode):
    """gunicorn's rule: the socket file gets 0777 less --umask, whatever the process's own umask is."""
    path = str(tmp_path / "u.sock")
    before = os.umask(0o022)
    try:
        [sock] = bind_all([f"unix:{path}"], umask=umask)
        assert os.umask(0o022) == 0o022  # the process's umask is left as it was
    finally:
        os.umask(before)
    try:
        assert os.stat(path).st_mode & 0o777 == mode
    finally:
        close_all([sock], unlink=True)


def test_fd_address_adopts_an_inherited_socket():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = os.dup(listener.fileno())
    listener.close()
    sock = bind(parse_address(f"fd://{fd}"))
    try:
        assert sock.fileno() == fd
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        sock.close()


def test_systemd_socket_activation_in_a_child_process():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # The child puts the socket at fd 3, as systemd would, and sets LISTEN_PID to itself.
    child = textwrap.dedent(
        f"""
        import os, socket, sys
        os.dup2(int(sys.argv[1]), 3)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        from corral.master.listen.sockets import systemd_sockets
        socks = systemd_sockets()
        assert len(socks) == 1 and socks[0].getsockname()[1] == {port}, socks
        assert "LISTEN_FDS" not in os.environ
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child, str(listener.fileno())],
        pass_fds=(listener.fileno(),),
        capture_output=True,
        text=True,
        timeout=60,
    )
    listener.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_systemd_variables_for_another_pid_are_ignored():
    from corral.master.listen.sockets import systemd_sockets

    assert systemd_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "2"}) == []
