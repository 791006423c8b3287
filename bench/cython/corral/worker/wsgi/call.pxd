# Cython declarations for bench.compiled (the compiled hot path prototype): worker/wsgi/call.py stays the source and
# the pure-Python fallback. Every attribute of a request lives here, in WsgiCall (WsgiCycle's __slots__ in
# Python), so that both halves of a request read them as C struct fields.

cdef class WsgiCall:
    cdef public object protocol, _scope, parsed, app, outbox, input, body, t0, headers, chunks
    cdef public object cond, sendfile, result, instance_future, instance, timed_out
    cdef public object keep_alive, expect_continue, is_head, http11, body_complete, disconnected
    cdef public object head_sent, aborted, posted
    cdef public object state, status, nbytes, body_size, phase, mode, remaining, pending, outcome
    cdef object __weakref__
