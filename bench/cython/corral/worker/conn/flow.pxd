# Cython declarations for bench.compiled (the compiled hot path prototype).

cdef class FlowControl:
    cdef public object transport, read_paused, write_paused, _drain
