/* corral.worker.http1._head: the HTTP/1.1 request head of the common case, parsed in one call.

   `parse(data, limit_line, limit_fields, limit_head)` looks at one read that begins between requests. When the
   read is exactly one request of the common, canonical shape (below), it returns what the request's head
   says, as `HTTP11Connection` would have gathered it through llhttp's callbacks:

       (method, target, http11, headers, content_length, host, expect_continue, forwarded, keep_alive)

   Anything else returns None, and the read goes the general way (llhttp and corral's own checks), which
   also gives every error its status. So this function never answers a client: it only recognises requests
   that the general way would accept with the same result, and it must not accept more than that. What it
   takes:

   - a request line `METHOD SP origin-form SP HTTP/1.1|HTTP/1.0 CRLF`, METHOD one of GET HEAD POST PUT DELETE
     OPTIONS PATCH, the target starting with `/` and made of RFC 3986 characters only (no fragment `#`, no
     byte llhttp might refuse);
   - header fields `token ":" OWS value OWS CRLF`, values of visible ASCII, SP and HTAB (no obs-text, no
     obs-fold, no bare CR or LF), then CRLF;
   - no Transfer-Encoding, Upgrade or Proxy-Connection, at most one Host (required on HTTP/1.1), Content-Type and
     Content-Length (digits only), at most one Connection field;
   - the limits of the connection (request line, field count, header block) not exceeded;
   - the read ends exactly where the request ends: at the head, or after a Content-Length body in full.

   `make_scope(...)` makes the ASGI scope of such a request, and `clone(prototype)` the request object (see
   their comments below).

   Field names come back lowercased, values without the whitespace around them (RFC 9112 §5), in the order
   sent; the names corral looks at, and the methods, are shared objects made once.

   Why C: the general way costs five Python callbacks and a dozen attribute updates per request through
   httptools; this is one call. The pure-Python way stays, for every other read and for an interpreter
   without this module (CORRAL_NO_EXTENSIONS=1 turns it off; the test suite runs both ways in CI). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 §5.6.2 tchar, and the characters of a request target (RFC 3986 unreserved, reserved but '#',
   and '%'). Built once at import. */
static unsigned char TCHAR[256];
static unsigned char TARGET[256];
static unsigned char LOWER[256];

static void build_tables(void) {
    const char *tspecials = "!#$%&'*+-.^_`|~";
    const char *target = "-._~:/?[]@!$&'()*+,;=%";
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        TCHAR[c] = alnum || (c && strchr(tspecials, c) != NULL);
        TARGET[c] = alnum || (c && strchr(target, c) != NULL);
        LOWER[c] = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : (unsigned char)c;
    }
}

/* The methods taken here, as shared bytes objects (their lengths measured once, at import). */
static const char *METHOD_NAMES[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
#define N_METHODS 7
static PyObject *METHODS[N_METHODS];
static size_t METHOD_LENGTHS[N_METHODS];

/* Field names corral looks at, and common ones, as shared bytes objects: what they are for. */
enum field_kind {
    F_OTHER = 0,
    F_HOST,
    F_CONTENT_LENGTH,
    F_CONTENT_TYPE,
    F_EXPECT,
    F_CONNECTION,
    F_REFUSE, /* transfer-encoding, upgrade: the general way decides */
    F_PROXY,  /* forwarded, x-forwarded-*: the request is noted as forwarded */
};

typedef struct {
    const char *name;
    enum field_kind kind;
    PyObject *object;
    Py_ssize_t length; /* strlen(name), measured once at import */
} known_field;

static known_field KNOWN[] = {
    {"host", F_HOST, NULL, 0},
    {"content-length", F_CONTENT_LENGTH, NULL, 0},
    {"content-type", F_CONTENT_TYPE, NULL, 0},
    {"expect", F_EXPECT, NULL, 0},
    {"connection", F_CONNECTION, NULL, 0},
    {"transfer-encoding", F_REFUSE, NULL, 0},
    {"upgrade", F_REFUSE, NULL, 0},
    {"proxy-connection", F_REFUSE, NULL, 0}, /* llhttp reads it as Connection */
    {"forwarded", F_PROXY, NULL, 0},
    {"x-forwarded-for", F_PROXY, NULL, 0},
    {"x-forwarded-proto", F_PROXY, NULL, 0},
    {"x-forwarded-host", F_PROXY, NULL, 0},
    {"user-agent", F_OTHER, NULL, 0},
    {"accept", F_OTHER, NULL, 0},
    {"accept-encoding", F_OTHER, NULL, 0},
    {"accept-language", F_OTHER, NULL, 0},
    {"cookie", F_OTHER, NULL, 0},
    {"referer", F_OTHER, NULL, 0},
    {"cache-control", F_OTHER, NULL, 0},
    {"authorization", F_OTHER, NULL, 0},
    {"origin", F_OTHER, NULL, 0},
    {"x-request-id", F_OTHER, NULL, 0},
    {"x-real-ip", F_OTHER, NULL, 0},
};
#define N_KNOWN ((int)(sizeof(KNOWN) / sizeof(KNOWN[0])))

/* The known field whose lowercase name is `lower[0:n]`, or -1. */
static int find_known(const char *lower, Py_ssize_t n) {
    for (int i = 0; i < N_KNOWN; i++) {
        if (KNOWN[i].length == n && memcmp(KNOWN[i].name, lower, (size_t)n) == 0) {
            return i;
        }
    }
    return -1;
}

/* Whether `value[0:n]`, a Connection field's value, names the token `token` (case-insensitive). */
static int has_token(const char *value, Py_ssize_t n, const char *token) {
    Py_ssize_t tn = (Py_ssize_t)strlen(token);
    Py_ssize_t i = 0;
    while (i < n) {
        while (i < n && (value[i] == ' ' || value[i] == '\t' || value[i] == ',')) {
            i++;
        }
        Py_ssize_t start = i;
        while (i < n && value[i] != ',') {
            i++;
        }
        Py_ssize_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t')) {
            end--;
        }
        if (end - start == tn) {
            Py_ssize_t k = 0;
            while (k < tn && LOWER[(unsigned char)value[start + k]] == (unsigned char)token[k]) {
                k++;
            }
            if (k == tn) {
                return 1;
            }
        }
    }
    return 0;
}

#define GIVE_UP goto give_up

static PyObject *parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "parse(data, limit_line, limit_fields, limit_head)");
        return NULL;
    }
    PyObject *data = args[0];
    if (!PyBytes_CheckExact(data)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t limit_line = PyLong_AsSsize_t(args[1]);
    if (limit_line == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t limit_fields = PyLong_AsSsize_t(args[2]);
    if (limit_fields == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t limit_head = PyLong_AsSsize_t(args[3]);
    if (limit_head == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    const unsigned char *p = buf;
    const unsigned char *end = buf + size;

    PyObject *headers = NULL, *target = NULL, *host = NULL, *name = NULL, *value = NULL;

    /* The method. */
    const unsigned char *sp = memchr(p, ' ', (size_t)(size < 8 ? size : 8));
    if (sp == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *method = NULL;
    for (int i = 0; i < N_METHODS; i++) {
        size_t n = METHOD_LENGTHS[i];
        if ((size_t)(sp - p) == n && memcmp(p, METHOD_NAMES[i], n) == 0) {
            method = METHODS[i];
            break;
        }
    }
    if (method == NULL) {
        Py_RETURN_NONE;
    }
    Py_ssize_t method_len = sp - p;

    /* The target: origin-form. */
    p = sp + 1;
    const unsigned char *t = p;
    if (p >= end || *p != '/') {
        Py_RETURN_NONE;
    }
    while (p < end && TARGET[*p]) {
        p++;
    }
    Py_ssize_t target_len = p - t;
    if (target_len > limit_line || method_len + target_len + 10 > limit_line) {
        Py_RETURN_NONE; /* 414: the general way says so */
    }
    /* SP HTTP/1.x CRLF */
    if (end - p < 11 || memcmp(p, " HTTP/1.", 8) != 0 || (p[8] != '1' && p[8] != '0') || p[9] != '\r' ||
        p[10] != '\n') {
        Py_RETURN_NONE;
    }
    int http11 = p[8] == '1';
    p += 11;

    /* The header fields. */
    headers = PyList_New(0);
    if (headers == NULL) {
        return NULL;
    }
    Py_ssize_t content_length = -1, fields = 0, block = 0;
    int expect = 0, forwarded = 0, content_type = 0, connection_close = 0, connection_keep = 0,
        connections = 0;
    char lower[64];
    for (;;) {
        if (end - p < 2) {
            GIVE_UP; /* the head does not end in this read */
        }
        if (p[0] == '\r') {
            if (p[1] != '\n') {
                GIVE_UP;
            }
            p += 2;
            break;
        }
        const unsigned char *n0 = p;
        while (p < end && TCHAR[*p]) {
            p++;
        }
        Py_ssize_t name_len = p - n0;
        if (name_len == 0 || p >= end || *p != ':') {
            GIVE_UP;
        }
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) {
            p++;
        }
        const unsigned char *v0 = p;
        while (p < end && ((*p >= 0x21 && *p <= 0x7e) || *p == ' ' || *p == '\t')) {
            p++;
        }
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') {
            GIVE_UP; /* a control byte, obs-text, a bare CR or LF, or the read ends here */
        }
        const unsigned char *v1 = p;
        while (v1 > v0 && (v1[-1] == ' ' || v1[-1] == '\t')) {
            v1--;
        }
        /* The header block's size counts the value as llhttp reports it: trailing whitespace included. */
        block += name_len + (p - v0) + 4;
        p += 2;
        Py_ssize_t value_len = v1 - v0;
        fields++;
        if (fields > limit_fields || block > limit_head) {
            GIVE_UP; /* 431: the general way says so */
        }

        int known = -1;
        if (name_len <= (Py_ssize_t)sizeof(lower)) {
            for (Py_ssize_t i = 0; i < name_len; i++) {
                lower[i] = (char)LOWER[n0[i]];
            }
            known = find_known(lower, name_len);
        }
        enum field_kind kind = known >= 0 ? KNOWN[known].kind : F_OTHER;
        switch (kind) {
        case F_REFUSE:
            GIVE_UP;
        case F_HOST:
            if (host != NULL) {
                GIVE_UP;
            }
            break;
        case F_CONTENT_LENGTH: {
            /* At most 15 digits (9 where Py_ssize_t has 32 bits): no overflow, and a length no read holds. */
            if (content_length >= 0 || value_len == 0 || value_len > (sizeof(Py_ssize_t) >= 8 ? 15 : 9)) {
                GIVE_UP;
            }
            Py_ssize_t length = 0;
            for (const unsigned char *d = v0; d < v1; d++) {
                if (*d < '0' || *d > '9') {
                    GIVE_UP;
                }
                length = length * 10 + (*d - '0');
            }
            content_length = length;
            break;
        }
        case F_CONTENT_TYPE:
            if (content_type) {
                GIVE_UP;
            }
            content_type = 1;
            break;
        case F_EXPECT:
            expect = value_len == 12 && has_token((const char *)v0, value_len, "100-continue");
            break;
        case F_CONNECTION:
            if (connections++) {
                GIVE_UP;
            }
            if (has_token((const char *)v0, value_len, "upgrade")) {
                GIVE_UP;
            }
            connection_close = has_token((const char *)v0, value_len, "close");
            connection_keep = has_token((const char *)v0, value_len, "keep-alive");
            if (connection_close && connection_keep) {
                GIVE_UP; /* both: llhttp's rule (HTTP/1.0 keeps the connection) is the general way's */
            }
            break;
        case F_PROXY:
            forwarded = 1;
            break;
        default:
            break;
        }

        if (known >= 0) {
            name = KNOWN[known].object;
            Py_INCREF(name);
        } else {
            name = PyBytes_FromStringAndSize(NULL, name_len);
            if (name == NULL) {
                goto error;
            }
            char *out = PyBytes_AS_STRING(name);
            for (Py_ssize_t i = 0; i < name_len; i++) {
                out[i] = (char)LOWER[n0[i]];
            }
        }
        value = PyBytes_FromStringAndSize((const char *)v0, value_len);
        if (value == NULL) {
            goto error;
        }
        if (kind == F_HOST) {
            Py_INCREF(value);
            host = value;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            goto error;
        }
        PyTuple_SET_ITEM(pair, 0, name); /* steals */
        PyTuple_SET_ITEM(pair, 1, value);
        name = value = NULL;
        int failed = PyList_Append(headers, pair);
        Py_DECREF(pair);
        if (failed) {
            goto error;
        }
    }
    if (http11 && host == NULL) {
        GIVE_UP; /* 400: the general way says so */
    }
    /* The read ends where the request does. */
    if (end - p != (content_length > 0 ? content_length : 0)) {
        GIVE_UP;
    }
    /* llhttp's should_keep_alive: HTTP/1.1 persists unless `close`, HTTP/1.0 only with `keep-alive`. */
    int keep_alive = http11 ? !connection_close : connection_keep;

    target = PyBytes_FromStringAndSize((const char *)t, target_len);
    if (target == NULL) {
        goto error;
    }
    PyObject *result = PyTuple_New(9);
    if (result == NULL) {
        goto error;
    }
    Py_INCREF(method);
    PyTuple_SET_ITEM(result, 0, method);
    PyTuple_SET_ITEM(result, 1, target);
    PyTuple_SET_ITEM(result, 2, PyBool_FromLong(http11));
    PyTuple_SET_ITEM(result, 3, headers);
    PyObject *length = PyLong_FromSsize_t(content_length);
    if (length == NULL) {
        Py_DECREF(result);
        Py_XDECREF(host);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 4, length);
    if (host == NULL) {
        Py_INCREF(Py_None);
        host = Py_None;
    }
    PyTuple_SET_ITEM(result, 5, host);
    PyTuple_SET_ITEM(result, 6, PyBool_FromLong(expect));
    PyTuple_SET_ITEM(result, 7, PyBool_FromLong(forwarded));
    PyTuple_SET_ITEM(result, 8, PyBool_FromLong(keep_alive));
    return result;

give_up:
    Py_XDECREF(headers);
    Py_XDECREF(host);
    Py_RETURN_NONE;
error:
    Py_XDECREF(headers);
    Py_XDECREF(host);
    Py_XDECREF(name);
    Py_XDECREF(value);
    Py_XDECREF(target);
    return NULL;
}


/* make_scope(template, method, target, http11, headers, server, client, scheme, lifespan_state, extensions,
   decode_path): the ASGI scope of a request `parse` returned (method, target, http11 and headers as it gave
   them), as corral.worker.http1.direct makes it: a copy of the server's `template`, then the request's
   values. The path is the target's part before '?', decoded as ASCII, or by `decode_path(raw_path)` when it
   holds a '%'. `lifespan_state` is copied when not empty (each request gets its own dict), `extensions` when
   not None. */
static PyObject *S_HTTP_VERSION, *S_SERVER, *S_CLIENT, *S_SCHEME, *S_METHOD, *S_PATH, *S_RAW_PATH, *S_QUERY_STRING,
    *S_HEADERS, *S_STATE, *S_EXTENSIONS, *V_10, *V_HTTP, *EMPTY_BYTES;
static PyObject *METHOD_STRINGS[N_METHODS];

static int set_new(PyObject *dict, PyObject *key, PyObject *value) {
    if (value == NULL) {
        return -1;
    }
    int failed = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return failed;
}

static PyObject *make_scope(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "make_scope(template, method, target, http11, headers, server, client, "
                                         "scheme, lifespan_state, extensions, decode_path)");
        return NULL;
    }
    PyObject *template = args[0], *method = args[1], *target = args[2], *headers = args[4];
    PyObject *server = args[5], *client = args[6], *scheme = args[7], *lifespan = args[8], *extensions = args[9];
    PyObject *decode = args[10];
    if (!PyDict_CheckExact(template) || !PyBytes_CheckExact(target)) {
        PyErr_SetString(PyExc_TypeError, "make_scope: a dict template and a bytes target");
        return NULL;
    }
    PyObject *method_string = NULL;
    for (int i = 0; i < N_METHODS; i++) {
        if (method == METHODS[i]) {
            method_string = METHOD_STRINGS[i];
            break;
        }
    }
    if (method_string == NULL) {
        PyErr_SetString(PyExc_ValueError, "make_scope: a method parse() returned");
        return NULL;
    }
    PyObject *scope = PyDict_Copy(template);
    if (scope == NULL) {
        return NULL;
    }
    int http11 = PyObject_IsTrue(args[3]);
    if (http11 < 0 || (!http11 && PyDict_SetItem(scope, S_HTTP_VERSION, V_10) < 0)) {
        goto error;
    }
    if (PyDict_SetItem(scope, S_SERVER, server) < 0 || PyDict_SetItem(scope, S_CLIENT, client) < 0) {
        goto error;
    }
    if (!(PyUnicode_CheckExact(scheme) && PyUnicode_Compare(scheme, V_HTTP) == 0) &&
        PyDict_SetItem(scope, S_SCHEME, scheme) < 0) {
        goto error;
    }
    if (PyDict_SetItem(scope, S_METHOD, method_string) < 0) {
        goto error;
    }
    const char *t = PyBytes_AS_STRING(target);
    Py_ssize_t n = PyBytes_GET_SIZE(target);
    const char *q = memchr(t, '?', (size_t)n);
    Py_ssize_t path_len = q != NULL ? q - t : n;
    PyObject *raw_path, *query;
    if (q == NULL) {
        Py_INCREF(target);
        raw_path = target;
        Py_INCREF(EMPTY_BYTES);
        query = EMPTY_BYTES;
    } else {
        raw_path = PyBytes_FromStringAndSize(t, path_len);
        query = PyBytes_FromStringAndSize(q + 1, n - path_len - 1);
        if (raw_path == NULL || query == NULL) {
            Py_XDECREF(raw_path);
            Py_XDECREF(query);
            goto error;
        }
    }
    PyObject *path = memchr(t, '%', (size_t)path_len) == NULL ? PyUnicode_DecodeASCII(t, path_len, NULL)
                                                             : PyObject_CallOneArg(decode, raw_path);
    if (set_new(scope, S_PATH, path) < 0 || PyDict_SetItem(scope, S_RAW_PATH, raw_path) < 0 ||
        PyDict_SetItem(scope, S_QUERY_STRING, query) < 0) {
        Py_DECREF(raw_path);
        Py_DECREF(query);
        goto error;
    }
    Py_DECREF(raw_path);
    Py_DECREF(query);
    if (PyDict_SetItem(scope, S_HEADERS, headers) < 0) {
        goto error;
    }
    int has_state = PyDict_Check(lifespan) ? PyDict_GET_SIZE(lifespan) > 0 : PyObject_IsTrue(lifespan);
    if (has_state < 0) {
        goto error;
    }
    PyObject *state = has_state ? PyObject_CallMethod(lifespan, "copy", NULL) : PyDict_New();
    if (set_new(scope, S_STATE, state) < 0) {
        goto error;
    }
    PyObject *own = extensions == Py_None ? PyDict_New() : PyObject_CallMethod(extensions, "copy", NULL);
    if (set_new(scope, S_EXTENSIONS, own) < 0) {
        goto error;
    }
    return scope;
error:
    Py_DECREF(scope);
    return NULL;
}

/* clone(prototype): a new object of prototype's class holding what each of its slots holds (the weak
   reference slot left empty), or None when the class is not made of `__slots__` alone. A request object has
   some thirty slots, nearly all the same in every request; calling its class costs a Python frame and a
   store per slot (about 2,800 instructions a request, callgrind under load), copying them about 300. The
   caller then sets the slots that differ (corral.worker.wsgi.cycle.new_wsgi_cycle).

   What "slots alone" means here: every class from the prototype's up to `object` is made by a class statement
   with `__slots__` (a heap type whose ht_slots is set) and none gives its instances a `__dict__`. The instance is then `object`'s header followed by
   PyObject pointers only (CPython lays out `__slots__` as object members, `__weakref__` among them up to 3.11),
   so the copy is the pointers between the header and the end of the instance, each a new reference. From 3.12
   the weak-reference list sits before the header (Py_TPFLAGS_MANAGED_WEAKREF, a negative offset), where
   tp_alloc leaves it empty. */
#ifdef Py_TPFLAGS_MANAGED_DICT /* 3.11+: a __dict__ before the object (a class without __slots__) */
#define MANAGED_DICT Py_TPFLAGS_MANAGED_DICT
#else
#define MANAGED_DICT 0
#endif
static PyObject *clone_slots(PyObject *module, PyObject *prototype) {
    (void)module;
    PyTypeObject *type = Py_TYPE(prototype);
    for (PyTypeObject *t = type; t != &PyBaseObject_Type; t = t->tp_base) {
        /* ht_slots: the __slots__ of a class statement; NULL for a heap type made from a C spec (struct.Struct,
           3.13's deque...), whose instances hold C fields that are no object pointers. */
        if (t == NULL || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE) || ((PyHeapTypeObject *)t)->ht_slots == NULL ||
            t->tp_dictoffset != 0 || t->tp_itemsize != 0 || (t->tp_flags & MANAGED_DICT)) {
            Py_RETURN_NONE;
        }
    }
    PyObject *copy = type->tp_alloc(type, 0); /* zeroed, and tracked by the GC as the class's instances are */
    if (copy == NULL) {
        return NULL;
    }
    Py_ssize_t end = type->tp_basicsize;
    for (Py_ssize_t offset = (Py_ssize_t)sizeof(PyObject); offset + (Py_ssize_t)sizeof(PyObject *) <= end;
         offset += (Py_ssize_t)sizeof(PyObject *)) {
        if (offset == type->tp_weaklistoffset) {
            continue;
        }
        PyObject *value = *(PyObject **)((char *)prototype + offset);
        Py_XINCREF(value);
        *(PyObject **)((char *)copy + offset) = value;
    }
    return copy;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(data, limit_line, limit_fields, limit_head) -> tuple | None: one whole request of the common shape "
     "in `data` (see the module's source), or None."},
    {"make_scope", (PyCFunction)(void (*)(void))make_scope, METH_FASTCALL,
     "make_scope(template, method, target, http11, headers, server, client, scheme, lifespan_state, extensions, "
     "decode_path) -> dict: the ASGI scope of a request parse() returned (see the module's source)."},
    {"clone", (PyCFunction)clone_slots, METH_O,
     "clone(prototype) -> object | None: a new instance of prototype's class with the same slot values (see the "
     "module's source); None when the class is not made of __slots__ alone."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_head", "The HTTP/1.1 request head of the common case, parsed in one call.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__head(void) {
    build_tables();
    for (int i = 0; i < N_METHODS; i++) {
        METHOD_LENGTHS[i] = strlen(METHOD_NAMES[i]);
        METHODS[i] = PyBytes_FromString(METHOD_NAMES[i]);
        METHOD_STRINGS[i] = PyUnicode_InternFromString(METHOD_NAMES[i]);
        if (METHODS[i] == NULL || METHOD_STRINGS[i] == NULL) {
            return NULL;
        }
    }
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&S_HTTP_VERSION, "http_version"}, {&S_SERVER, "server"}, {&S_CLIENT, "client"}, {&S_SCHEME, "scheme"},
        {&S_METHOD, "method"}, {&S_PATH, "path"}, {&S_RAW_PATH, "raw_path"}, {&S_QUERY_STRING, "query_string"},
        {&S_HEADERS, "headers"}, {&S_STATE, "state"}, {&S_EXTENSIONS, "extensions"}, {&V_10, "1.0"},
        {&V_HTTP, "http"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        if ((*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL) {
            return NULL;
        }
    }
    if ((EMPTY_BYTES = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {
        return NULL;
    }
    for (int i = 0; i < N_KNOWN; i++) {
        KNOWN[i].length = (Py_ssize_t)strlen(KNOWN[i].name);
        KNOWN[i].object = PyBytes_FromString(KNOWN[i].name);
        if (KNOWN[i].object == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module_def);
}
