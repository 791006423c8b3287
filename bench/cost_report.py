"""`python -m bench cost`'s results as the docs' benchmark page (cost.md: how to re-run it, a summary per
setting, a table per path and setting), cost.json, and PNG plots per setting (CPU per request, requests/s)."""

from __future__ import annotations

import os
from typing import Any

from bench.context import med
from bench.report import _errors, _table, _vals, spread, write_json

SETTING_TEXT = {
    "pinned": "one worker pinned to one core, the load generator on the other core(s)",
    "saturated": "as many workers as cores, nothing pinned: the load generator shares the machine",
}


def _paired(runs: dict[str, list[dict[str, Any]]], name: str, ref: str, key: str, invert: bool) -> str:
    """The reference's figure over this server's (or the inverse), median of the per-round ratios (min-max)."""
    if name == ref:
        return "1.00"
    pairs = [
        (b[key] / a[key] if invert else a[key] / b[key])
        for a, b in zip(runs.get(ref, []), runs[name])
        if a.get(key) and b.get(key)
    ]
    if not pairs:
        return "-"
    text = f"**{med(pairs):.2f}**"
    return text + (f" ({min(pairs):.2f}-{max(pairs):.2f})" if len(pairs) > 1 else "")


def path_table(setting: str, name: str, sc: dict[str, Any]) -> str:
    lines = [f"#### {setting} · {name}: {sc['title']}", ""]
    runs, ref = sc["runs"], sc.get("reference")
    if not runs:
        return "\n".join([*lines, "(no results: see the notes)"])
    unit = "msg" if name == "websocket" else "req"
    head = [
        "server",
        f"{unit}/s",
        f"{ref} ÷ this, {unit}/s",
        f"CPU µs/{unit}",
        "user µs",
        "system µs",
        f"this ÷ {ref}, CPU",
        f"syscalls/{unit}",
        f"ctx switches/{unit} (vol + invol)",
        "server cores",
        "errors",
    ]
    rows = []
    for server, rs in runs.items():
        calls = sc.get("syscalls", {}).get(server)
        rows.append(
            [
                server,
                spread(_vals(rs, "rps"), ",.0f"),
                _paired(runs, server, ref, "rps", invert=False),
                spread(_vals(rs, "cpu_us"), ".1f"),
                spread(_vals(rs, "cpu_user_us"), ".1f"),
                spread(_vals(rs, "cpu_sys_us"), ".1f"),
                _paired(runs, server, ref, "cpu_us", invert=True),
                f"{calls['per_request']:.1f}" if calls else "-",
                f"{med(_vals(rs, 'csw')):.2f} ({med(_vals(rs, 'vcsw')):.2f} + {med(_vals(rs, 'ivcsw')):.2f})",
                spread(_vals(rs, "server_cores"), ".2f"),
                _errors(rs),
            ]
        )
    lines += _table(head, rows)
    other = [r["other_cores"] for rs in runs.values() for r in rs if "other_cores" in r]
    retried = sum(r.get("retried", 0) for rs in runs.values() for r in rs)
    lines.append(
        f"\nMedians over rounds (min-max). Ratios are per round against {ref}: above 1 means {ref} "
        f"serves more, or spends less CPU. Other processes used {med(other):.2f} cores (median) during "
        f"the runs kept" + (f"; {retried} run(s) repeated because they were busier" if retried else "") + "."
    )
    return "\n".join(lines)


def summary(setting: str, block: dict[str, Any]) -> str:
    """One line per path: corral's CPU per request and rate, and each peer's CPU per request as a multiple of
    corral's (the same rounds)."""
    rows = []
    for name, sc in block["paths"].items():
        runs, ref = sc["runs"], sc.get("reference")
        if not runs or ref not in runs:
            rows.append([name, "-", "-", "(no results)"])
            continue
        peers = ", ".join(
            f"{s} {_paired(runs, s, ref, 'cpu_us', invert=True).replace('**', '').split()[0]}x"
            for s in runs
            if s != ref
        )
        rows.append(
            [name, spread(_vals(runs[ref], "cpu_us"), ".1f"), spread(_vals(runs[ref], "rps"), ",.0f"), peers or "-"]
        )
    return "\n".join(
        _table(
            [
                "path",
                "corral CPU µs/request",
                "corral requests/s",
                "peers' CPU per request, as a multiple of corral's (higher: corral is cheaper)",
            ],
            rows,
        )
    )


def markdown(results: dict[str, Any], images: list[str]) -> str:
    meta = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    parts = [
        "# Benchmarks: what a request costs",
        "",
        (
            "CPU time, system calls and context switches per request for corral and its peers, on the same apps "
            "(`bench/apps.py`), for each way a request can reach a worker, in two settings:"
        ),
        "",
        *(f"- **{s}**: {t}" for s, t in SETTING_TEXT.items() if s in results["settings"]),
        "",
        (
            "CPU per request is the figure to compare: requests/s depends on what else runs on the machine (it swings "
            "2x between rounds on a shared one), the CPU a request takes much less. CPU is user + system time from "
            "`/proc/PID/stat` of every process of the server (master and workers, all threads); context switches "
            "come from `/proc/PID/task/*/status`; system calls from `strace -c -f` in a separate, shorter round "
            f"({meta['syscalls']})."
        ),
        "",
        "## How to re-run",
        "",
        "```",
        "pip install -e '.[bench]'          # uvicorn, gunicorn, hypercorn, granian, matplotlib",
        "apt-get install wrk nghttp2-client strace   # the load generators; strace for the system calls",
        "python -m bench cost                # every path, both settings (about 15 minutes on 2 cores)",
        "python -m bench cost --settings pinned --paths asgi,wsgi --rounds 5 --duration 5",
        "```",
        "",
        (
            "Results go to `bench-results/cost/` (`--out`): this page as `cost.md`, every run in `cost.json`, and "
            "the plots. The deterministic counterpart, instructions per request under valgrind, is the CI guard: "
            "`python -m bench guard` (`bench/cost_baseline.json`)."
        ),
        "",
        "## This run",
        "",
        (
            f"`{meta['command']}`  \n{meta['started']}, {meta['seconds'] / 60:.0f} min; {meta['rounds']} interleaved "
            f"round(s) of {meta['duration']:g} s per server; {meta['cores']} cores; wrk with {meta['connections']} "
            f"connections (WebSocket: as many, one message in flight each), h2load with {meta['h2_connections']} "
            f"connections x {meta['streams']} streams; load average {meta['loadavg_start']:.2f} -> "
            f"{meta['loadavg_end']:.2f}.  \n{versions}"
        ),
    ]
    for setting, block in results["settings"].items():
        parts += [
            "",
            f"## {setting.capitalize()}: {SETTING_TEXT[setting]}",
            "",
            (
                f"Workers per server: {block['workers']}; server cores: {block['server_cpus']}; load generator "
                f"cores: {block['load_cpus']}."
            ),
            "",
            summary(setting, block),
        ]
        for name, sc in block["paths"].items():
            parts += ["", path_table(setting, name, sc)]
    if images:
        parts += ["", "## Plots", ""] + [f"![{os.path.splitext(i)[0]}]({i})" for i in images]
    if results.get("skipped"):
        parts += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items())]
    if results.get("notes"):
        parts += ["", "Notes (failures, server output):", ""] + [
            f"- {k}:\n\n```\n{str(v).strip()[-1500:]}\n```" for k, v in results["notes"].items()
        ]
    return "\n".join(parts) + "\n"


def draw(results: dict[str, Any], folder: str) -> list[str]:
    """cost-cpu-SETTING.png (stacked user/system µs per request) and cost-rps-SETTING.png: a panel per path,
    four to a row, each bar labelled with its figure. [] when matplotlib is missing or nothing ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for setting, block in results["settings"].items():
        paths = {n: sc for n, sc in block["paths"].items() if sc["runs"]}
        if not paths:
            continue
        cols = min(4, len(paths))
        rows = -(-len(paths) // cols)
        for what in ("cpu", "rps"):
            fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
            for ax, (name, sc) in zip(axes.flat, paths.items()):
                servers = list(sc["runs"])
                xs = list(range(len(servers)))
                colors = ["tab:orange" if s.startswith("corral") else "tab:blue" for s in servers]
                if what == "cpu":
                    user = [med(_vals(sc["runs"][s], "cpu_user_us")) for s in servers]
                    system = [med(_vals(sc["runs"][s], "cpu_sys_us")) for s in servers]
                    ax.bar(xs, user, color=colors)
                    bars = ax.bar(xs, system, bottom=user, color=colors, alpha=0.45, hatch="//")
                    labels = [f"{u + y:.0f}" if u + y >= 10 else f"{u + y:.1f}" for u, y in zip(user, system)]
                    ax.set_ylabel(f"CPU µs per {'message' if name == 'websocket' else 'request'}", fontsize=8)
                else:
                    values = [_vals(sc["runs"][s], "rps") for s in servers]
                    mids = [med(v) for v in values]
                    err = [[m - min(v) for m, v in zip(mids, values)], [max(v) - m for m, v in zip(mids, values)]]
                    bars = ax.bar(xs, mids, yerr=err, capsize=3, color=colors)
                    labels = [f"{m / 1000:.1f}k" for m in mids]
                    ax.set_ylabel("messages/s" if name == "websocket" else "requests/s", fontsize=8)
                ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
                ax.margins(y=0.15)
                ax.set_title(f"{name}: {sc['title']}", fontsize=8)
                ax.set_xticks(xs)
                ax.set_xticklabels(servers, rotation=30, ha="right", fontsize=7)
                ax.tick_params(axis="y", labelsize=7)
            for ax in list(axes.flat)[len(paths) :]:
                ax.axis("off")
            title = (
                "CPU per request, user (solid) + system (hatched), medians: lower is better"
                if what == "cpu"
                else "requests/s, medians (bars: min-max over rounds): higher is better"
            )
            fig.suptitle(f"{setting} ({SETTING_TEXT[setting]}): {title}", fontsize=9)
            fig.tight_layout()
            path = os.path.join(folder, f"cost-{what}-{setting}.png")
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


def write(results: dict[str, Any], folder: str, plots: bool = True) -> list[str]:
    """cost.md first, then cost.json and the plots; returns the paths written."""
    images = draw(results, folder) if plots else []
    md = os.path.join(folder, "cost.md")
    with open(md, "w") as f:
        f.write(markdown(results, [os.path.basename(i) for i in images]))
    write_json(results, os.path.join(folder, "cost.json"))
    return [md, os.path.join(folder, "cost.json"), *images]
