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

   Why C: a browser's request has ten or so fields, and the loop costs about 0.2 µs a field in Python.
   CORRAL_NO_EXTENSIONS=1 leaves the Python loop (CI runs the whole suite both ways). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *COOKIE_KEY;
static PyObject *COOKIE_SEP;
static PyObject *COMMA_SEP;

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
    Py_RETURN_TRUE;
error:
    Py_XDECREF(repeats);
    Py_DECREF(headers);
    return NULL;
}

static PyMethodDef methods[] = {
    {"fill_headers", (PyCFunction)(void (*)(void))fill_headers, METH_FASTCALL,
     "fill_headers(environ, headers, keys, key_of, limit, too_many) -> bool: the header fields into the environ "
     "(see the module's source); False, nothing done, for headers of another shape."},
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
    return PyModule_Create(&module_def);
}
