# Cython declarations for bench.compiled (the compiled hot path prototype): the ASGI request.

cdef class RequestCycle:
    cdef public object protocol, scope, keep_alive, expect_continue, is_head, http11, body, body_complete
    cdef public object delivered, disconnected, waiter, state, status, headers, writer, remaining, t0, nbytes
