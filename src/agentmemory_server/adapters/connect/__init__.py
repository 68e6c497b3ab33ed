"""``agentmemory connect <client>`` / ``disconnect`` / ``status``: an agent's hook and MCP config.

Each client is a function from ``Options`` to the ``Edit``s of its config files (``agents.py``,
``others.py``); ``core.py`` shows the diff, keeps the originals and writes. docs/clients.md says
which documentation each format comes from and how each client gets the token.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentmemory_server.adapters.connect import agents, others
from agentmemory_server.adapters.connect.core import (
    Change,
    Edit,
    Manifest,
    Options,
    ScopeError,
    apply,
    diff,
    plan,
    revert,
)
from agentmemory_server.adapters.hook_client import local_url
from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel import auth
from agentmemory_server.kernel.settings import Settings


@dataclass(frozen=True)
class Client:
    name: str
    title: str
    build: Callable[[Options], list[Edit]]
    hooks: bool  # False: MCP only
    token_in_config: bool = False  # needs the token written (Claude Code's http hooks)
    mcp_token_from_env: bool = False  # its --mcp http entry names $AGENTMEMORY_SECRET, not the token
    mcp_modes: tuple[str, ...] = ("stdio", "http", "none")  # the --mcp choices its config can express


NOTES = {
    "claude-code": "Restart Claude Code to load the hooks. SessionStart runs `agentmemory hook claude-code` "
    "(Claude Code takes only command hooks there); every other event posts to the server directly.",
    "codex": "Open /hooks in Codex once to review and trust the new hooks: Codex skips hooks it has not trusted.",
    "cursor": "Cursor reloads hooks.json on save; its Hooks output channel shows each run.",
    "antigravity": "The MCP server goes to ~/.gemini/config/mcp_config.json, which every workspace shares.",
    "gemini": "Restart Gemini CLI to load the hooks.",
    "opencode": "Restart OpenCode to load the plugin.",
    "cline": "Cline runs one script per hook type; turn hooks on in Cline's settings if they are off.",
    "copilot": "Copilot CLI loads hooks when a session starts.",
}
DURABLE_NOTE = (
    "Restart Claude Code to load the hooks. Every event runs `agentmemory hook claude-code`, which keeps "
    "what the server does not take and sends it later; tool events run in the background (Claude Code 2.1+)."
)


ANTIGRAVITY_PROJECT_NOTE = (
    "Antigravity keeps one MCP config for every workspace, so this project got its hooks only: "
    "`agentmemory connect antigravity` (user scope) adds the MCP server to ~/.gemini/config/mcp_config.json."
)


def note(name: str, o: Options) -> str | None:
    """What to do next after connecting ``name``, as ``o`` configured it."""
    if name == "claude-code" and o.durable_hooks:
        return DURABLE_NOTE
    if name == "antigravity" and o.mcp != "none" and o.scope == "project":  # its MCP file is not per project
        return ANTIGRAVITY_PROJECT_NOTE
    if name == "antigravity" and o.mcp == "none":
        return None
    return NOTES.get(name)


CLIENTS: dict[str, Client] = {
    c.name: c
    for c in (
        Client("claude-code", "Claude Code", agents.claude_code, True, token_in_config=True),
        Client("codex", "Codex CLI", agents.codex, True, mcp_token_from_env=True),
        Client("cursor", "Cursor", agents.cursor, True),
        Client("antigravity", "Antigravity CLI", agents.antigravity, True),
        Client("gemini", "Gemini CLI", agents.gemini, True, mcp_token_from_env=True),
        Client("opencode", "OpenCode", others.opencode, True, mcp_modes=("stdio", "none")),
        Client("cline", "Cline", others.cline, True),
        Client("copilot", "GitHub Copilot CLI", agents.copilot, True, mcp_token_from_env=True),
        Client("continue", "Continue", others.continue_dev, False, mcp_modes=("stdio",)),
        Client("zed", "Zed", others.zed, False, mcp_modes=("stdio",)),
        Client("goose", "Goose", others.goose, False, mcp_modes=("stdio",)),
        Client("windsurf", "Windsurf", others.windsurf, False, mcp_token_from_env=True, mcp_modes=("stdio", "http")),
    )
}


def mcp_token_note(name: str, o: Options) -> str | None:
    """What to do when the agent reads the /mcp token from an environment variable that is not
    exported (``o.token`` is set only then): unset, the agent sends no token and gets 401, which
    most agents show as a server that failed to start."""
    client = CLIENTS[name]
    if o.mcp != "http" or not client.mcp_token_from_env or not o.token:
        return None
    secret = shlex.quote(str(o.data_dir / "secret"))
    return (
        f"{client.title} reads the token for {o.url}/mcp from AGENTMEMORY_SECRET, which is not exported here: "
        f'export AGENTMEMORY_SECRET="$(cat {secret})" in the shell profile {client.title} starts from, '
        "or connect with --mcp stdio (agentmemory-mcp reads the token file itself)."
    )


def command_path(name: str) -> str:
    """The installed console script ``name`` (beside this Python first, then on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or name


def options(
    settings: Settings,
    *,
    url: str | None,
    scope: str,
    mcp: str,
    write_token: bool,
    durable_hooks: bool = False,
    home: Path | None = None,
    cwd: Path | None = None,
) -> Options:
    """Options from the settings and flags; the token is only included where it will be written
    (AGENTMEMORY_SECRET already in the environment means the agent gets it from there). The server
    is ``url``, else AGENTMEMORY_URL (a team's server, as ``hook`` and ``status`` read it), else
    this machine's."""
    token = auth.client_token(settings)
    source = "--url" if url else "AGENTMEMORY_URL" if os.environ.get("AGENTMEMORY_URL") else "the settings' HOST:PORT"
    server = (url or os.environ.get("AGENTMEMORY_URL") or local_url(settings)).rstrip("/")
    in_env = bool(os.environ.get("AGENTMEMORY_SECRET"))
    return Options(
        url=checked_url(server, source),
        scope=scope,
        home=home or Path.home(),
        cwd=cwd or Path.cwd(),
        # A project's config is committed and shared: it names the commands, found on each PATH.
        hook_command=shlex.quote(command_path("agentmemory")) if scope == "user" else "agentmemory",
        mcp_command=command_path("agentmemory-mcp") if scope == "user" else "agentmemory-mcp",
        mcp=mcp,
        token=token if write_token and not in_env else None,
        literal_token=token if write_token else None,
        data_dir=settings.secret_path.parent,
        durable_hooks=durable_hooks,
        pin_url=scope == "user" or bool(url or os.environ.get("AGENTMEMORY_URL")),
    )


def checked_url(url: str, source: str) -> str:
    """``url`` when it is an http(s) address with a host: every hook command and MCP entry is built
    from it, and a typo would otherwise be written into each agent's config, to fail there later."""
    if not _is_http_address(url):
        raise InvalidInput(
            f"{source} {url!r} is not the server's address: give it as http://HOST:PORT",
            field="url",
        )
    return url


def _is_http_address(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:  # an unclosed IPv6 bracket, a port out of range
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


def _manifest(o: Options, name: str) -> Manifest:
    stem = f"{name}-{o.scope}"
    if o.scope == "project":
        stem += "-" + hashlib.sha256(str(o.cwd.resolve()).encode()).hexdigest()[:12]
    return Manifest.load(o.data_dir / "connect" / f"{stem}.json")


def edits_for(name: str, o: Options) -> list[Edit]:
    client = CLIENTS[name]
    if not client.token_in_config and o.mcp != "http":  # only an http MCP entry may need the token
        o = replace(o, token=None, literal_token=None)
    return client.build(o)


def prepare(name: str, o: Options) -> tuple[list[Change], str]:
    client = CLIENTS[name]
    if o.mcp not in client.mcp_modes:  # said plainly rather than writing another kind of entry, or none
        raise InvalidInput(
            f"{client.title} takes --mcp {' or '.join(client.mcp_modes)}, not --mcp {o.mcp}; nothing was written",
            field="mcp",
        )
    changes = plan(edits_for(name, o))
    return changes, diff(changes, (o.token or "", o.literal_token or ""))


def connect(name: str, o: Options, changes: list[Change]) -> dict[str, Any]:
    manifest = _manifest(o, name)
    if not any(c.changed for c in changes):
        return {"client": name, "changed": [], "files": [str(c.edit.path) for c in changes]}
    manifest.url = o.url
    written = apply(changes, manifest, manifest.path.with_suffix(".backups"))
    return {"client": name, "changed": [str(p) for p in written], "files": [str(c.edit.path) for c in changes]}


def disconnect(name: str, o: Options) -> dict[str, Any]:
    manifest = _manifest(o, name)
    done = revert(edits_for(name, replace(o, url=manifest.url or o.url)), manifest)
    return {"client": name, "files": [{"path": str(p), "result": r} for p, r in done]}


MARKERS = ("/agentmemory/hooks/", " hook ", "agentmemory-mcp", "agentmemory connect", '"agentmemory":', "agentmemory:")


def connected_files(name: str, o: Options) -> list[str]:
    """Which of a client's config files hold agentmemory's entries now."""
    found = []
    for edit in edits_for(name, o):
        try:
            text = edit.path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            continue
        if "agentmemory" in text and any(marker in text for marker in MARKERS):
            found.append(str(edit.path))
    return found


def runs_own_hooks(name: str, files: list[str]) -> bool:
    """Whether the hooks in ``files`` are this client's: Gemini CLI and Antigravity CLI share
    ~/.gemini/settings.json, and each one's hook command names it (``hook gemini``)."""
    # "hook gemini" ends where the name does (a project's commands may end there, with no --url).
    own = re.compile(rf"( hook {re.escape(name)}(?![\w-])|/agentmemory/hooks/{re.escape(name)}\b)")
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            continue
        if own.search(text):
            return True
    return False


def status(o: Options) -> list[dict[str, Any]]:
    """Each client: whether its config holds agentmemory's entries, and the server ``connect``
    wrote into them (``url``, None when unknown)."""
    rows = []
    for name, client in CLIENTS.items():
        try:
            files = connected_files(name, o)
        except ScopeError:
            files = []
        connected = bool(files) and (not client.hooks or runs_own_hooks(name, files))
        url = _manifest(o, name).url if connected else None
        rows.append(
            {
                "client": name,
                "title": client.title,
                "hooks": client.hooks,
                "connected": connected,
                "files": files,
                "url": url,
            }
        )
    return rows
