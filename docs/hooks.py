"""mkdocs hooks (mkdocs.yml `hooks:`): the settings reference, generated from the registry at build time.

`settings.md` holds the page's prose and a `<!-- settings-reference -->` marker; `on_page_markdown` puts the
generated reference there, so the page lists exactly what `corral.shared.settings.REGISTRY` declares (other
settings included as they are added). `settings_reference()` is the generator, which
tests/docs/test_docs.py checks against the registry without building the site.

The hook also refuses a page that names an internal work item (the word issue and a number): pages say what
the product does.
"""

from __future__ import annotations

import re
from typing import Any

from corral.shared.settings import REGISTRY, Setting, size

MARKER = "<!-- settings-reference -->"
WORK_ITEM = re.compile(r"[Ii]ssues? #?[0-9]+")

# Section titles and the order of sections on the page; a section not listed here (a new one) comes last,
# under its own name, so that a new setting never breaks the build.
SECTIONS = {
    "server": "Sockets",
    "worker": "Workers, the pool and the application",
    "master": "The master process",
    "http": "HTTP/1.1: limits, timeouts and proxies",
    "timeouts": "Request deadline",
    "websocket": "WebSocket",
    "http2": "HTTP/2",
    "tls": "TLS",
    "logging": "Logging",
    "observability": "Metrics and health checks",
    "compat": "gunicorn carry-over",
    "hooks": "Server hooks (config file only)",
    "reload": "Development reload",
}


def _is_switch(setting: Setting) -> bool:
    return setting.is_flag or isinstance(setting.default, bool)


def metavar(setting: Setting) -> str:
    """The value's placeholder, as `serve --help` shows it."""
    return setting.metavar or setting.name.upper()


def cli_flags(setting: Setting) -> str:
    """The flags as a user types them: `-w WORKERS`, `--workers WORKERS`; `--gc-freeze`, `--no-gc-freeze`."""
    if not setting.cli:
        return "no flag"
    shorts = [flag for flag in setting.flags if not flag.startswith("--")]
    longs = [flag for flag in setting.flags if flag.startswith("--")]
    if _is_switch(setting):
        names = [*shorts, longs[0], f"--no-{longs[0][2:]}"]
        text = ", ".join(f"`{name}`" for name in names)
    else:
        text = ", ".join(f"`{flag} {metavar(setting)}`" for flag in (*shorts, *longs))
    if setting.multiple:
        text += " (repeatable)"
    return text


def default_text(setting: Setting) -> str:
    """The default as a user writes it on the command line or in CORRAL_* (it parses back); "" for none."""
    value = setting.default
    if value is None or value == () or value == "":
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if setting.convert is size and isinstance(value, int) and value:
        for suffix, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value % factor == 0:
                return f"{value // factor}{suffix}"
    if isinstance(value, float):
        return f"{value:g}"
    return setting.show(value)


def config_line(setting: Setting) -> str:
    """The setting at its default in a Python config file (corral.conf.py, gunicorn.conf.py)."""
    value = setting.default
    if isinstance(value, tuple):
        value = list(value)
    if setting.render is not None and value is not None:
        return f"{setting.name} = {setting.render(value)}"
    return f"{setting.name} = {value!r}"


def default_cell(setting: Setting) -> str:
    """The default for a table cell: code when there is a value, *unset* or *empty* in words."""
    text = default_text(setting)
    if text:
        return f"`{_cell(text)}`"
    return "*unset*" if setting.default is None else "*empty*"


def _cell(text: str) -> str:
    """Table-cell text: one line (a `|` inside a code span is no column separator)."""
    return text.replace("\n", " ")


def setting_block(setting: Setting) -> str:
    """One setting: a heading (its config name, which is its anchor) and its four spellings."""
    lines = [
        f"### `{setting.name}` {{#{setting.name}}}",
        "",
        "| command line | environment | config file | default |",
        "|---|---|---|---|",
        (
            f"| {_cell(cli_flags(setting))} | `{setting.env}` | `{_cell(config_line(setting))}` | "
            f"{default_cell(setting)} |"
        ),
        "",
        setting.help,
        "",
    ]
    return "\n".join(lines)


def sections() -> dict[str, list[Setting]]:
    """The registry's settings by section, sections in page order, settings in declaration order."""
    grouped: dict[str, list[Setting]] = {}
    for setting in REGISTRY.values():
        grouped.setdefault(setting.section, []).append(setting)
    order = [name for name in SECTIONS if name in grouped] + [name for name in grouped if name not in SECTIONS]
    return {name: grouped[name] for name in order}


def settings_reference() -> str:
    """The settings reference in markdown: an index table, then every setting of the registry by section."""
    grouped = sections()
    out = [f"{len(REGISTRY)} settings, in {len(grouped)} groups.", ""]
    out += ["| setting | command line | default |", "|---|---|---|"]
    for settings in grouped.values():
        for setting in settings:
            flag = f"`{setting.cli_name}`" if setting.cli else "*config file*"
            out.append(f"| [`{setting.name}`](#{setting.name}) | {flag} | {default_cell(setting)} |")
    out.append("")
    for section, settings in grouped.items():
        title = SECTIONS.get(section, section.replace("_", " ").capitalize())
        out += [f"## {title}", ""]
        out += [setting_block(setting) for setting in settings]
    return "\n".join(out)


def _error(message: str) -> Exception:
    try:
        from mkdocs.exceptions import PluginError  # a clean one-line failure of `mkdocs build`
    except ImportError:  # imported by the tests, without mkdocs
        return ValueError(message)
    return PluginError(message)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    found = WORK_ITEM.search(markdown)
    if found:
        raise _error(
            f"{page.file.src_path} names an internal work item ({found.group(0)!r}): say what the product does instead"
        )
    if page.file.src_path == "settings.md":
        if MARKER not in markdown:
            raise _error(f"settings.md lost its {MARKER} marker: the reference has nowhere to go")
        markdown = markdown.replace(MARKER, settings_reference())
    return markdown
