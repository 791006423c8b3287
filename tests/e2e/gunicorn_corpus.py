"""gunicorn's HTTP/1.1 request corpus (`tests/requests/valid` and `invalid` of its sdist), read for corral.

The corpus is not part of this repository: `download_sdist` fetches gunicorn's sdist from PyPI with pip at test
time (as the asgiref conformance run does), and `load_cases` reads the request files straight from the tarball.
Each case is a `.http` file (the request bytes, written with escapes) and a `.py` file: for a valid case the
parsed request(s) gunicorn's parser must produce, for an invalid one the exception it must raise; either may
set gunicorn settings through `cfg.set(...)`.

The `.http` files are decoded as gunicorn's own harness (`tests/treq.py`) decodes them: line breaks dropped,
then the escapes `\\r\\n`, `\\0`, `\\n`, `\\t` and `\\xHH`. The `.py` files are executed with stand-ins for
the gunicorn names they import (`Config` records the settings; an error class is known by its name) and with
the `uri()` helper treq gives them (gunicorn's `split_request_uri`: `urllib.parse.urlsplit`, with a leading
`//` kept in the path).

`serve_args` maps the settings a case needs onto corral's flags; settings corral has no counterpart of are
named in `GUNICORN_ONLY` (the case then runs with corral's defaults, and `DIFFERENCES` says what is expected).
"""

from __future__ import annotations

import builtins
import http.client
import json
import socket
import subprocess
import sys
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GUNICORN_VERSION = "27.0.1"

#: The sdist's corpus, counted: a release that adds or drops cases must be looked at, not silently run.
VALID_COUNT = 62
INVALID_COUNT = 81

# --------------------------------------------------------------------------------------------------------
# Where corral answers differently from gunicorn, on purpose: case name -> (what corral does, why).
# Every other case must come out as gunicorn's own parser says.

#: Valid cases (gunicorn serves them) that corral refuses.
REFUSED_VALID: dict[str, str] = {
    "025": ("501: `Transfer-Encoding: gzip` then `chunked`, as rfc9112_smuggle_gzip_chunked_01"),
    "025_line": ("501: `Transfer-Encoding: gzip,chunked`, as rfc9112_smuggle_gzip_chunked_01"),
    "099": (
        "no answer: the file's body is 8599 bytes where its Content-Length says 17914. gunicorn's harness "
        "parses from memory and takes the short body at the end of its input; a server waits for the rest, "
        "and once the client stops sending (here: shuts its side) the application gets http.disconnect"
    ),
    "rfc9112_smuggle_gzip_chunked_01": (
        "501: `Transfer-Encoding: gzip, chunked`. RFC 9112 section 6.1: a server that receives a transfer coding "
        "it does not understand SHOULD answer 501. gunicorn hands the application the still gzip-coded body "
        "(and closes the connection after it); corral decodes no transfer coding but chunked"
    ),
    "028": (
        "400: `Content-Length : 3` (whitespace before the colon). Served only with gunicorn's "
        "strip_header_spaces, a setting corral does not have; gunicorn's default refuses the same bytes "
        "(invalid/020), as RFC 9112 section 5.1 requires"
    ),
    "031compat": (
        "400: the lowercase method `-blargh`. Served only with gunicorn's permit_unconventional_http_method and "
        "casefold_http_method, settings corral does not have; gunicorn's default refuses it"
    ),
    "031compat2": (
        "400: the lowercase method `-blargh`. Served only with gunicorn's permit_unconventional_http_method, a "
        "setting corral does not have; gunicorn's default refuses it (invalid/003c)"
    ),
    "compat_obs_fold": (
        "400: a header folded over two lines (obs-fold). Served only with gunicorn's permit_obsolete_folding, "
        "a setting corral does not have; gunicorn's default refuses it (invalid/obs_fold_01), RFC 9112 "
        "section 5.2 allows either"
    ),
    "compat_obs_fold_huge": ("400: obs-fold, as compat_obs_fold"),
}

#: Valid HTTP/1.1 cases without a Host field. RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad
#: Request) status code to any HTTP/1.1 request message that lacks a Host header field"; gunicorn serves them.
#: Corral answers each as it is with 400 (checked), and serves it once `Host: corpus.test` is added after the
#: request line (checked against gunicorn's expectations, the added field aside).
MISSING_HOST_REASON = "RFC 9112 section 3.2: an HTTP/1.1 request without Host is answered 400"

#: Invalid cases (gunicorn refuses them) that corral serves.
SERVED_INVALID: dict[str, str] = {
    "019": (
        "`X-Forwarded-Proto: https` with `X-Forwarded-Ssl: off` from a trusted peer: gunicorn refuses the "
        "contradiction; corral takes the scheme from X-Forwarded-Proto (or Forwarded) and does not read "
        "X-Forwarded-Ssl at all, so there is nothing to contradict"
    ),
    "040": (
        "`Transfer_Encoding` and `Content_Length` fields: refused only under gunicorn's header_map 'refuse'; "
        "with its default ('drop') gunicorn serves the same bytes (valid/040), as corral does"
    ),
    "chunked_07": (
        "a `Transfer_Encoding` field beside Transfer-Encoding: refused only under gunicorn's header_map "
        "'refuse', as 040"
    ),
    "rfc9112_leading_crlf_02": (
        "two empty lines before the request line: RFC 9112 section 2.2 says a server SHOULD ignore at least "
        "one; llhttp ignores any number, gunicorn only one. Ignoring them cannot change where a request "
        "begins or ends"
    ),
}

#: Valid cases sent with our side shut once sent (the request is incomplete: see REFUSED_VALID).
TRUNCATED_VALID = frozenset({"099"})

#: Cases whose outcome is the same, but whose details differ: case -> why (see `compare_asgi`).
DETAIL_DIFFERENCES: dict[str, str] = {
    "rfc9112_target_authority_connect_01": (
        "CONNECT's authority-form target: gunicorn's path is what urlsplit makes of `example.com:443` "
        "(`443`); corral's path and raw_path are the authority itself, as h11-based servers give it"
    ),
    "rfc9112_target_authority_ipv6_01": "CONNECT's authority-form target, as rfc9112_target_authority_connect_01",
    "040": (
        "ASGI: the fields `Transfer_Encoding` and `Content_Length` reach the application as sent (ASGI keeps "
        "header names apart); gunicorn drops names with an underscore because its WSGI environ would confuse "
        "them with Transfer-Encoding and Content-Length. The native WSGI environ drops them as gunicorn does"
    ),
    "040_compat": "as 040 (gunicorn's header_map 'dangerous' maps them into the environ; corral never does)",
}

#: gunicorn settings with no corral counterpart; a case that sets one runs with corral's defaults.
GUNICORN_ONLY = frozenset(
    {
        "permit_obsolete_folding",
        "strip_header_spaces",
        "casefold_http_method",
        "permit_unconventional_http_method",
        "header_map",
    }
)

_FLAGS = {
    "limit_request_line": "--limit-request-line",
    "limit_request_fields": "--limit-request-fields",
    "limit_request_field_size": "--limit-request-field-size",
    "forwarded_allow_ips": "--forwarded-allow-ips",
}


# --------------------------------------------------------------------------------------------------------
# Reading the corpus


def download_sdist(dest: Path) -> Path:
    """gunicorn's sdist, fetched with pip; raises RuntimeError (with pip's output) when it cannot."""
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        f"gunicorn=={GUNICORN_VERSION}", "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    sdists = sorted(dest.glob(f"gunicorn-{GUNICORN_VERSION}.tar.gz"))
    if proc.returncode != 0 or not sdists:
        raise RuntimeError(
            f"could not download the gunicorn {GUNICORN_VERSION} sdist (its request corpus needs PyPI): "
            f"{' '.join(command)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return sdists[0]


def decode_http(raw: bytes) -> bytes:
    """A `.http` file's request bytes (treq.py's decoding)."""
    data = raw.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\0").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i : i + 2] == b"\\x" and i + 3 < len(data):
            try:
                out.append(int(data[i + 2 : i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(data[i])
        i += 1
    if b"\\" in out:
        raise ValueError("unexpected backslash escape in a corpus file")
    return bytes(out)


def uri(raw: str) -> dict[str, Any]:
    """treq.py's `uri()`: the parts gunicorn's parser must find in a request target."""
    if raw.startswith("//"):
        parts = urllib.parse.urlsplit("." + raw)
        parts = parts._replace(path=parts.path[1:])
    else:
        parts = urllib.parse.urlsplit(raw)
    return {
        "raw": raw, "scheme": parts.scheme or "", "host": parts.netloc.rsplit(":", 1)[0] or None,
        "port": parts.port or 80, "path": parts.path or "", "query": parts.query or "",
        "fragment": parts.fragment or "",
    }  # fmt: skip


class _Config:
    """Stands in for gunicorn.config.Config: records `cfg.set(name, value)`."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}

    def set(self, name: str, value: Any) -> None:
        self.settings[name] = value


class _ErrorName:
    """Stands in for an exception class of gunicorn.http.errors: its name is what a case expects."""

    def __init__(self, name: str) -> None:
        self.name = name


class _GunicornModule:
    def __getattr__(self, name: str) -> Any:
        if name == "Config":
            return _Config
        if name.startswith("__"):
            raise AttributeError(name)
        return _ErrorName(name)


def _exec_expectation(source: str, filename: str) -> dict[str, Any]:
    """Run a `.py` expectation file with stand-ins for the gunicorn names it imports."""
    real_import = builtins.__import__

    def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if name == "gunicorn" or name.startswith("gunicorn."):
            return _GunicornModule()
        if name in ("re", "os"):
            return real_import(name, globals, locals, fromlist, level)
        raise ImportError(f"{filename} imports {name}, which the corpus loader does not provide")

    namespace: dict[str, Any] = {"__builtins__": {**vars(builtins), "__import__": guarded_import}, "uri": uri}
    exec(compile(source, filename, "exec"), namespace)  # gunicorn's expectation files, by design
    return namespace


@dataclass
class Case:
    kind: str  # "valid" or "invalid"
    name: str
    data: bytes
    settings: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)  # valid: the requests gunicorn parses
    error: str = ""  # invalid: the gunicorn exception's name

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


def load_cases(sdist: Path) -> list[Case]:
    """Every case of the sdist's tests/requests/{valid,invalid}, in file-name order."""
    prefix = f"gunicorn-{GUNICORN_VERSION}/tests/requests/"
    cases: list[Case] = []
    with tarfile.open(sdist) as tar:
        files = {m.name[len(prefix) :]: m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()}
        for path in sorted(files):
            kind, _, filename = path.partition("/")
            if kind not in ("valid", "invalid") or not filename.endswith(".http"):
                continue
            name = filename[: -len(".http")]
            expectation = files.get(f"{kind}/{name}.py")
            if expectation is None:
                raise RuntimeError(f"{path} has no expectation file {name}.py")
            data = decode_http(tar.extractfile(files[path]).read())  # type: ignore[union-attr]  # a regular file of the corpus
            source = tar.extractfile(expectation).read().decode("utf-8")  # type: ignore[union-attr]  # a regular file of the corpus
            namespace = _exec_expectation(source, f"{kind}/{name}.py")
            cfg = namespace.get("cfg")
            case = Case(kind, name, data, dict(cfg.settings) if isinstance(cfg, _Config) else {})
            expected = namespace["request"]
            if kind == "valid":
                case.requests = expected if isinstance(expected, list) else [expected]
            else:
                if not isinstance(expected, _ErrorName):
                    raise RuntimeError(f"{kind}/{name}.py names no gunicorn error: {expected!r}")
                case.error = expected.name
            cases.append(case)
    return cases


#: gunicorn's defaults where corral's differ: every case runs with them unless it sets its own. (corral's
#: request-line limit is 8190 by default, nginx's; gunicorn's 4094.)
GUNICORN_DEFAULTS = {"limit_request_line": 4094}


def serve_args(case: Case) -> tuple[str, ...]:
    """corral's flags for the settings a case needs (sorted, so equal needs share one server)."""
    args: list[str] = []
    for name, value in sorted({**GUNICORN_DEFAULTS, **case.settings}.items()):
        if name in GUNICORN_ONLY:
            continue
        if name == "proxy_protocol":
            if value:
                args += ["--proxy-protocol", "--proxy-allow-ips", "*"]
            continue
        flag = _FLAGS.get(name)
        if flag is None:
            raise RuntimeError(f"{case.id}: gunicorn setting {name} has no corral mapping")
        if name == "limit_request_field_size" and value == 0:
            continue  # gunicorn: 0 is its default limit
        args += [flag, str(value)]
    return tuple(args)


# --------------------------------------------------------------------------------------------------------
# Sending a case and reading what comes back

ASGI_APP = """
import json, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({
        "pid": os.getpid(), "method": scope["method"], "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"), "query": scope["query_string"].decode("latin-1"),
        "version": scope["http_version"], "body": body.decode("latin-1"),
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})
"""

WSGI_APP = """
import json, os

def app(environ, start_response):
    body = environ["wsgi.input"].read()
    answer = json.dumps({
        "pid": os.getpid(), "method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"], "version": environ["SERVER_PROTOCOL"][5:],
        "body": body.decode("latin-1"),
        "environ": {
            k: v for k, v in environ.items() if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")
        },
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
    return [answer]
"""

TIMEOUT = 20.0


class _SharedReader:
    """One buffered reader for a connection, handed to each http.client.HTTPResponse in turn: a response
    never closes it (HTTPResponse closes its file when the body is read)."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def makefile(self, *args: Any, **kwargs: Any) -> _SharedReader:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def close(self) -> None:
        pass


@dataclass
class Outcome:
    responses: list[tuple[int, bytes]]  # status, body
    closed: bool  # the server closed the connection after them


def exchange(port: int, data: bytes, expected: int, half_close: bool) -> Outcome:
    """Send `data` on a new connection and read up to `expected` responses (http.client's parser).
    `half_close`: shut our sending side once sent (an incomplete request ends there), and see whether the
    server then closes the connection (`closed`; else it is False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reader = _SharedReader(sock)
        responses: list[tuple[int, bytes]] = []
        while len(responses) < expected:
            response = http.client.HTTPResponse(reader)  # type: ignore[arg-type]  # a socket's file quacks as one
            try:
                response.begin()
            except (http.client.RemoteDisconnected, ConnectionResetError):
                return Outcome(responses, True)
            responses.append((response.status, response.read()))
            if response.will_close:
                break
        if not half_close:
            return Outcome(responses, False)
        try:
            closed = reader.file.read(1) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
        return Outcome(responses, closed)


def request_lacks_host(request: dict[str, Any]) -> bool:
    return request["version"] == (1, 1) and not any(n.upper() == "HOST" for n, _ in request["headers"])


def add_host(case: Case) -> bytes:
    """The case's bytes with `Host: corpus.test` after the request line of each HTTP/1.1 request without
    one (see MISSING_HOST_REASON); request lines are found in order, after the previous one."""
    data = case.data
    position = 0
    for request in case.requests:
        line = f" {request['uri']['raw']} HTTP/%d.%d\r\n" % request["version"]  # (031compat: the method's case)
        start = data.index(line.encode("latin-1"), position)
        position = start + len(line)
        if request_lacks_host(request):
            data = data[:position] + b"Host: corpus.test\r\n" + data[position:]
    return data


def with_host(data: bytes) -> bytes:
    """An invalid case's bytes with `Host: corpus.test` after the first line when that line ends in
    ` HTTP/1.1` and no Host field follows: the case is then refused for what it is about, not for the
    missing Host (RFC 9112 section 3.2) that corral would refuse first."""
    line_end = data.find(b"\r\n")
    if line_end < 0 or not data[:line_end].endswith(b" HTTP/1.1") or data.startswith(b"PROXY"):
        return data
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    if b"\r\nhost:" in head:
        return data
    return data[: line_end + 2] + b"Host: corpus.test\r\n" + data[line_end + 2 :]


def lacks_host(case: Case) -> bool:
    """An HTTP/1.1 request of the case has no Host field (corral answers it 400)."""
    return any(request_lacks_host(request) for request in case.requests)


# --------------------------------------------------------------------------------------------------------
# Comparing what the application got with what gunicorn's parser found


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def compare_asgi(case: Case, expected: dict[str, Any], got: dict[str, Any], host_added: bool) -> list[str]:
    """What differs between gunicorn's parsed request and the ASGI scope corral gave (an empty list: same)."""
    problems: list[str] = []
    target = expected["uri"]
    if got["method"] != expected["method"]:
        problems.append(f"method {got['method']!r} != {expected['method']!r}")
    if expected["method"] == "CONNECT" and not target["raw"].startswith("/"):
        want_path = want_raw = target["raw"]  # DETAIL_DIFFERENCES: the authority itself
    else:
        want_raw = target["path"]
        want_path = urllib.parse.unquote(want_raw, encoding="latin-1") if "%" in want_raw else want_raw
    if got["raw_path"] != want_raw:
        problems.append(f"raw_path {got['raw_path']!r} != {want_raw!r}")
    if got["path"] != want_path and urllib.parse.unquote(want_raw) != got["path"]:
        problems.append(f"path {got['path']!r} != {want_path!r}")
    if got["query"] != target["query"]:
        problems.append(f"query_string {got['query']!r} != {target['query']!r}")
    if target["fragment"] and ("#" in got["raw_path"] or "#" in got["query"] or "#" in got["path"]):
        problems.append(f"the fragment #{target['fragment']} reached the application")
    version = "%d.%d" % expected["version"]
    if got["version"] != version:
        problems.append(f"http_version {got['version']!r} != {version!r}")
    want_headers = [(n.upper(), _text(v)) for n, v in expected["headers"]]
    got_headers = [(n.upper(), v) for n, v in got["headers"]]
    if host_added:
        got_headers.remove(("HOST", "corpus.test"))
    if case.name in ("040", "040_compat"):  # DETAIL_DIFFERENCES: ASGI keeps underscore names
        got_headers = [h for h in got_headers if "_" not in h[0]]
        want_headers = [h for h in want_headers if "_" not in h[0]]
    if got_headers != want_headers:
        problems.append(f"headers {got_headers!r} != {want_headers!r}")
    body = _text(expected["body"])
    if got["body"] != body:
        problems.append(f"body {got['body'][:200]!r} != {body[:200]!r}")
    return problems


def _environ_headers(headers: list[tuple[str, Any]]) -> dict[str, str]:
    environ: dict[str, str] = {}
    for name, value in headers:
        name = name.upper()
        if "_" in name:
            continue  # gunicorn's default header_map: dropped
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = _text(value)
        environ[key] = environ[key] + "," + value if key in environ else value
    return environ


def compare_wsgi(case: Case, expected: dict[str, Any], got: dict[str, Any], host_added: bool) -> list[str]:
    """What differs between gunicorn's parsed request and the WSGI environ corral gave."""
    problems: list[str] = []
    target = expected["uri"]
    if got["method"] != expected["method"]:
        problems.append(f"REQUEST_METHOD {got['method']!r} != {expected['method']!r}")
    if expected["method"] == "CONNECT" and not target["raw"].startswith("/"):
        want_path = target["raw"]
    else:
        # PEP 3333: PATH_INFO is the percent-decoded path, its bytes as latin-1 (gunicorn's rule too).
        want_path = urllib.parse.unquote(target["path"], encoding="latin-1")
    if got["path"] != want_path:
        problems.append(f"PATH_INFO {got['path']!r} != {want_path!r}")
    if got["query"] != target["query"]:
        problems.append(f"QUERY_STRING {got['query']!r} != {target['query']!r}")
    version = "%d.%d" % expected["version"]
    if got["version"] != version:
        problems.append(f"SERVER_PROTOCOL HTTP/{got['version']} != HTTP/{version}")
    want = _environ_headers(expected["headers"])
    environ = dict(got["environ"])
    if host_added:
        if environ.get("HTTP_HOST") != "corpus.test":
            problems.append("the added Host field is missing")
        environ.pop("HTTP_HOST", None)
    if environ != want:
        problems.append(f"environ headers {environ!r} != {want!r}")
    body = _text(expected["body"])
    if got["body"] != body:
        problems.append(f"body {got['body'][:200]!r} != {body[:200]!r}")
    return problems


def answer(status: int, body: bytes) -> dict[str, Any] | None:
    """The echo application's JSON, or None when the response is not one of its answers."""
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


#: A plain request, to see which worker answers.
PROBE = b"GET /probe HTTP/1.0\r\n\r\n"  # no field: it fits every limit a case sets


def probe_for(args: tuple[str, ...]) -> bytes:
    """PROBE, behind a PROXY header where the server expects one on every connection."""
    if "--proxy-protocol" in args:
        return b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 80\r\n" + PROBE
    return PROBE
