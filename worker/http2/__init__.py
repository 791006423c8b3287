"""HTTP/2: told apart from HTTP/1.1 at a connection's start, then served by corral's own state machine.

It owns detecting it (`detect`: ALPN `h2`, the h2c preface, `Upgrade: h2c`; the HTTP/1.1 protocol
subclass that hands the transport over), the connection as a state machine apart from I/O (`machine`: the
request frames, stream states, flow control, the protocol's errors; its bases `control`: the control frames,
and `output`: the frames the server sends; `state`: its stream and settings records; `frames`: the wire
vocabulary; `fields`: HPACK and the header checks), the connection's asyncio protocol (`protocol.H2Protocol`:
the machine's listener, the pool, the defences, GOAWAY), sending (`send`: heads, DATA cut to the flow-control
windows, trailers, resets) and one stream (`stream.H2Stream`: the application's `receive` and `send`, the
inbound window). All but `detect` are imported only at a worker's first HTTP/2 connection.

May import: `corral.worker.http1` (the protocol it detects from; the scope's pieces),
`corral.worker.edge`, `corral.worker.app`, `corral.worker.conn`, `corral.shared`.
"""
