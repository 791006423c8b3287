# Cython declarations for bench.compiled (the compiled hot path prototype): worker/http1/connection.py stays the source
# and the pure-Python fallback. The parser callbacks read and write these per header field: C fields, not slots.

cdef class HTTP11Connection:
    cdef public object handler, parser
    cdef public Py_ssize_t limit_line, limit_fields, limit_head, limit_body, max_requests, max_pipeline, min_chunk
    cdef public Py_ssize_t head_cap, header_size, content_length, chunks, body_left, upgrade_body
    cdef public bytes url, last_host, backlog
    cdef public list headers
    cdef public object te, host, upgrade_request, request, last, active, pipeline, error
    cdef public bint expect, in_head, must_close, client_close, upgraded
    cdef public Py_ssize_t head_bytes, completed, body_size, requests
    cdef public object head_parts, chunked, method, sizes
    cdef public bint content_type, fallback, native_chunked, forwarded, after_close
    cdef public bytes whole
    cdef public Py_ssize_t sole, first_size
