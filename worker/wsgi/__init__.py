"""WSGI served natively: a WSGI application called on a thread, without the ASGI adapter.

It owns the request on the event loop (`cycle.WsgiCycle`: the body pre-read, parking, writing what the
thread framed), the request on its thread (`call.WsgiCall`: the environ, `start_response`, the response
framed into bytes, `wsgi.file_wrapper`), a streamed `wsgi.input` (`input`), the threads that run requests
(`threads.WorkerThreads`), `--request-timeout` and the pre/post_request hooks for WSGI (`layers`), and
the HTTP/1.1 protocol that makes WsgiCycles (`protocol`). The environ itself is built by
`corral.shared.wsgi_environ`, one builder for this path and for `WsgiToAsgi`.

May import: `corral.worker.http1` (the protocol and the framing it rides on), `corral.worker.edge`,
`corral.worker.app`, `corral.worker.conn`, `corral.shared`.
"""
