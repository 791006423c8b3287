"""Throughput scenarios: every server on the same app, loaded in interleaved rounds (A B C A B C ...).

plaintext  hello-world, 13 bytes text/plain (ASGI)        json    a 1 KiB JSON response (ASGI)
close      the hello-world with `Connection: close` on every request: a new connection per request (ASGI)
echo       a 1 MiB request body echoed back (ASGI)        stream  a 10 MiB response in 64 KiB messages (ASGI)
wsgi       hello-world on the WSGI servers                websocket  16-byte WebSocket echo, one message in flight
django     a Django view (ORM query on sqlite) on the WSGI servers
websocket-1mib  1 MiB WebSocket echo (bench/websocket.py's client)
loadgen    the built-in generator next to wrk on corral's plaintext (how close it gets to wrk)
metrics    corral's plaintext with --metrics-bind (workers count every request) vs without, same rounds
h2 h2-json the hello-world and the JSON app over h2c (prior knowledge), h2load -c 16 -m 32: corral, hypercorn,
           granian when installed (all three recognise the preface on cleartext by default)
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from bench import load, procs
from bench.context import Ctx, interleave, least_disturbed, start_each, stop_each

MIB = 1024 * 1024

SCENARIOS: dict[str, dict[str, Any]] = {
    "plaintext": {"app": "bench.apps:hello", "iface": "asgi", "title": "Hello-world plaintext (ASGI)"},
    "close": {
        "app": "bench.apps:hello",
        "iface": "asgi",
        "close": True,
        "title": "Hello-world plaintext, Connection: close on every request (ASGI)",
    },
    "json": {"app": "bench.apps:json_1k", "iface": "asgi", "title": "1 KiB JSON response (ASGI)"},
    "echo": {
        "app": "bench.apps:echo",
        "iface": "asgi",
        "body": MIB,
        "conns": 8,
        "title": "1 MiB request body echoed (ASGI)",
    },
    "stream": {"app": "bench.apps:stream", "iface": "asgi", "conns": 8, "title": "10 MiB streamed response (ASGI)"},
    "wsgi": {"app": "bench.apps:hello_wsgi", "iface": "wsgi", "title": "Hello-world WSGI"},
    "django": {
        "app": "bench.django_site.wsgi:application",
        "iface": "wsgi",
        "title": "Django WSGI view: ten rows from the ORM on sqlite, startproject's middleware",
    },
    "websocket": {
        "app": "bench.apps:ws_echo",
        "iface": "asgi",
        "ws": True,
        "title": "WebSocket echo, 16-byte messages (messages/s)",
    },
    "metrics": {
        "app": "bench.apps:hello",
        "iface": "asgi",
        "metrics": True,
        "title": "Hello-world plaintext, corral with metrics on (--metrics-bind) vs off (ASGI)",
    },
    "websocket-1mib": {
        "app": "bench.apps:ws_echo",
        "iface": "asgi",
        "ws_big": True,
        "conns": 4,
        "title": "WebSocket echo, 1 MiB binary messages (messages/s; client: bench/websocket.py)",
    },
    "tls": {
        "app": "bench.apps:hello",
        "iface": "asgi",
        "tls": True,
        "title": "Hello-world plaintext over TLS 1.3 (HTTP/1.1, keep-alive; the same self-signed certificate)",
    },
    "h2": {
        "app": "bench.apps:hello",
        "iface": "asgi",
        "h2": True,
        "conns": 16,
        "title": "Hello-world plaintext over h2c, 32 streams per connection (ASGI; h2load)",
    },
    "h2-json": {
        "app": "bench.apps:json_1k",
        "iface": "asgi",
        "h2": True,
        "conns": 16,
        "title": "1 KiB JSON over h2c, 32 streams per connection (ASGI; h2load)",
    },
}

H2_SERVERS = ("corral", "hypercorn", "granian")  # the peers that speak h2c
TLS_SERVERS = ("corral", "uvicorn", "gunicorn-uvicorn")  # the TLS scenario: gunicorn's flags and uvicorn's
H2_STREAMS = 32


def _websocket_runner(big: bool) -> Any:
    """Small messages: the built-in generator's WebSocket mode (latency histogram). 1 MiB messages:
    bench/websocket.py's frame-level client (`measure(port, clients, payload, seconds)`), when it exists."""
    if not big:
        return lambda url, duration, connections, cpus: load.run_builtin(url, duration, connections, cpus, ws=True)
    try:
        module = importlib.import_module("bench.websocket")
        measure, payload = module.measure, module.BIG
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"bench/websocket.py has no usable measure(): {exc}") from None

    def run(url: str, duration: float, connections: int, cpus: Any, pid: int = 0) -> dict[str, Any]:
        import inspect

        import uvloop

        port = int(url.rsplit(":", 1)[1].strip("/"))
        # Its signature has moved (it is being written): pass what it names, by name.
        offered = {"port": port, "pid": pid, "clients": connections, "payload": payload, "seconds": duration}
        wanted = inspect.signature(measure).parameters
        missing = [n for n in wanted if n not in offered and wanted[n].default is inspect.Parameter.empty]
        if missing:
            raise RuntimeError(f"bench.websocket.measure wants {missing}: not integrated yet")
        got = uvloop.run(measure(**{n: v for n, v in offered.items() if n in wanted}))
        rate = float(got[0] if isinstance(got, (tuple, list)) else got)
        return {
            "tool": "bench.websocket",
            "rps": rate,
            "mib_s": rate * len(payload) / MIB,
            "errors": 0,
            "error_detail": {},
            "requests": int(rate * duration),
        }

    return run


def _servers(ctx: Ctx, sc: dict[str, Any]) -> tuple[list[str], str | None]:
    """The selected servers a scenario runs on (steps() counts them, run() starts them), or why it cannot run."""
    names = ctx.wsgi if sc["iface"] == "wsgi" else ctx.asgi
    if sc.get("h2"):
        if not load.has_h2load():
            return [], "h2load is not installed (apt-get install nghttp2-client)"
        return [n for n in names if n in H2_SERVERS], None
    if sc.get("tls"):
        if ctx.tool != "wrk":
            return [], "the TLS scenario needs wrk (the built-in generator speaks plain HTTP)"
        return [n for n in names if n in TLS_SERVERS], None
    return names, None


def steps(ctx: Ctx, name: str) -> int:
    if name == "loadgen":
        return 2 * ctx.rounds if load.has_wrk() else 0
    if SCENARIOS[name].get("metrics"):
        return 2 * ctx.rounds if "corral" in ctx.asgi else 0
    return len(_servers(ctx, SCENARIOS[name])[0]) * ctx.rounds


def run(ctx: Ctx, name: str) -> dict[str, Any]:
    if name == "loadgen":
        return run_loadgen(ctx)
    sc = SCENARIOS[name]

    def skipped(reason: str) -> dict[str, Any]:
        ctx.note(name, f"skipped: {reason}")
        return {"title": sc["title"], "kind": "throughput", "runs": {}}

    names, cannot = _servers(ctx, sc)
    if cannot:
        return skipped(cannot)
    conns = min(ctx.connections, sc.get("conns", ctx.connections))
    options: dict[str, Any] = {"threads": 4} if sc["iface"] == "wsgi" else {}
    if sc.get("tls"):
        options["tls"] = self_signed(ctx.logdir)
    try:
        ws_runner = _websocket_runner(bool(sc.get("ws_big"))) if sc.get("ws") or sc.get("ws_big") else None
    except RuntimeError as exc:
        return skipped(str(exc))
    if sc.get("metrics"):  # corral against itself: the cost of counting (the ratio column is vs "corral")
        made = [ctx.server("corral", sc["app"]), ctx.server("corral", sc["app"], label="corral-metrics", metrics=True)]
    else:
        made = [ctx.server(n, sc["app"], **options) for n in names]
    runs: dict[str, list[dict[str, Any]]] = {}
    running = start_each(ctx, made, wait_workers=True)

    def once(server: Any, duration: float) -> dict[str, Any]:
        procs.check_signalled()
        cpu, other, core = procs.CpuMeter(server.pid), procs.OtherLoad(), procs.CoreLoad(ctx.server_cpus, server.pid)
        if sc.get("h2"):
            result = load.run_h2load(server.url, duration, conns, H2_STREAMS, ctx.load_cpus)
        elif ws_runner is not None:
            extra = {"pid": server.worker_pids()[0]} if sc.get("ws_big") else {}
            result = dict(ws_runner(f"ws://{load.HOST}:{server.port}/", duration, conns, ctx.load_cpus, **extra))
        else:
            result = load.run_load(
                ctx.tool,
                server.url,
                duration,
                conns,
                ctx.load_cpus,
                body=sc.get("body", 0),
                close=bool(sc.get("close")),
            )
        result["cpu_cores"] = cpu.stop()
        result["other_cores"] = other.stop()
        result["other_on_server_cpus"] = core.stop()
        result["rss_mib"] = procs.rss_per_worker(server.pid) / MIB
        if not server.alive():
            raise RuntimeError(f"{server.name} died during the run:\n{server.log_tail()}")
        return result

    try:
        for server in running:
            ctx.progress.show(f"{name}: warming up {server.name}")
            try:
                once(server, 0.5 if ctx.quick else max(1.0, ctx.duration / 3))
            except Exception as exc:  # noqa: BLE001 - a server that fails its warm-up is noted, and the others measured
                ctx.note(f"{name}: {server.name} failed its warm-up", f"{type(exc).__name__}: {exc}"[-1500:])
        runs = interleave(
            ctx,
            name,
            running,
            lambda server: least_disturbed(ctx, name, server, lambda: once(server, ctx.duration)),
            lambda r: f"{r['rps']:,.0f}/s, p99 {r.get('p99_ms', float('nan')):.2f} ms, {r['errors']} errors",
        )
    finally:
        stop_each(ctx, made)
    inprocess = None
    if sc.get("metrics"):
        from bench import metrics_cost

        ctx.progress.show("metrics: the in-process Python cost per request")
        inprocess = metrics_cost.measure(rounds=max(5, ctx.rounds * 2), requests=5000 if ctx.quick else 20000)
    return {
        "title": sc["title"],
        "kind": "throughput",
        "iface": sc["iface"],
        "connections": conns,
        "app": sc["app"],
        **({"inprocess": inprocess} if inprocess else {}),
        **({"baseline": "corral"} if sc.get("metrics") else {}),
        "generator": ("bench/websocket.py" if sc.get("ws_big") else "builtin (WebSocket)")
        if ws_runner
        else "h2load"
        if sc.get("h2")
        else ctx.tool,
        "runs": runs,
    }


def run_loadgen(ctx: Ctx) -> dict[str, Any]:
    """wrk and the built-in generator on the same corral plaintext server, interleaved."""
    if not load.has_wrk():
        ctx.note("loadgen", "skipped: wrk is not installed")
        return {"title": "Built-in generator vs wrk", "kind": "loadgen", "runs": {}}
    server = ctx.server("corral", "bench.apps:hello")
    runs: dict[str, list[dict[str, Any]]] = {}
    running = start_each(ctx, [server], wait_workers=True)
    try:
        if running:
            load.run_wrk(server.url, 1, ctx.connections, ctx.load_cpus)
            for rnd in range(1, ctx.rounds + 1):
                for tool in ("wrk", "builtin"):
                    procs.check_signalled()
                    other = procs.OtherLoad()
                    result = load.run_load(tool, server.url, ctx.duration, ctx.connections, ctx.load_cpus)
                    result["other_cores"] = other.stop()
                    runs.setdefault(tool, []).append(result)
                    ctx.progress.step(
                        f"loadgen round {rnd}/{ctx.rounds} {tool}: {result['rps']:,.0f}/s, "
                        f"generator {result['gen_cores']:.2f} cores"
                    )
    finally:
        stop_each(ctx, [server])
    return {
        "title": "Built-in generator vs wrk (corral plaintext, same server)",
        "kind": "loadgen",
        "connections": ctx.connections,
        "runs": runs,
    }


def self_signed(folder: str) -> tuple[str, str]:
    """A throw-away certificate and key for 127.0.0.1 (openssl), made once per run: every server serves it."""
    import subprocess

    cert, key = os.path.join(folder, "bench-cert.pem"), os.path.join(folder, "bench-key.pem")
    if not os.path.exists(cert):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                key,
                "-out",
                cert,
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return cert, key
