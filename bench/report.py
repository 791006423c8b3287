"""The results as a markdown table per scenario (medians, min-max over rounds, ratio to a baseline), a JSON
file for machines, and PNG plots (throughput per server per scenario; latency percentiles)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from bench.context import med


def _vals(rs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rs if isinstance(r.get(key), (int, float)) and r[key] == r[key]]


def spread(values: list[float], fmt: str, scale: float = 1.0) -> str:
    values = [v * scale for v in values if math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1 or min(values) == max(values):
        return format(med(values), fmt)
    return f"{format(med(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _ratio(runs: dict[str, list[dict[str, Any]]], name: str, baseline: str | None, key: str) -> str:
    if not baseline or baseline not in runs:
        return "-"
    if name == baseline:
        return "1.00"
    base = med(_vals(runs[baseline], key))
    if not base:
        return "-"
    paired = [a[key] / b[key] for a, b in zip(runs[name], runs[baseline]) if b.get(key)]
    text = f"**{med(_vals(runs[name], key)) / base:.2f}**"
    if len(paired) > 1:
        text += f" ({min(paired):.2f}-{max(paired):.2f})"
    return text


def _errors(rs: list[dict[str, Any]]) -> str:
    total: dict[str, int] = {}
    for r in rs:
        for k, v in (r.get("error_detail") or {}).items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in total.items() if v) or str(sum(r.get("errors", 0) for r in rs))


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def table(name: str, sc: dict[str, Any], baseline: str | None) -> str:
    runs = sc["runs"]
    kind = sc["kind"]
    lines = [f"### {name}: {sc['title']}", ""]
    if not runs:
        return "\n".join([*lines, "(no results: see the notes)"])
    if baseline not in runs:
        baseline = None
    if kind == "throughput":
        unit = "msg/s" if name.startswith("websocket") else "req/s"
        mib = name in ("echo", "stream", "websocket-1mib")
        head = [
            "server",
            f"{unit} median (min-max)",
            f"vs {baseline or '-'}",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "RSS/worker MiB",
            "CPU cores",
        ] + (["MiB/s"] if mib else [])
        rows = []
        for server, rs in runs.items():
            rows.append(
                [
                    server,
                    spread(_vals(rs, "rps"), ",.0f"),
                    _ratio(runs, server, baseline, "rps"),
                    spread(_vals(rs, "p50_ms"), ".2f"),
                    spread(_vals(rs, "p99_ms"), ".2f"),
                    spread(_vals(rs, "p999_ms"), ".2f"),
                    _errors(rs),
                    spread(_vals(rs, "rss_mib"), ".1f"),
                    spread(_vals(rs, "cpu_cores"), ".2f"),
                ]
                + ([spread(_vals(rs, "mib_s"), ",.0f")] if mib else [])
            )
        lines += _table(head, rows)
        retried = sum(r.get("retried", 0) for rs in runs.values() for r in rs)
        other = [r["other_cores"] for rs in runs.values() for r in rs if "other_cores" in r]
        core = [
            r["other_on_server_cpus"] for rs in runs.values() for r in rs if r.get("other_on_server_cpus") is not None
        ]
        lines.append(
            f"\n{sc.get('connections')} connections, generator: {sc.get('generator')}; other processes "
            f"used {med(other):.2f} cores (median), {max(other):.2f} (max) during the runs kept"
            + (f", {med(core):.2f} (max {max(core):.2f}) on the servers' cores" if core else "")
            + (f"; {retried} run(s) repeated because they were busier than that" if retried else "")
            + "."
        )
        if name == "metrics":
            # Throughput ratios swing with whatever else shares the machine; server CPU per request less.
            cost = {
                server: med([r["cpu_cores"] / r["rps"] * 1e6 for r in rs if r.get("rps")])
                for server, rs in runs.items()
            }
            lines.append(
                "\nServer CPU per request (median of rounds): "
                + ", ".join(f"{server} {us:.2f} µs" for server, us in cost.items())
                + "."
            )
            own = sc.get("inprocess")
            if own:
                lines.append(
                    f"In-process, the worker's Python path alone (bench/metrics_cost.py, {own['rounds']} "
                    f"interleaved rounds): {own['off_us']:.2f} µs per request off, {own['on_us']:.2f} µs on: "
                    f"**{own['ratio']:.3f}** ({own['ratio_min']:.3f}-{own['ratio_max']:.3f})."
                )
    elif kind == "loadgen":
        rows = [
            [
                tool,
                spread(_vals(rs, "rps"), ",.0f"),
                _ratio(runs, tool, "wrk", "rps"),
                spread(_vals(rs, "p99_ms"), ".2f"),
                spread(_vals(rs, "gen_cores"), ".2f"),
                spread([r["rps"] / r["gen_cores"] for r in rs if r.get("gen_cores")], ",.0f"),
            ]
            for tool, rs in runs.items()
        ]
        lines += _table(
            ["generator", "req/s", "vs wrk", "p99 ms", "generator cores", "req/s per generator core (its ceiling)"],
            rows,
        )
        lines.append(
            "\nThe server sets the pace while the generator uses less than its cores; the last column is "
            "the rate at which one load core would be saturated."
        )
    elif kind == "idle":
        rows = [
            [
                server,
                spread(_vals(rs, "rss_mib"), ".1f"),
                spread(_vals(rs, "rss_with_mib"), ".1f"),
                spread(_vals(rs, "kib_per_conn"), ".2f"),
                _ratio(runs, server, baseline, "kib_per_conn"),
                spread(_vals(rs, "kib_returned"), ".2f") if all("kib_returned" in r for r in rs) else "-",
                spread(_vals(rs, "held"), ",.0f"),
                str(sum(r["errors"] for r in rs)),
            ]
            for server, rs in runs.items()
        ]
        lines += _table(
            [
                "server",
                "RSS/worker idle MiB",
                f"RSS/worker with {sc['connections']:,} conns MiB",
                "KiB per idle conn",
                f"vs {baseline or '-'}",
                "KiB per conn returned after the close",
                "conns held",
                "client errors",
            ],
            rows,
        )
    elif kind == "latency":
        rows = [
            [
                server,
                spread(_vals(rs, "p50_us"), ",.0f"),
                _ratio(runs, server, baseline, "p50_us"),
                spread(_vals(rs, "p99_us"), ",.0f"),
                spread(_vals(rs, "mean_us"), ",.0f"),
                spread(_vals(rs, "max_us"), ",.0f"),
                spread(_vals(rs, "reconnects"), ",.0f"),
                _errors(rs),
            ]
            for server, rs in runs.items()
        ]
        lines += _table(
            [
                "server",
                "p50 µs median (min-max)",
                f"p50 vs {baseline or '-'}",
                "p99 µs",
                "mean µs",
                "max µs",
                "reconnects",
                "errors",
            ],
            rows,
        )
        lines.append(
            "\nOne connection, one request in flight: the client (a raw socket, on the load cores) sends "
            "the next request once the response is read; lower is better. Reconnects: the server closed "
            "the connection (a cap on requests per connection); the client reconnected, outside the timing."
        )
    elif kind == "coldstart":
        counts = sorted({r["workers"] for rs in runs.values() for r in rs})
        servers = list(dict.fromkeys(k.rsplit(" -w ", 1)[0] for k in runs))
        rows = [
            [server] + [spread(_vals(runs.get(f"{server} -w {n}", []), "first_200_s"), ",.0f", 1000) for n in counts]
            for server in servers
        ]
        lines += _table(["server"] + [f"-w {n}: ms to first 200" for n in counts], rows)
    elif kind == "fairness":
        rows = []
        for server, rs in runs.items():
            mid = sorted(rs, key=lambda r: r["max_min"])[len(rs) // 2]
            rows.append(
                [
                    server,
                    spread(_vals(rs, "rps"), ",.0f"),
                    " / ".join(map(str, mid["per_worker"])),
                    spread(_vals(rs, "max_min"), ".2f"),
                    spread(_vals(rs, "min_share"), ".2f"),
                    _errors(rs),
                ]
            )
        lines += _table(
            [
                "server",
                "req/s",
                "requests per worker (median round)",
                "max/min",
                "smallest share (1.00 = even)",
                "errors",
            ],
            rows,
        )
    elif kind in ("crash", "hup"):
        rows = []
        for server, rs in runs.items():
            rows.append(
                [
                    server,
                    spread(_vals(rs, "errors"), ",.0f"),
                    spread(_vals(rs, "replacement_s"), ",.0f", 1000),
                    spread(_vals(rs, "spawned_s"), ",.0f", 1000),
                ]
                + ([spread(_vals(rs, "old_gone_s"), ",.0f", 1000)] if kind == "hup" else [])
                + [
                    spread(_vals(rs, "p99_ms"), ".1f"),
                    spread(_vals(rs, "p999_ms"), ".1f"),
                    spread(_vals(rs, "max_ms"), ".0f"),
                    spread(_vals(rs, "rps"), ",.0f"),
                    "/".join(str(r["workers_after"]) for r in rs),
                ]
            )
        head = (
            [
                "server",
                "failed requests" if kind == "hup" else "requests lost",
                "new worker serving after ms",
                "new worker process after ms",
            ]
            + (["old workers gone after ms"] if kind == "hup" else [])
            + ["p99 ms", "p99.9 ms", "max ms", "req/s", "workers after, per round (0: server exited)"]
        )
        lines += _table(head, rows)
    return "\n".join(lines)


def markdown(results: dict[str, Any], baseline: str, wsgi_baseline: str) -> str:
    meta = results["meta"]
    parts = [
        f"`{meta['command']}`  \n{meta['started']}, {meta['seconds']:.0f} s; {meta['rounds']} interleaved "
        f"round(s) of {meta['duration']:g} s; servers on cpu {meta['server_cpus']}, load on cpu "
        f"{meta['load_cpus']} ({meta['generator']}); {meta['workers']} worker(s) per server "
        f"({meta['process_workers']} in fairness/crash/hup); load average {meta['loadavg_start']:.2f} -> "
        f"{meta['loadavg_end']:.2f}; other processes used {meta['other_cores']:.2f} cores (median over runs)."
        f"  \n" + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    ]
    for name, sc in results["scenarios"].items():
        parts.append(table(name, sc, sc.get("baseline") or (wsgi_baseline if sc.get("iface") == "wsgi" else baseline)))
    if results.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items()))
    return "\n\n".join(parts) + "\n"


def _clean(value: Any) -> Any:
    """NaN and infinities become null: the file is strict JSON."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, set):
        return sorted(value)
    return value


def write_json(results: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(_clean(results), f, indent=2, allow_nan=False, default=str)


def plots(results: dict[str, Any], folder: str) -> list[str]:
    """throughput.png and latency.png; [] when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    scen = {n: s for n, s in results["scenarios"].items() if s["kind"] == "throughput" and s["runs"]}
    if not scen:
        return []
    written = []
    cols = min(3, len(scen))
    rows = math.ceil(len(scen) / cols)
    for what in ("throughput", "latency"):
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
        for ax, (name, sc) in zip(axes.flat, scen.items()):
            servers = list(sc["runs"])
            xs = range(len(servers))
            if what == "throughput":
                values = [_vals(sc["runs"][s], "rps") for s in servers]
                mids = [med(v) for v in values]
                err = [[m - min(v) for m, v in zip(mids, values)], [max(v) - m for m, v in zip(mids, values)]]
                ax.bar(
                    xs,
                    mids,
                    yerr=err,
                    capsize=3,
                    color=["tab:orange" if s.startswith("corral") else "tab:blue" for s in servers],
                )
                ax.set_ylabel("msg/s" if name.startswith("websocket") else "req/s")
            else:
                for i, (key, label) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))):
                    ax.bar(
                        [x + (i - 1) * 0.27 for x in xs],
                        [med(_vals(sc["runs"][s], key)) for s in servers],
                        width=0.27,
                        label=label,
                    )
                ax.set_yscale("log")
                ax.set_ylabel("ms")
                ax.legend(fontsize=7)
            ax.set_title(name, fontsize=10)
            ax.set_xticks(list(xs))
            ax.set_xticklabels(servers, rotation=30, ha="right", fontsize=8)
        for ax in list(axes.flat)[len(scen) :]:
            ax.axis("off")
        fig.suptitle(
            f"{what}: medians over {results['meta']['rounds']} round(s)"
            + (" (bars: min-max)" if what == "throughput" else ""),
            fontsize=11,
        )
        fig.tight_layout()
        path = os.path.join(folder, f"{what}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
