/* corral.worker.conn._response: an HTTP/1.1 response head in one call.

   head(status, headers, default_headers, keep_alive, http11, head_request, body_length) does what
   `response_head` does (corral/worker/conn/response.py: the same head bytes, framing mode and keep-alive) for
   the responses most applications send, and hands any other to the Python function with the same arguments,
   which encodes it (and, where it is wrong, refuses it with its own message). `setup(status_lines, fallback)`
   gives it the prepared status lines and that function, once, at import; it then stands in for the function
   (response.py binds `response_head` to it), at no cost of a call in Python. It takes:

   - `status` an int found in `status_lines` (code -> "HTTP/1.1 200 OK\r\n");
   - `headers` a list or tuple of 2-tuples of bytes, none holding CR or LF, with no Transfer-Encoding field
     and at most one Content-Length of digits (whitespace around them allowed, at most 18 of them);
   - `body_length` None or an int >= 0.

   Each field is written `name: value\r\n` as given. A Content-Length field gives the framing; a Connection
   field holding "close" (any case) closes the connection after the response. The rest is RFC 9112 §6.3 and
   §7.1 as `response_head` says it: no body for 1xx, 204, 304 and HEAD (a HEAD response declares the GET's
   length when the application gave none); otherwise the declared length, else `body_length` (the whole
   body was given at once), else chunked for HTTP/1.1, else close-delimited (HTTP/1.0).

   Why C: about 0.35 µs a response in Python (validating, deciding and joining), a tenth of that here.
   CORRAL_NO_EXTENSIONS=1 leaves the Python function (CI runs the whole suite both ways). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* response.py's framing modes */
#define NO_BODY -1
#define CHUNKED -2
#define CLOSE_DELIMITED -3

static PyObject *STATUS_LINES; /* setup()'s */
static PyObject *FALLBACK;

static int has_crlf(const char *s, Py_ssize_t n) {
    return memchr(s, '\r', (size_t)n) != NULL || memchr(s, '\n', (size_t)n) != NULL;
}

static int name_is(const char *name, Py_ssize_t n, const char *lower) {
    Py_ssize_t len = (Py_ssize_t)strlen(lower);
    if (n != len) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c + 32);
        }
        if (c != lower[i]) {
            return 0;
        }
    }
    return 1;
}

/* "close" anywhere in the value, any case (Python: b"close" in value.lower()). */
static int says_close(const char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i + 5 <= n; i++) {
        if (name_is(s + i, 5, "close")) {
            return 1;
        }
    }
    return 0;
}

static int is_space(char c) {
    /* bytes.strip()'s whitespace */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* A Content-Length value: its digits (whitespace around them allowed), or -1. */
static long long declared_length(const char *s, Py_ssize_t n) {
    Py_ssize_t start = 0, end = n;
    while (start < end && is_space(s[start])) {
        start++;
    }
    while (end > start && is_space(s[end - 1])) {
        end--;
    }
    if (end == start || end - start > 18) {
        return -1;
    }
    long long value = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        value = value * 10 + (s[i] - '0');
    }
    return value;
}

static int append(char **out, const char *s, Py_ssize_t n) {
    memcpy(*out, s, (size_t)n);
    *out += n;
    return 0;
}

static PyObject *encode(PyObject *const *args);

static PyObject *head(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (FALLBACK == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "corral.worker.conn._response.setup() was not called");
        return NULL;
    }
    if (nargs == 7) {
        PyObject *made = encode(args);
        if (made != Py_None) {
            return made; /* the head, or NULL with an error set */
        }
        Py_DECREF(made);
    }
    return PyObject_Vectorcall(FALLBACK, args, (size_t)nargs, NULL); /* any other response, or other arguments */
}

/* The head of a response of the common shape (a new tuple), or None (a new reference) for any other. */
static PyObject *encode(PyObject *const *args) {
    PyObject *status_object = args[0], *headers = args[1], *defaults = args[2];
    PyObject *length_object = args[6];
    if (!PyLong_CheckExact(status_object) || !PyBytes_CheckExact(defaults) ||
        (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers)) ||
        (length_object != Py_None && !PyLong_CheckExact(length_object))) {
        Py_RETURN_NONE;
    }
    /* The flags first: their truth may run Python code (a __bool__), which could replace the status lines
       (setup()); nothing below runs any, so the borrowed dict and line stay valid. */
    int keep_alive = PyObject_IsTrue(args[3]), http11 = PyObject_IsTrue(args[4]), head_request = PyObject_IsTrue(args[5]);
    if (keep_alive < 0 || http11 < 0 || head_request < 0) {
        return NULL;
    }
    PyObject *lines = STATUS_LINES; /* (read after the flags: see above) */
    PyObject *line = PyDict_CheckExact(lines) ? PyDict_GetItemWithError(lines, status_object) : NULL; /* borrowed */
    if (line == NULL || !PyBytes_CheckExact(line)) {
        PyErr_Clear();
        Py_RETURN_NONE; /* a status without a prepared line: the Python way (which checks it) */
    }
    long status = PyLong_AsLong(status_object);
    long long body_length = -1;
    if (length_object != Py_None) {
        body_length = PyLong_AsLongLong(length_object);
        if (body_length < 0) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    /* The fields: checked, measured. */
    Py_ssize_t count = PySequence_Fast_GET_SIZE(headers);
    PyObject **items = PySequence_Fast_ITEMS(headers);
    Py_ssize_t size = PyBytes_GET_SIZE(line) + PyBytes_GET_SIZE(defaults) + 2;
    long long content_length = -1;
    int app_close = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_RETURN_NONE;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (!PyBytes_CheckExact(name) || !PyBytes_CheckExact(value)) {
            Py_RETURN_NONE;
        }
        const char *n = PyBytes_AS_STRING(name), *v = PyBytes_AS_STRING(value);
        Py_ssize_t nn = PyBytes_GET_SIZE(name), vn = PyBytes_GET_SIZE(value);
        if (has_crlf(n, nn) || has_crlf(v, vn)) {
            Py_RETURN_NONE; /* header injection: the Python way refuses it with its message */
        }
        if (nn == 14 && name_is(n, nn, "content-length")) {
            if (content_length >= 0 || (content_length = declared_length(v, vn)) < 0) {
                Py_RETURN_NONE;
            }
        } else if (nn == 10 && name_is(n, nn, "connection")) {
            app_close |= says_close(v, vn);
        } else if (nn == 17 && name_is(n, nn, "transfer-encoding")) {
            Py_RETURN_NONE;
        }
        size += nn + vn + 4;
    }
    /* The framing (response_head's decisions, in its order). */
    char extra[64];
    int extra_n = 0;
    long long mode;
    if (app_close) {
        keep_alive = 0;
    }
    if (status < 200 || status == 204 || status == 304) {
        mode = NO_BODY;
    } else if (head_request) {
        mode = NO_BODY;
        if (content_length < 0 && body_length >= 0) {
            extra_n = snprintf(extra, sizeof extra, "content-length: %lld\r\n", body_length);
        }
    } else if (content_length >= 0) {
        mode = content_length;
    } else if (body_length >= 0) {
        mode = body_length;
        extra_n = snprintf(extra, sizeof extra, "content-length: %lld\r\n", body_length);
    } else if (http11) {
        mode = CHUNKED;
        extra_n = snprintf(extra, sizeof extra, "transfer-encoding: chunked\r\n");
    } else {
        mode = CLOSE_DELIMITED;
    }
    if (mode == CLOSE_DELIMITED) {
        keep_alive = 0;
    }
    const char *connection = NULL;
    if (!keep_alive) {
        if (!app_close) {
            connection = "connection: close\r\n";
        }
    } else if (!http11) {
        connection = "connection: keep-alive\r\n";
    }
    size += extra_n + (connection != NULL ? (Py_ssize_t)strlen(connection) : 0);
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(result);
    append(&out, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line));
    append(&out, PyBytes_AS_STRING(defaults), PyBytes_GET_SIZE(defaults));
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyTuple_GET_ITEM(items[i], 0), *value = PyTuple_GET_ITEM(items[i], 1);
        append(&out, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        append(&out, ": ", 2);
        append(&out, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        append(&out, "\r\n", 2);
    }
    append(&out, extra, extra_n);
    if (connection != NULL) {
        append(&out, connection, (Py_ssize_t)strlen(connection));
    }
    append(&out, "\r\n", 2);
    PyObject *mode_object = PyLong_FromLongLong(mode);
    if (mode_object == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    PyObject *tuple = PyTuple_New(3);
    if (tuple == NULL) {
        Py_DECREF(result);
        Py_DECREF(mode_object);
        return NULL;
    }
    PyTuple_SET_ITEM(tuple, 0, result);
    PyTuple_SET_ITEM(tuple, 1, mode_object);
    PyObject *keep = keep_alive ? Py_True : Py_False;
    Py_INCREF(keep);
    PyTuple_SET_ITEM(tuple, 2, keep);
    return tuple;
}

static PyObject *setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "setup(status_lines: dict, fallback: callable)");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(STATUS_LINES, args[0]);
    Py_XSETREF(FALLBACK, args[1]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"head", (PyCFunction)(void (*)(void))head, METH_FASTCALL,
     "head(status, headers, default_headers, keep_alive, http11, head_request, body_length) -> "
     "(head, mode, keep_alive): an HTTP/1.1 response head as response_head makes it (see the module's "
     "source); a response of another shape is response_head's own (setup's fallback)."},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "setup(status_lines, fallback): the prepared status lines, and the function for other responses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_response", "An HTTP/1.1 response head in one call.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__response(void) {
    return PyModule_Create(&module_def);
}
