# Cython declarations for bench.compiled (the compiled hot path prototype).
from corral.worker.http1.protocol cimport HttpProtocol

cdef class WsgiHttpProtocol(HttpProtocol):
    cdef public object out_fd, out_busy
