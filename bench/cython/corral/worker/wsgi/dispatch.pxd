# Cython declarations for bench.compiled (the compiled hot path prototype); see call.pxd.

cdef class WsgiDispatcher:
    cdef public object app, loop, threads, lock, items, scheduled, body_buffer, per_connection, lazy
    cdef public object body_input, deadline, hooks, inline, direct, prototype
