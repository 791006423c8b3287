# Cython declarations for bench.compiled (the compiled hot path prototype): the pool's per-request record.

cdef class ApplicationInstance:
    cdef public object server, scope_id, scope, input_queue, future, last_used
