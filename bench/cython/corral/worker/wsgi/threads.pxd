# Cython declarations for bench.compiled (the compiled hot path prototype).

cdef class WorkerThreads:
    cdef public object size, jobs, lock, idle, threads, closed, name, stuck, waiting, aside, surplus
