"""Which HTTP version a connection speaks (`--http`): the HTTP/1.1 protocol, with HTTP/2 recognised first.

HTTP/2 is chosen once per connection, before any HTTP/1.1 parsing: by ALPN on TLS (`h2`; RFC 9113 §3.2),
or on cleartext by the client preface `PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n` (h2c with prior knowledge,
§3.3) - the HTTP/1.1 parser would answer it 505. The connection then hands its transport to an
`H2Protocol` (`transport.set_protocol`, as WebSocket does), which is imported only then: a worker that
never sees an HTTP/2 client never imports the HTTP/2 modules.

A subclass in the server's protocol-class chain (chosen once per server, like worker/serve/health.py's):
under the PROXY protocol one (the PROXY header comes first), over the metrics and health ones. It looks at
the first read only: a connection found to speak HTTP/1.1 then becomes an instance of the class below it
(`__class__` assignment; same slots), so that its requests pay nothing here, and is handed to its transport
again (`set_protocol`), so that its reads pay nothing either (the event loop keeps the bound `data_received`
it took when the connection opened).

HTTP/1.1's `Upgrade: h2c` (RFC 7540 §3.2; `curl --http2 http://...`) is served on cleartext for a request
without a body: `101 Switching Protocols`, and the request is answered as stream 1 of the HTTP/2 connection.
A request with a body (or any over TLS, where ALPN decides) is answered over HTTP/1.1 as if the header were
absent, which RFC 7540 allows.

`--http 2` on cleartext is h2c with prior knowledge only: a connection that does not open with the preface
is not HTTP/2, and gets what an HTTP/2 endpoint answers an invalid preface with (RFC 9113 §3.4: a connection
error of type PROTOCOL_ERROR) - the server's preface and GOAWAY, then the close. Under `--http auto` such
bytes are an HTTP/1.1 request (answered 400 when they are not one either).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from corral.worker.conn.phases import CLOSED, FRESH
from corral.worker.http1.cycle import RequestCycle
from corral.worker.http1.protocol import HttpProtocol

if TYPE_CHECKING:
    from corral.shared.settings import Settings

__all__ = ["h2_protocol", "PREFACE", "alpn_protocols"]

logger = logging.getLogger("corral.error")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
# The answer of an HTTP/2-only connection to an invalid preface, framed here (the HTTP/2 connection's modules are
# not imported for it): the server preface (an empty SETTINGS frame), then GOAWAY (last stream 0, PROTOCOL_ERROR,
# debug data saying why).
_WHY = b"invalid connection preface"
BAD_PREFACE = (
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS: length 0, type 4, no flags, stream 0
    + (8 + len(_WHY)).to_bytes(3, "big")
    + b"\x07\x00\x00\x00\x00\x00"  # GOAWAY: type 7, no flags, stream 0
    + b"\x00\x00\x00\x00\x00\x00\x00\x01"
    + _WHY  # last stream 0, PROTOCOL_ERROR (1)
)


def h2c_upgrade(scope: dict) -> bytes | None:
    """The HTTP2-Settings of a request asking for `Upgrade: h2c` (RFC 7540 §3.2), else None."""
    upgrade = settings = None
    for name, value in scope["headers"]:
        if name == b"upgrade":
            upgrade = value
        elif name == b"http2-settings":
            settings = value
        elif (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
            return None  # a body: llhttp hands what follows the head over as upgrade bytes, not as body
    if upgrade is None or settings is None or scope["http_version"] != "1.1":
        return None
    if b"h2c" not in [token.strip().lower() for token in upgrade.split(b",")]:
        return None
    return settings


def alpn_protocols(http: str) -> list[str]:
    """The ALPN protocols a TLS listener offers for `--http`."""
    return {"1": ["http/1.1"], "2": ["h2"]}.get(http, ["h2", "http/1.1"])


def h2_protocol(base: type[HttpProtocol], settings: Settings) -> type[HttpProtocol]:
    """`base` that turns into HTTP/2 when the client speaks it (`settings.http` 'auto' or '2')."""
    only = settings.http == "2"
    made: list[Any] = []  # (H2Protocol, H2Limits): imported and built at the first HTTP/2 connection

    def switch(http1: HttpProtocol, data: bytes, upgrade: tuple[bytes, dict[str, Any]] | None = None) -> None:
        if not made:
            from corral.worker.http2.protocol import H2Limits, H2Protocol

            made[:] = (H2Protocol, H2Limits.from_settings(settings))
        protocol_class, limits = made
        transport = http1.transport
        server = http1.server
        h2 = protocol_class(http1, limits)
        # The HTTP/1.1 protocol is done: it leaves the server's connections, its parser is released.
        http1.phase = CLOSED
        server.connections.discard(http1)
        if http1.state is not None:
            http1.state.release()
        transport.set_protocol(h2)
        server.connections.add(h2)
        h2.connection_made(transport, upgrade)
        if data:
            h2.data_received(data)

    def upgrade(http1: HttpProtocol, cycle: RequestCycle, settings_header: bytes) -> None:
        """After the parse that started `cycle`: answer 101 and hand its request to HTTP/2 as stream 1."""
        if http1.phase == CLOSED or cycle.disconnected:
            return
        http1.transport.write(SWITCHING)
        switch(http1, b"", (settings_header, cycle.scope))

    def become_http1(http1: Any) -> None:
        """The connection speaks HTTP/1.1: it becomes a `base`, and its transport is handed it again so that
        the event loop drops the `data_received` bound at the start (uvloop keeps the bound method): its
        later reads no longer pass through `H2Detect.data_received`."""
        http1.__class__ = base
        http1.transport.set_protocol(http1)

    class H2Detect(base):  # type: ignore[valid-type, misc]  # a class per base: mypy takes no variable for one
        # No slot of its own: once a connection is known to speak HTTP/1.1 it becomes a `base` (the same
        # layout), and its later reads and requests cost nothing here. (mypy, which sees no base, would take
        # the empty slots for all there are.)
        if not TYPE_CHECKING:
            __slots__ = ()
        pending_error: bytes | None

        # `base.method(self, ...)`, never `super()`: the instance may have become a `base` meanwhile, and the
        # event loop keeps the bound `data_received` it took at the start.

        def connection_made(self, transport: Any) -> None:
            base.connection_made(self, transport)
            if self.server.ssl_context is None or self.phase == CLOSED:
                return
            # TLS: ALPN decides (prior knowledge is for cleartext only, RFC 9113 §3.3).
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if alpn == "h2":
                switch(self, b"")
            elif only:
                self.close()  # a client without h2 (ALPN offers only h2: it normally fails the handshake)
            elif type(self) is H2Detect:
                become_http1(self)

        def data_received(self, data: bytes) -> None:
            if self.phase != FRESH:  # decided: HTTP/1.1
                base.data_received(self, data)
                return
            # Nothing is parsed while the connection is FRESH, so `pending_error` (an error response waiting
            # behind earlier responses) is free: it keeps a piece of what may be the preface.
            partial = self.pending_error
            if partial:
                self.pending_error = None
                data = partial + data
            if data.startswith(PREFACE):
                switch(self, data)
            elif PREFACE.startswith(data):
                self.pending_error = data  # a piece of the preface (or of "POST"...): wait for more
            elif only:
                logger.info(
                    "Not an HTTP/2 connection preface from %s: GOAWAY PROTOCOL_ERROR",
                    self.client[0] if self.client else "unix socket",
                )
                self.transport.write(BAD_PREFACE)
                self.close()
            else:
                base.data_received(self, data)  # the first requests: an `Upgrade: h2c` among them is seen
                if type(self) is H2Detect and self.phase != CLOSED and self.ready is None:
                    become_http1(self)  # (a request to begin: begin_request decides, at the end of the turn)

        def begin_request(self, cycle: Any) -> None:
            if type(cycle) is RequestCycle and self.server.ssl_context is None and cycle.scope["headers"]:
                settings_header = h2c_upgrade(cycle.scope)
                if settings_header is not None:
                    # (begun at the end of the loop's turn, WorkerServer.begin_soon): switch in a callback of its own.
                    asyncio.get_running_loop().call_soon(upgrade, self, cycle, settings_header)
                    return
            if type(self) is H2Detect:
                become_http1(self)  # its first request is plain HTTP/1.1
            base.begin_request(self, cycle)

    H2Detect.__name__ = H2Detect.__qualname__ = "H2" + base.__name__
    return H2Detect
