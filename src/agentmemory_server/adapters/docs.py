"""Regenerate the tables in README.md, AGENTS.md and docs/*.md from the code.

``.venv/bin/python -m agentmemory_server.adapters.docs`` rewrites every block between
``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->`` in those files; ``... --check`` changes
nothing and exits 1 when a block is stale (tests/test_docs.py runs the same check). Blocks:
``config`` (settings), ``routes`` (every HTTP route of the app), ``tools`` (every MCP tool),
``errors`` (the error-code catalogue), ``scopes`` (record scopes), ``events`` (live event
types), ``cli`` (the ``agentmemory`` commands), ``backupconfig`` (the backup sidecar's
environment variables). A block name this module does not know is left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from agentmemory_server import errors
from agentmemory_server.adapters import cli
from agentmemory_server.kernel import events, registry, scopes
from agentmemory_server.kernel import settings as settings_module

ROOT = Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"(<!-- BEGIN (\w+) -->\n)(.*?)(<!-- END \2 -->)", re.DOTALL)


def _first_line(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def route_rows() -> list[tuple[str, str, str]]:
    """(methods, path, description) of every route the app serves."""
    from agentmemory_server.adapters.web import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {"AGENTMEMORY_DATA_DIR": tmp, "AGENTMEMORY_BACKGROUND_JOBS": "false", "AGENTMEMORY_AUTH": "off"}
        )
        try:
            tools = {t.name: t for t in registry.REGISTRY.all()}
            rows = []
            for rule in app.url_map.iter_rules():
                methods = sorted(m for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
                name = rule.endpoint.split(":")[0]
                desc = (
                    tools[name].description if name in tools else _first_line(app.view_functions[rule.endpoint].__doc__)
                )
                path = re.sub(r"<(?:\w+:)?(\w+)>", r":\1", rule.rule)
                rows.append((", ".join(methods), path, desc))
        finally:
            app.extensions["agentmemory"].close()
    return sorted(rows, key=lambda r: (r[1], r[0]))


def routes_table() -> str:
    lines = ["| Method | Path | What it does |", "|---|---|---|"]
    lines += [f"| {m} | `{p}` | {d} |" for m, p, d in route_rows()]
    return "\n".join(lines)


def tools_table() -> str:
    lines = ["| Tool | Core | REST route | What it does |", "|---|---|---|---|"]
    for t in registry.REGISTRY.mcp_tools("all"):
        rest = ", ".join(f"{r.method} `/agentmemory{r.path}`" for r in t.routes) or "`POST /agentmemory/mcp/call`"
        lines.append(f"| `{t.name}` | {'yes' if t.core else ''} | {rest} | {t.description} |")
    return "\n".join(lines)


def backup_settings_table() -> str:
    """The environment variables of sync.py (the standalone backup sidecar at the repo root)."""
    from agentmemory_server.storage.sqlite import hf_sync as sync

    def shown(value: object) -> str:
        if value is None:
            return "(unset)"
        text = (
            str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
        )
        return f"`{text}`"

    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{s.env}` | {shown(s.default)} | {s.help} |" for s in sync.SYNC_SETTINGS]
    return "\n".join(lines)


def errors_table() -> str:
    lines = ["| Code | Status | Meaning |", "|---|---|---|"]
    lines += [f"| `{e.code}` | {e.status} | {e.meaning} |" for e in errors.CATALOGUE.values()]
    return "\n".join(lines)


def scopes_table() -> str:
    lines = ["| Scope | Key | Value |", "|---|---|---|"]
    lines += [f"| `{s.name}` | {s.key} | {s.value} |" for s in scopes.SCOPES]
    return "\n".join(lines)


def events_table() -> str:
    lines = ["| Event `type` | `record` |", "|---|---|"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in events.EVENT_TYPES.items()]
    return "\n".join(lines)


def cli_table() -> str:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in commands._choices_actions}
    lines = ["| Command | Options | What it does |", "|---|---|---|"]
    for name, sub in commands.choices.items():
        options = []
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            flag = action.option_strings[-1] if action.option_strings else action.dest.upper()
            options.append(
                f"`{flag}{' ' + action.dest.upper() if action.option_strings and action.nargs != 0 else ''}`"
            )
        lines.append(f"| `agentmemory {name}` | {' '.join(options)} | {helps.get(name, '')} |")
    return "\n".join(lines)


GENERATORS = {
    "errors": errors_table,
    "scopes": scopes_table,
    "events": events_table,
    "cli": cli_table,
    "config": settings_module.markdown_table,
    "routes": routes_table,
    "tools": tools_table,
    "backupconfig": backup_settings_table,
}


def render(text: str) -> str:
    cache: dict[str, str] = {}

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in GENERATORS:
            return match.group(0)
        if name not in cache:
            cache[name] = GENERATORS[name]()
        return f"{match.group(1)}{cache[name]}\n{match.group(4)}"

    return BLOCK.sub(replace, text)


def documents() -> list[Path]:
    """Every file that may hold generated blocks: README.md, AGENTS.md and docs/*.md."""
    return [ROOT / "README.md", ROOT / "AGENTS.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str]) -> int:
    stale = []
    for path in documents():
        current = path.read_text(encoding="utf-8")
        fresh = render(current)
        if fresh != current:
            stale.append(str(path.relative_to(ROOT)))
            if "--check" not in argv:
                path.write_text(fresh, encoding="utf-8")
    if stale and "--check" in argv:
        print(
            f"stale generated blocks in {', '.join(stale)}; run: .venv/bin/python -m agentmemory_server.adapters.docs",
            file=sys.stderr,
        )
        return 1
    print("updated " + ", ".join(stale) if stale else "docs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
