/* corral.shared._environ: a request's header fields into its WSGI environ, in one call.

   fill_headers(environ, headers, keys, key_of, limit, too_many) does what `build_environ`'s loop over the
   headers does (corral/shared/wsgi_environ.py), and returns True; or returns False, having changed nothing,
   when `headers` is not a list or tuple of 2-tuples of bytes (the loop in Python then runs, and says what is
   wrong with them as it always has):

   - each name's environ key comes from the dict `keys` (name -> "HTTP_..." / "CONTENT_TYPE" /
     "CONTENT_LENGTH", or None for a name to drop), and from `key_of(name)` for a name not in it yet (which
     also remembers it there);
   - each value is decoded as latin-1 (PEP 3333);
   - a key that is there already is joined: "; " for HTTP_COOKIE, "," for any other; past `limit` repeats of
     one key (0: no limit) `too_many(message)` is raised, with the loop's message.

   build(template, scope, ...) makes the whole environ of an http scope of the common shape, and
   build_parsed(template, parsed, ...) the same environ from what the compiled request parser returned, for a
   request whose scope is not made (see their comments below).

   Why C: a browser's request has ten or so fields, and the loop costs about 0.2 µs a field in Python.
   CORRAL_NO_EXTENSIONS=1 leaves the Python loop (CI runs the whole suite both ways). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *COOKIE_KEY;
static PyObject *COOKIE_SEP;
static PyObject *COMMA_SEP;
/* scope keys, environ keys and values `build` uses */
static PyObject *S_ROOT_PATH, *S_PATH, *S_METHOD, *S_QUERY_STRING, *S_HTTP_VERSION, *S_SCHEME, *S_SERVER, *S_CLIENT,
    *S_HEADERS;
static PyObject *K_REQUEST_METHOD, *K_PATH_INFO, *K_QUERY_STRING, *K_SERVER_PROTOCOL, *K_URL_SCHEME, *K_INPUT,
    *K_ERRORS, *K_SERVER_NAME, *K_SERVER_PORT, *K_REMOTE_ADDR, *K_REMOTE_PORT, *K_SCRIPT_NAME;
static PyObject *V_11, *V_HTTP, *V_HTTP_SLASH, *V_HTTP10, *V_ZERO, *EMPTY, *K_STDERR, *SYS, *SYS_DICT;

/* Whether `headers` is a list or tuple of 2-tuples of exact bytes. */
static int well_formed(PyObject *headers) {
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers)) {
        return 0;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    PyObject **items = PySequence_Fast_ITEMS(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            return 0;
        }
    }
    return 1;
}

/* The header loop proper (`headers` well formed, `limit` >= 0): 0, or -1 with an exception set. */
static int fill(PyObject *environ, PyObject *headers, PyObject *keys, PyObject *key_of, Py_ssize_t limit,
                PyObject *too_many) {
    /* `headers` is held here, and each pair while its field is filled (below). */
    Py_INCREF(headers);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    PyObject *repeats = NULL; /* key -> count, made at the first repeat */
    for (Py_ssize_t i = 0; i < n && i < PySequence_Fast_GET_SIZE(headers); i++) {
        /* The pair is held for the field: key_of runs Python code, which must not be able to free it. */
        PyObject *pair = PySequence_Fast_ITEMS(headers)[i];
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_RuntimeError, "the header list changed while the environ was filled");
            goto error; /* only a key_of that edits the list gets here */
        }
        Py_INCREF(pair);
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        PyObject *raw = PyTuple_GET_ITEM(pair, 1);
        PyObject *owned = NULL; /* the key, when key_of made it (a new name) */
        PyObject *key = PyDict_GetItemWithError(keys, name); /* borrowed: `keys` only ever grows */
        if (key == NULL) {
            if (PyErr_Occurred()) {
                goto field_error;
            }
            key = owned = PyObject_CallOneArg(key_of, name);
            if (key == NULL) {
                goto field_error;
            }
        }
        if (key == Py_None) {
            Py_XDECREF(owned);
            Py_DECREF(pair);
            continue; /* a name with "_": dropped */
        }
        PyObject *value = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), NULL);
        if (value == NULL) {
            goto field_error;
        }
        PyObject *existing = PyDict_GetItemWithError(environ, key); /* borrowed */
        if (existing == NULL) {
            int failed = PyErr_Occurred() ? -1 : PyDict_SetItem(environ, key, value);
            Py_DECREF(value);
            if (failed) {
                goto field_error;
            }
            Py_XDECREF(owned);
            Py_DECREF(pair);
            continue;
        }
        /* A repeat: counted per key, joined to what is there. */
        if (repeats == NULL && (repeats = PyDict_New()) == NULL) {
            Py_DECREF(value);
            goto field_error;
        }
        PyObject *seen = PyDict_GetItemWithError(repeats, key);
        Py_ssize_t count = 2;
        if (seen != NULL) {
            count = PyLong_AsSsize_t(seen) + 1;
        } else if (PyErr_Occurred()) {
            Py_DECREF(value);
            goto field_error;
        }
        PyObject *count_object = PyLong_FromSsize_t(count);
        if (count_object == NULL || PyDict_SetItem(repeats, key, count_object) < 0) {
            Py_XDECREF(count_object);
            Py_DECREF(value);
            goto field_error;
        }
        Py_DECREF(count_object);
        if (limit && count > limit) {
            Py_DECREF(value);
            PyObject *message =
                PyUnicode_FromFormat("Too many duplicate headers: %U exceeds limit of %zd", key, limit);
            if (message != NULL) {
                PyErr_SetObject(too_many, message);
                Py_DECREF(message);
            }
            goto field_error;
        }
        Py_INCREF(existing);
        PyObject *sep = PyUnicode_Compare(key, COOKIE_KEY) == 0 ? COOKIE_SEP : COMMA_SEP;
        PyObject *joined = PyUnicode_Concat(existing, sep);
        Py_DECREF(existing);
        PyObject *whole = joined == NULL ? NULL : PyUnicode_Concat(joined, value);
        Py_XDECREF(joined);
        Py_DECREF(value);
        int failed = whole == NULL ? -1 : PyDict_SetItem(environ, key, whole);
        Py_XDECREF(whole);
        if (failed) {
            goto field_error;
        }
        Py_XDECREF(owned);
        Py_DECREF(pair);
        continue;
    field_error:
        Py_XDECREF(owned);
        Py_DECREF(pair);
        goto error;
    }
    Py_XDECREF(repeats);
    Py_DECREF(headers);
    return 0;
error:
    Py_XDECREF(repeats);
    Py_DECREF(headers);
    return -1;
}

static PyObject *fill_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "fill_headers(environ, headers, keys, key_of, limit, too_many)");
        return NULL;
    }
    PyObject *environ = args[0], *headers = args[1], *keys = args[2], *key_of = args[3], *too_many = args[5];
    if (!PyLong_CheckExact(args[4]) || !PyDict_CheckExact(environ) || !PyDict_CheckExact(keys) ||
        !well_formed(headers)) {
        Py_RETURN_FALSE; /* a limit that is no plain int (a float, True): the Python loop's to compare */
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[4]);
    if (limit == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_FALSE; /* beyond Py_ssize_t: as good as none, which the Python loop says the same way */
    }
    if (fill(environ, headers, keys, key_of, limit, too_many) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}


/* The text of a port number, from `ports` (int -> str, filled here up to PORTS_MAX entries); a new reference. */
#define PORTS_MAX 4096
static PyObject *port_text(PyObject *ports, PyObject *port) {
    PyObject *text = PyDict_GetItemWithError(ports, port);
    if (text != NULL) {
        Py_INCREF(text);
        return text;
    }
    if (PyErr_Occurred() || (text = PyObject_Str(port)) == NULL) {
        return NULL;
    }
    if (PyDict_GET_SIZE(ports) < PORTS_MAX && PyDict_SetItem(ports, port, text) < 0) {
        Py_DECREF(text);
        return NULL;
    }
    return text;
}

/* An address pair of the scope (`server`, `client`) into the environ: 1 done, 0 not of the common shape (a
   tuple of two whose port is an int or None), -1 error. `none_port`: the port's text when it is None (NULL:
   no key then). */
static int address(PyObject *environ, PyObject *pair, PyObject *host_key, PyObject *port_key, PyObject *none_port,
                   PyObject *ports) {
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
        return 0;
    }
    PyObject *port = PyTuple_GET_ITEM(pair, 1);
    if (port != Py_None && !PyLong_CheckExact(port)) {
        return 0;
    }
    if (PyDict_SetItem(environ, host_key, PyTuple_GET_ITEM(pair, 0)) < 0) {
        return -1;
    }
    if (port == Py_None) {
        return none_port == NULL || PyDict_SetItem(environ, port_key, none_port) == 0 ? 1 : -1;
    }
    PyObject *text = port_text(ports, port);
    int failed = text == NULL ? -1 : PyDict_SetItem(environ, port_key, text);
    Py_XDECREF(text);
    return failed < 0 ? -1 : 1;
}

/* A scope's key: borrowed, NULL when missing (-1 in *error when the lookup failed). */
static PyObject *get(PyObject *scope, PyObject *key, int *error) {
    PyObject *value = PyDict_GetItemWithError(scope, key);
    if (value == NULL && PyErr_Occurred()) {
        *error = 1;
    }
    return value;
}

static int is_text(PyObject *value, PyObject *text) {
    return PyUnicode_CheckExact(value) && PyUnicode_Compare(value, text) == 0;
}

/* Whether the template's wsgi.errors is still sys.stderr (it is replaced in a test, a daemon: the Python way then
   gives the new one). */
static int errors_current(PyObject *template) {
    /* sys.stderr, from the module's dict: PySys_GetObject makes a str of its C name each call (about 700
       instructions), the module's getattr goes through its generic lookup (about 400). Borrowed: compared by
       identity only. */
    PyObject *stderr_now = PyDict_GetItemWithError(SYS_DICT, K_STDERR);
    if (stderr_now == NULL) {
        PyErr_Clear();
    }
    PyObject *errors = PyDict_GetItemWithError(template, K_ERRORS);
    if (errors == NULL) {
        PyErr_Clear();
    }
    return errors != NULL && errors == stderr_now;
}

/* The environ of a request from its values, which `build` takes from a scope and `build_parsed` from the
   parser's tuple: a copy of `template`, then each value. `query`: the query's bytes, decoded as latin-1;
   `protocol`: SERVER_PROTOCOL where it is not the template's, `scheme` (NULL: none) wsgi.url_scheme where it is
   not "http", `server` and `client` (NULL or None: none) the address pairs, `headers` (NULL: none) well formed.
   A new environ; None (a new reference) for an address not of the common shape; NULL with an exception set. */
static PyObject *assemble(PyObject *template, PyObject *method, PyObject *path, const char *query,
                          Py_ssize_t query_len, PyObject *protocol, PyObject *scheme, PyObject *server,
                          PyObject *client, PyObject *headers, PyObject *body, Py_ssize_t limit, PyObject *keys,
                          PyObject *key_of, PyObject *too_many, PyObject *ports) {
    PyObject *environ = PyDict_Copy(template);
    if (environ == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(environ, K_REQUEST_METHOD, method) < 0 || PyDict_SetItem(environ, K_PATH_INFO, path) < 0) {
        goto error;
    }
    PyObject *text = query_len == 0 ? (Py_INCREF(EMPTY), EMPTY) : PyUnicode_DecodeLatin1(query, query_len, NULL);
    if (text == NULL || PyDict_SetItem(environ, K_QUERY_STRING, text) < 0) {
        Py_XDECREF(text);
        goto error;
    }
    Py_DECREF(text);
    if (protocol != NULL && PyDict_SetItem(environ, K_SERVER_PROTOCOL, protocol) < 0) {
        goto error;
    }
    if (scheme != NULL && !is_text(scheme, V_HTTP) && PyDict_SetItem(environ, K_URL_SCHEME, scheme) < 0) {
        goto error;
    }
    if (PyDict_SetItem(environ, K_INPUT, body) < 0) {
        goto error;
    }
    int done;
    if (server != NULL && server != Py_None) {
        if ((done = address(environ, server, K_SERVER_NAME, K_SERVER_PORT, V_ZERO, ports)) <= 0) {
            goto done_or_error;
        }
    }
    if (client != NULL && client != Py_None) {
        if ((done = address(environ, client, K_REMOTE_ADDR, K_REMOTE_PORT, NULL, ports)) <= 0) {
            goto done_or_error;
        }
    }
    if (headers != NULL && fill(environ, headers, keys, key_of, limit, too_many) < 0) {
        goto error;
    }
    return environ;
done_or_error:
    Py_DECREF(environ);
    if (done == 0) {
        Py_RETURN_NONE; /* an address of another shape: the Python way */
    }
    return NULL;
error:
    Py_DECREF(environ);
    return NULL;
}

/* The duplicate-header limit: -1 (no exception set) for one that is no plain non-negative int. */
static Py_ssize_t limit_of(PyObject *value) {
    if (!PyLong_CheckExact(value)) {
        return -1;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(value);
    if (limit < 0) {
        PyErr_Clear();
        return -1;
    }
    return limit;
}

/* build(template, scope, body, limit, keys, key_of, too_many, ports): see the module's comment. */
static PyObject *build(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "build(template, scope, body, limit, keys, key_of, too_many, ports)");
        return NULL;
    }
    PyObject *template = args[0], *scope = args[1], *body = args[2], *keys = args[4], *key_of = args[5];
    PyObject *too_many = args[6], *ports = args[7];
    Py_ssize_t limit = limit_of(args[3]);
    if (!PyDict_CheckExact(template) || !PyDict_CheckExact(scope) || limit < 0 || !PyDict_CheckExact(keys) ||
        !PyDict_CheckExact(ports)) {
        Py_RETURN_NONE;
    }
    int error = 0;
    PyObject *root = get(scope, S_ROOT_PATH, &error);
    PyObject *path = get(scope, S_PATH, &error);
    PyObject *method = get(scope, S_METHOD, &error);
    PyObject *query = get(scope, S_QUERY_STRING, &error);
    PyObject *version = get(scope, S_HTTP_VERSION, &error);
    PyObject *scheme = get(scope, S_SCHEME, &error);
    PyObject *server = get(scope, S_SERVER, &error);
    PyObject *client = get(scope, S_CLIENT, &error);
    PyObject *headers = get(scope, S_HEADERS, &error);
    if (error) {
        return NULL;
    }
    if ((root != NULL && root != Py_None && !(PyUnicode_CheckExact(root) && PyUnicode_GET_LENGTH(root) == 0)) ||
        path == NULL || !PyUnicode_CheckExact(path) || !PyUnicode_IS_ASCII(path) || method == NULL ||
        (query != NULL && !PyBytes_CheckExact(query)) || (version != NULL && !PyUnicode_CheckExact(version)) ||
        (headers != NULL && !well_formed(headers)) || !errors_current(template)) {
        Py_RETURN_NONE; /* a root path to strip, a path to re-encode, stderr replaced, ...: the Python way */
    }
    PyObject *protocol = NULL;
    if (version != NULL && !is_text(version, V_11) && (protocol = PyUnicode_Concat(V_HTTP_SLASH, version)) == NULL) {
        return NULL;
    }
    PyObject *environ = assemble(template, method, path, query == NULL ? "" : PyBytes_AS_STRING(query),
                                 query == NULL ? 0 : PyBytes_GET_SIZE(query), protocol, scheme, server, client,
                                 headers, body, limit, keys, key_of, too_many, ports);
    Py_XDECREF(protocol);
    return environ;
}

/* build_parsed(template, parsed, server, client, scheme, body, limit, keys, key_of, too_many, ports, methods):
   the environ `build` makes from the scope of a request the compiled parser took, made from the parser's tuple
   itself (corral.worker.http1._head.parse: method, target, http11, headers, ...) and the connection's
   addresses and scheme, without the scope (a --threads 1 worker calls the application from the read and makes
   its scope only when something asks for it: corral.worker.wsgi.direct). `methods`: the method's bytes -> its
   text. None, nothing done, where `build` would go the Python way (a root path, stderr replaced, an address of
   another shape) and for a path holding a '%' (decoded from the scope), or a method not in `methods`. */
static PyObject *build_parsed(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "build_parsed(template, parsed, server, client, scheme, body, limit, keys, "
                                         "key_of, too_many, ports, methods)");
        return NULL;
    }
    PyObject *template = args[0], *parsed = args[1], *server = args[2], *client = args[3], *scheme = args[4];
    PyObject *body = args[5], *keys = args[7], *key_of = args[8], *too_many = args[9], *ports = args[10];
    PyObject *methods = args[11];
    Py_ssize_t limit = limit_of(args[6]);
    if (!PyDict_CheckExact(template) || !PyTuple_CheckExact(parsed) || PyTuple_GET_SIZE(parsed) < 4 || limit < 0 ||
        !PyDict_CheckExact(keys) || !PyDict_CheckExact(ports) || !PyDict_CheckExact(methods)) {
        Py_RETURN_NONE;
    }
    PyObject *target = PyTuple_GET_ITEM(parsed, 1), *headers = PyTuple_GET_ITEM(parsed, 3);
    int http11 = PyTuple_GET_ITEM(parsed, 2) == Py_True;
    PyObject *method = PyDict_GetItemWithError(methods, PyTuple_GET_ITEM(parsed, 0));
    if (method == NULL && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *script = PyDict_GetItemWithError(template, K_SCRIPT_NAME);
    if (script == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (method == NULL || !PyBytes_CheckExact(target) || !well_formed(headers) || script == NULL ||
        !PyUnicode_CheckExact(script) || PyUnicode_GET_LENGTH(script) != 0 || !errors_current(template)) {
        Py_RETURN_NONE; /* a root path, stderr replaced, ...: from the scope, the Python way */
    }
    const char *start = PyBytes_AS_STRING(target);
    Py_ssize_t size = PyBytes_GET_SIZE(target);
    const char *mark = memchr(start, '?', (size_t)size);
    Py_ssize_t path_len = mark == NULL ? size : mark - start;
    if (memchr(start, '%', (size_t)path_len) != NULL) {
        Py_RETURN_NONE; /* the scope's path is percent-decoded (as UTF-8): from the scope */
    }
    PyObject *path = PyUnicode_DecodeASCII(start, path_len, NULL);
    if (path == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE; /* (the parser takes ASCII targets only) */
    }
    PyObject *environ = assemble(template, method, path, mark == NULL ? "" : mark + 1,
                                 mark == NULL ? 0 : size - path_len - 1, http11 ? NULL : V_HTTP10, scheme, server,
                                 client, headers, body, limit, keys, key_of, too_many, ports);
    Py_DECREF(path);
    return environ;
}

static PyMethodDef methods[] = {
    {"fill_headers", (PyCFunction)(void (*)(void))fill_headers, METH_FASTCALL,
     "fill_headers(environ, headers, keys, key_of, limit, too_many) -> bool: the header fields into the environ "
     "(see the module's source); False, nothing done, for headers of another shape."},
    {"build", (PyCFunction)(void (*)(void))build, METH_FASTCALL,
     "build(template, scope, body, limit, keys, key_of, too_many, ports) -> dict | None: the environ of an http "
     "scope (see the module's source); None, nothing done, for a scope that is not of the common shape."},
    {"build_parsed", (PyCFunction)(void (*)(void))build_parsed, METH_FASTCALL,
     "build_parsed(template, parsed, server, client, scheme, body, limit, keys, key_of, too_many, ports, methods) "
     "-> dict | None: the environ of a request the compiled parser took (see the module's source); None, nothing "
     "done, for one it makes from the scope."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_environ", "A request's header fields into its WSGI environ, in one call.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__environ(void) {
    COOKIE_KEY = PyUnicode_InternFromString("HTTP_COOKIE");
    COOKIE_SEP = PyUnicode_InternFromString("; ");
    COMMA_SEP = PyUnicode_InternFromString(",");
    if (COOKIE_KEY == NULL || COOKIE_SEP == NULL || COMMA_SEP == NULL) {
        return NULL;
    }
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&S_ROOT_PATH, "root_path"}, {&S_PATH, "path"}, {&S_METHOD, "method"}, {&S_QUERY_STRING, "query_string"},
        {&S_HTTP_VERSION, "http_version"}, {&S_SCHEME, "scheme"}, {&S_SERVER, "server"}, {&S_CLIENT, "client"},
        {&S_HEADERS, "headers"}, {&K_REQUEST_METHOD, "REQUEST_METHOD"}, {&K_PATH_INFO, "PATH_INFO"},
        {&K_QUERY_STRING, "QUERY_STRING"}, {&K_SERVER_PROTOCOL, "SERVER_PROTOCOL"}, {&K_URL_SCHEME, "wsgi.url_scheme"},
        {&K_INPUT, "wsgi.input"}, {&K_ERRORS, "wsgi.errors"}, {&K_SERVER_NAME, "SERVER_NAME"},
        {&K_SERVER_PORT, "SERVER_PORT"}, {&K_REMOTE_ADDR, "REMOTE_ADDR"}, {&K_REMOTE_PORT, "REMOTE_PORT"},
        {&V_11, "1.1"}, {&V_HTTP, "http"}, {&V_HTTP_SLASH, "HTTP/"}, {&V_ZERO, "0"}, {&EMPTY, ""},
        {&K_STDERR, "stderr"}, {&K_SCRIPT_NAME, "SCRIPT_NAME"}, {&V_HTTP10, "HTTP/1.0"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        if ((*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL) {
            return NULL;
        }
    }
    if ((SYS = PyImport_ImportModule("sys")) == NULL) {
        return NULL;
    }
    SYS_DICT = PyModule_GetDict(SYS); /* borrowed: the module, held above, keeps it */
    return PyModule_Create(&module_def);
}
