"""Listening sockets: parse bind addresses, bind them before forking, inherit them (fd://, systemd).

Every address is bound by the master before any worker exists, so that "address in use" or "permission
denied" is one clear error at start-up and the workers simply inherit the sockets.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass

__all__ = [
    "Address",
    "BindError",
    "parse_address",
    "bind",
    "bind_all",
    "systemd_sockets",
    "close_all",
    "v6only",
    "describe_listener",
]

DEFAULT_PORT = 8000
SD_LISTEN_FDS_START = 3  # systemd passes activated sockets from fd 3 on (sd_listen_fds(3))


class BindError(OSError):
    """An address could not be bound or parsed; `str()` is one line for the user."""


@dataclass(frozen=True)
class Address:
    """A parsed bind address: exactly one of (host, port), path or fd is set."""

    family: socket.AddressFamily
    host: str | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None

    def __str__(self) -> str:
        if self.fd is not None:
            return f"fd://{self.fd}"
        if self.path is not None:
            return f"unix:{self.path}"
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """`HOST:PORT`, `[IPv6]:PORT`, `HOST` (port 8000), `:PORT`, `unix:PATH` or `fd://N`."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise BindError(f"bad bind address {text!r}: unix: needs a path, e.g. unix:/run/corral.sock")
        return Address(socket.AF_UNIX, path=path)
    if text.startswith("fd://"):
        try:
            fd = int(text[len("fd://") :])
        except ValueError:
            raise BindError(f"bad bind address {text!r}: fd:// needs a file descriptor number, e.g. fd://3") from None
        if fd < 0:
            raise BindError(f"bad bind address {text!r}: file descriptors are >= 0")
        return Address(_fd_family(fd, text), fd=fd)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BindError(f"bad bind address {text!r}: write IPv6 addresses as [::1]:8000")
        return Address(socket.AF_INET6, host=host, port=_port(rest[1:] if rest else "", text))
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if ":" in host:
        raise BindError(f"bad bind address {text!r}: write IPv6 addresses in brackets, e.g. [::1]:8000")
    host = host or "0.0.0.0"
    family = socket.AF_INET
    if host not in ("0.0.0.0", "localhost"):
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise BindError(f"bad bind address {text!r}: cannot resolve {host!r} ({exc.strerror})") from None
        family = infos[0][0]
    return Address(family, host=host, port=_port(port, text))


def _port(text: str, address: str) -> int:
    if not text:
        return DEFAULT_PORT
    try:
        port = int(text)
    except ValueError:
        raise BindError(f"bad bind address {address!r}: port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise BindError(f"bad bind address {address!r}: port {port} is out of range 0-65535")
    return port


def _fd_family(fd: int, text: str) -> socket.AddressFamily:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        raise BindError(f"bad bind address {text!r}: fd {fd} is not an open socket ({exc.strerror})") from None
    try:
        return socket.AddressFamily(sock.family)
    finally:
        sock.close()


def is_unspecified(address: Address) -> bool:
    """`[::]`: every IPv6 address (and, dual-stack, every IPv4 one)."""
    if address.family != socket.AF_INET6 or address.host is None:
        return False
    try:
        return ipaddress.ip_address(address.host.partition("%")[0]).is_unspecified
    except ValueError:
        return False


def v6only(address: Address, others: list[Address]) -> bool:
    """Whether the IPv6 socket for `address` takes IPv6 connections only.

    `[::]` is dual-stack, as gunicorn's (which leaves the kernel's default, net.ipv6.bindv6only=0): IPv4
    clients reach it as ::ffff:a.b.c.d, so `-b [::]:8000` answers health probes on 127.0.0.1 too. The one
    exception: an IPv4 address on the same port in the same bind list (`-b 0.0.0.0:8000 -b [::]:8000`, the
    other common spelling of "both families"), which a dual-stack socket would collide with. Any other IPv6
    address ([::1], a host's own address) is IPv6 only."""
    if not is_unspecified(address):
        return True
    return any(other.family == socket.AF_INET and other.port == address.port for other in others)


def bind(
    address: Address,
    backlog: int = 2048,
    reuse_port: bool = False,
    umask: int | None = None,
    v6_only: bool | None = None,
) -> socket.socket:
    """A listening, non-blocking socket for `address` (an fd:// address is adopted, not bound).

    `umask` is the mode mask of a unix socket's file (gunicorn's --umask: 0 by default, so the socket is
    0777 and a proxy running as another user can connect); `v6_only` overrides `v6only()`'s rule for
    `[::]` (None: dual-stack)."""
    if address.fd is not None:
        sock = socket.socket(fileno=address.fd)
        if sock.type != socket.SOCK_STREAM:
            raise BindError(f"cannot listen on {address}: not a stream socket")
        sock.listen(backlog)
        sock.setblocking(False)
        return sock
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        if address.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if address.family == socket.AF_INET6:
                only = v6only(address, []) if v6_only is None else v6_only
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if only else 0)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((address.host, address.port))
        else:
            assert address.path is not None  # parse_address: an address without a port is a path
            _remove_stale_unix_socket(address.path)
            old_umask = os.umask(umask) if umask is not None else None
            try:
                sock.bind(address.path)
            finally:
                if old_umask is not None:
                    os.umask(old_umask)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno, _bind_message(address, exc)) from None
    sock.setblocking(False)
    return sock


def _bind_message(address: Address, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot bind {address}: address already in use "
            "(another server is listening there; pick another port with -b)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = (
            "ports below 1024 need root or CAP_NET_BIND_SERVICE"
            if address.port is not None
            else "check the folder's permissions"
        )
        return f"cannot bind {address}: permission denied ({hint})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind {address}: address not available on this machine"
    return f"cannot bind {address}: {exc.strerror or exc}"


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to take over a live one or a non-socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a leftover from a server that died
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use")


def systemd_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_PID/LISTEN_FDS), or [] when there are none."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    # Consumed: children must not believe these were meant for them.
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    return sockets


def bind_all(
    addresses: list[str], backlog: int = 2048, reuse_port: bool = False, umask: int | None = None
) -> list[socket.socket]:
    """Bind every address or none: on the first failure the ones already bound are closed."""
    parsed = [parse_address(text) for text in addresses]
    sockets: list[socket.socket] = []
    try:
        for address in parsed:
            sockets.append(bind(address, backlog, reuse_port, umask, v6only(address, parsed)))  # noqa: PERF401 - kept as bound, for the cleanup below
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def close_all(sockets: list[socket.socket], unlink: bool = False) -> None:
    """Close sockets; with `unlink`, remove the files of the unix sockets we bound."""
    for sock in sockets:
        path = None
        if unlink and sock.family == socket.AF_UNIX:
            try:
                path = sock.getsockname()
            except OSError:
                path = None
        sock.close()
        if path and isinstance(path, str):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def describe_listener(sock: socket.socket) -> str:
    """A listening socket as a log shows it: http://host:port, unix:path or fd N."""
    try:
        name = sock.getsockname()
    except OSError as exc:
        return f"fd {sock.fileno()} ({exc.strerror or exc})"
    if isinstance(name, str):
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"
