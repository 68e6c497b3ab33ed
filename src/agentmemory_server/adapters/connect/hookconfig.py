"""agentmemory's entries in the two hook layouts agents use, added and removed without touching
anyone else's hooks.

- nested (Claude Code, Codex, Gemini CLI): ``hooks: {Event: [{matcher?, hooks: [handler]}]}``;
- flat (Cursor, Copilot CLI): ``hooks: {event: [handler]}``.

A handler is agentmemory's when it posts to ``/agentmemory/hooks/`` or runs ``agentmemory hook``.
Adding replaces agentmemory's handler where it already is, so a second ``connect`` changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentmemory_server.adapters.connect.core import ConnectError
from agentmemory_server.adapters.connect.jsonfile import Doc, prune

Handler = dict[str, Any]


def is_ours(handler: Any) -> bool:
    if not isinstance(handler, dict):
        return False
    text = " ".join(str(handler.get(key, "")) for key in ("url", "command", "bash", "powershell"))
    return "/agentmemory/hooks/" in text or (" hook " in text and "agentmemory" in text)


def _hooks(doc: Doc, create: bool) -> dict[str, Any] | None:
    hooks = doc.get("hooks")
    if hooks is None and create:
        hooks = doc["hooks"] = {}
    if hooks is not None and not isinstance(hooks, dict):
        raise ConnectError("the file's 'hooks' is not an object; nothing was written")
    return hooks


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_our_group(group: Any) -> bool:
    handlers = group.get("hooks") if isinstance(group, dict) else None
    return isinstance(handlers, list) and bool(handlers) and all(is_ours(h) for h in handlers)


def _without_ours(group: Any) -> Any:
    if isinstance(group, dict) and isinstance(group.get("hooks"), list):
        return {**group, "hooks": [h for h in group["hooks"] if not is_ours(h)]}
    return group


def _merge(entries: list[Any], ours: Any, is_ours_entry: Callable[[Any], bool], strip: Callable[[Any], Any]) -> list:
    out, placed = [], False
    for entry in entries:
        if is_ours_entry(entry):
            if not placed:
                out.append(ours)
                placed = True
            continue
        stripped = strip(entry)
        if stripped != entry and isinstance(stripped, dict) and not stripped.get("hooks"):
            continue  # a group that only held agentmemory's handlers
        out.append(stripped)
    if not placed:
        out.append(ours)
    return out


def nested(groups: dict[str, dict[str, Any]]) -> tuple[Callable[[Doc], None], Callable[[Doc], None]]:
    """add/remove for nested hooks; ``groups`` maps an event to the group to place for it."""

    def add(doc: Doc) -> None:
        hooks = _hooks(doc, create=True)
        assert hooks is not None
        for event, group in groups.items():
            hooks[event] = _merge(_list(hooks.get(event)), group, _is_our_group, _without_ours)

    def remove(doc: Doc) -> None:
        hooks = _hooks(doc, create=False)
        if not hooks:
            return
        for event in list(hooks):
            if isinstance(hooks[event], list):
                kept = [_without_ours(g) for g in hooks[event] if not _is_our_group(g)]
                hooks[event] = [g for g in kept if not (isinstance(g, dict) and g.get("hooks") == [])]
                prune(hooks, event)
        prune(doc, "hooks")

    return add, remove


def flat(handlers: dict[str, Handler], extra: dict[str, Any] | None = None) -> tuple[Callable, Callable]:
    """add/remove for flat hooks (``extra`` top-level keys such as ``version`` are set if missing)."""

    def add(doc: Doc) -> None:
        for key, value in (extra or {}).items():
            doc.setdefault(key, value)
        hooks = _hooks(doc, create=True)
        assert hooks is not None
        for event, handler in handlers.items():
            hooks[event] = _merge(_list(hooks.get(event)), handler, is_ours, lambda h: h)

    def remove(doc: Doc) -> None:
        hooks = _hooks(doc, create=False)
        if not hooks:
            return
        for event in list(hooks):
            if isinstance(hooks[event], list):
                hooks[event] = [h for h in hooks[event] if not is_ours(h)]
                prune(hooks, event)
        prune(doc, "hooks")

    return add, remove
