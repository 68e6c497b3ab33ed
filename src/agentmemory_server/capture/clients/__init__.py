"""Hook payload formats of the coding agents the server accepts raw (``POST /hooks/<client>``).

One small module per client reads its documented payloads into a ``HookEvent`` and shapes the
answer in the client's own output format; ``capture/client_hooks.py`` stores the event through
the observation pipeline. docs/clients.md lists the documentation each format was checked against.
"""

from __future__ import annotations

from agentmemory_server.capture.clients import claude_code, cline, codex, copilot, cursor, gemini, opencode
from agentmemory_server.capture.clients.base import Mapper

MAPPERS: dict[str, Mapper] = {
    m.name: m
    for m in (
        claude_code.MAPPER,
        codex.MAPPER,
        cursor.MAPPER,
        gemini.MAPPER,
        gemini.ANTIGRAVITY,
        cline.MAPPER,
        copilot.MAPPER,
        opencode.MAPPER,
    )
}
