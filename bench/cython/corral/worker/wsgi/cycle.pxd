# Cython declarations for bench.compiled (the compiled hot path prototype); see call.pxd.
from corral.worker.wsgi.call cimport WsgiCall

cdef class WsgiCycle(WsgiCall):
    pass
