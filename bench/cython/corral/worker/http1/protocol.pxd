# Cython declarations for bench.compiled (the compiled hot path prototype): worker/http1/protocol.py stays the source.
# An extension type cannot derive from a Python class: bench.compiled stages HttpProtocol deriving from object
# (asyncio needs only its methods).

cdef class HttpProtocol:
    cdef public object server, transport, flow, state, client, sockname, scheme, phase, since
    cdef public object pending_error, trusted, extensions, rate, ready, served
    cdef object __weakref__
