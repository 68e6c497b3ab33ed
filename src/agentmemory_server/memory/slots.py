"""Slots: named, size-limited text blocks an agent keeps pinned into its context (U§4.6b).

Two scopes. ``global`` slots are shared by every project; ``project`` slots belong to one
project and are stored per project, so two projects never see each other's slots (upstream
keeps "project" slots in one flat namespace, its issue #1108). Project-scope slots written
without a project live in upstream's flat ``mem:slots`` scope. Reads look in the project first,
then global. In isolated agent scope every agent has its own slot namespace.

The default slots (persona, user_preferences, tool_guidelines, project_context, guidance,
pending_items, session_patterns, self_notes) always exist: until written they are empty
templates, and deleting one resets it to its template.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from agentmemory_server import errors
from agentmemory_server.errors import Conflict, Forbidden, NotFound, PayloadTooLarge
from agentmemory_server.kernel.access import agent_filter, isolated, stamp_agent
from agentmemory_server.kernel.hooks import PINNED, Block, BlockRequest
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.registry import PROJECT, Ctx, Reply, boolean, integer, params, string, tool
from agentmemory_server.kernel.scopes import SLOTS, SLOTS_PREFIX

LABEL_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
MAX_SIZE = 20_000
DEFAULT_SIZE = 2000
SCOPES = ("project", "global")

# label, sizeLimit, pinned, scope, description
DEFAULT_SLOTS: tuple[tuple[str, int, bool, str, str], ...] = (
    ("persona", 1000, True, "global", "Who the agent is and how it should work"),
    ("user_preferences", 2000, True, "global", "What the user likes and dislikes"),
    ("tool_guidelines", 1500, True, "global", "How to use the tools of this environment"),
    ("project_context", 3000, True, "project", "What this project is; files touched recently"),
    ("guidance", 1500, True, "project", "Rules and conventions for this project"),
    ("pending_items", 2000, True, "project", "Open TODOs carried between sessions"),
    ("session_patterns", 1500, False, "project", "What recent sessions looked like"),
    ("self_notes", 1500, False, "project", "The agent's own scratch notes"),
)
_DEFAULTS = {d[0]: d for d in DEFAULT_SLOTS}


# -- where a slot lives -------------------------------------------------------------------------------


def storage_scope(ctx: Ctx, scope: str, project: str | None) -> str:
    """The kv scope of a slot. Parts are percent-encoded so no project or agent id can make
    two namespaces collide."""
    base = SLOTS
    if isolated(ctx):
        base = f"{SLOTS_PREFIX}agent:{quote(agent_filter(ctx) or '', safe='')}"
    if scope == "global":
        return f"{base}:global"
    return f"{base}:project:{quote(project, safe='')}" if project else base


def template(label: str, project: str | None) -> dict[str, Any] | None:
    if label not in _DEFAULTS:
        return None
    _label, size, pinned, scope, description = _DEFAULTS[label]
    slot = {
        "label": label,
        "content": "",
        "sizeLimit": size,
        "description": description,
        "pinned": pinned,
        "readOnly": False,
        "scope": scope,
        "default": True,
        "createdAt": None,
        "updatedAt": None,
    }
    if scope == "project" and project:
        slot["project"] = project
    return slot


def _candidates(scope: str | None) -> tuple[str, ...]:
    return (scope,) if scope else ("project", "global")


def load_slot(ctx: Ctx, store, label: str, project: str | None, scope: str | None = None) -> dict[str, Any] | None:
    """The slot a read of ``label`` sees: stored project slot, stored global slot, then the
    default template (None if none applies)."""
    for candidate in _candidates(scope):
        stored = store.records.get(storage_scope(ctx, candidate, project), label)
        if stored is not None:
            return stored
    fallback = template(label, project)
    if fallback is not None and (scope is None or fallback["scope"] == scope):
        return fallback
    return None


def require_slot(ctx: Ctx, store, label: str, project: str | None, scope: str | None) -> dict[str, Any]:
    slot = load_slot(ctx, store, label, project, scope)
    if slot is None:
        raise NotFound(f"slot {label!r} not found", code=errors.SLOT_NOT_FOUND, details={"label": label})
    return slot


def merged_slots(ctx: Ctx, store, project: str | None) -> list[dict[str, Any]]:
    """Every slot visible from ``project``: defaults, then global, then project (shadowing)."""
    merged: dict[str, dict[str, Any]] = {label: slot for label in _DEFAULTS if (slot := template(label, project))}
    for scope in ("global", "project"):
        for label, slot in store.records.list(storage_scope(ctx, scope, project)):
            merged[label] = slot
    return [merged[label] for label in sorted(merged)]


def check_size(slot: dict[str, Any], content: str) -> None:
    limit = int(slot.get("sizeLimit", DEFAULT_SIZE))
    if len(content) > limit:
        raise PayloadTooLarge(
            f"slot {slot['label']!r} would hold {len(content)} characters; its sizeLimit is {limit}",
            code=errors.SLOT_TOO_LARGE,
            details={
                "label": slot["label"],
                "size": len(content),
                "currentSize": len(slot.get("content") or ""),
                "sizeLimit": limit,
            },
        )


def writable(slot: dict[str, Any]) -> None:
    if slot.get("readOnly"):
        raise Forbidden(
            f"slot {slot['label']!r} is read-only", code=errors.SLOT_READ_ONLY, details={"label": slot["label"]}
        )


def store_slot(ctx: Ctx, tx, slot: dict[str, Any], content: str) -> dict[str, Any]:
    """Write ``content`` into ``slot`` (materialising a default template) and return it."""
    now = ctx.rt.clock.iso()
    slot = {k: v for k, v in slot.items() if k != "default"}
    slot.update(content=content, updatedAt=now)
    slot["createdAt"] = slot.get("createdAt") or now
    agent = stamp_agent(ctx, None)
    if agent:
        slot["agentId"] = agent
    tx.records.set(storage_scope(ctx, slot["scope"], slot.get("project")), slot["label"], slot, now=now)
    return slot


# -- tools ----------------------------------------------------------------------------------------------

LABEL = string("Slot label: a lowercase letter, then a-z, 0-9 or _ (at most 64)", pattern=LABEL_PATTERN, max_length=64)
SCOPE = string("project (default) or global", enum=SCOPES)
_PROJECT = PROJECT | {"description": "Project whose slots to use (project scope is per project)"}


def _write(ctx: Ctx, operation: str, args: dict, new_content) -> dict[str, Any]:
    """Load, check and store one slot in one transaction; ``new_content(slot)`` gives the text."""
    rt = ctx.rt
    with rt.db.transaction(operation, agent_id=rt.settings.agent_id) as tx:
        slot = require_slot(ctx, tx, args["label"], args.get("project"), args.get("scope"))
        writable(slot)
        content = new_content(slot)
        check_size(slot, content)
        slot = store_slot(ctx, tx, slot, content)
        tx.audit_message = f"{operation} {slot['scope']} slot {slot['label']}"
    rt.publish("slot", slot)
    return {"success": True, "slot": slot, "size": len(slot["content"])}


@tool(
    "memory_slot_list",
    params(project=_PROJECT, pinned=boolean("Only pinned (true) or unpinned (false)")),
    http=[("GET", "/slots")],
)
def memory_slot_list(ctx: Ctx, args: dict) -> dict:
    """List slots visible from a project (project slots shadow global ones), sorted by label."""
    slots = merged_slots(ctx, ctx.rt.db.reader(), args.get("project"))
    if args.get("pinned") is not None:
        slots = [s for s in slots if bool(s.get("pinned")) == args["pinned"]]
    return {"success": True, "slots": slots}


@tool("memory_slot_get", params(["label"], label=LABEL, project=_PROJECT, scope=SCOPE), http=[("GET", "/slot")])
def memory_slot_get(ctx: Ctx, args: dict) -> dict:
    """One slot by label (project scope first, then global)."""
    slot = require_slot(ctx, ctx.rt.db.reader(), args["label"], args.get("project"), args.get("scope"))
    return {"success": True, "slot": slot, "scope": slot["scope"]}


@tool(
    "memory_slot_create",
    params(
        ["label"],
        label=LABEL,
        content=string("Initial content", min_length=0, max_length=MAX_SIZE, default=""),
        description=string("What the slot is for", min_length=0, max_length=500),
        sizeLimit=integer("Maximum characters", minimum=1, maximum=MAX_SIZE, default=DEFAULT_SIZE),
        pinned=boolean("Put it into every context block", default=True),
        readOnly=boolean("Refuse append, replace and delete", default=False),
        scope=string("project (default) or global", enum=SCOPES, default="project"),
        project=_PROJECT,
    ),
    http=[("POST", "/slot", 201)],
)
def memory_slot_create(ctx: Ctx, args: dict) -> Reply:
    """Create a slot (409 if the label exists in that scope, 413 if the content exceeds sizeLimit)."""
    rt, label, scope = ctx.rt, args["label"], args["scope"]
    project = args.get("project") if scope == "project" else None
    slot = {
        "label": label,
        "content": "",
        "sizeLimit": args["sizeLimit"],
        "description": strip_text(args.get("description") or ""),
        "pinned": args["pinned"],
        "readOnly": args["readOnly"],
        "scope": scope,
    }
    if project:
        slot["project"] = project
    content = strip_text(args["content"])
    check_size(slot, content)
    with rt.db.transaction("slot_create", agent_id=rt.settings.agent_id) as tx:
        existing = tx.records.get(storage_scope(ctx, scope, project), label)
        default = template(label, project)
        if existing is not None or (default is not None and default["scope"] == scope):
            raise Conflict(
                f"slot {label!r} already exists in {scope} scope",
                code=errors.SLOT_EXISTS,
                details={"label": label, "scope": scope},
            )
        slot = store_slot(ctx, tx, slot, content)
    rt.publish("slot", slot)
    return Reply({"success": True, "slot": slot}, 201)


@tool(
    "memory_slot_append",
    params(
        ["label", "text"],
        label=LABEL,
        text=string("Text to add on a new line", max_length=MAX_SIZE),
        project=_PROJECT,
        scope=SCOPE,
    ),
    http=[("POST", "/slot/append")],
)
def memory_slot_append(ctx: Ctx, args: dict) -> dict:
    """Append a line to a slot (413 with the sizes if it would exceed sizeLimit)."""
    text = strip_text(args["text"])

    def appended(slot: dict) -> str:
        current = slot.get("content") or ""
        return current + ("\n" if current and not current.endswith("\n") else "") + text

    return _write(ctx, "slot_append", args, appended)


@tool(
    "memory_slot_replace",
    params(
        ["label", "content"],
        label=LABEL,
        content=string("New content", min_length=0, max_length=MAX_SIZE),
        project=_PROJECT,
        scope=SCOPE,
    ),
    http=[("POST", "/slot/replace")],
)
def memory_slot_replace(ctx: Ctx, args: dict) -> dict:
    """Replace a slot's content (413 with the sizes if it exceeds sizeLimit)."""
    content = strip_text(args["content"])
    return _write(ctx, "slot_replace", args, lambda _slot: content)


@tool("memory_slot_delete", params(["label"], label=LABEL, project=_PROJECT, scope=SCOPE), http=[("DELETE", "/slot")])
def memory_slot_delete(ctx: Ctx, args: dict) -> dict:
    """Delete a slot; a default slot is reset to its empty template instead."""
    rt, label, project = ctx.rt, args["label"], args.get("project")
    with rt.db.transaction("slot_delete", agent_id=rt.settings.agent_id) as tx:
        slot = require_slot(ctx, tx, label, project, args.get("scope"))
        writable(slot)
        if slot.get("default"):
            raise NotFound(
                f"slot {label!r} has no stored content to delete", code=errors.SLOT_NOT_FOUND, details={"label": label}
            )
        tx.records.delete(storage_scope(ctx, slot["scope"], slot.get("project")), label)
    rt.publish("slot", {"label": label, "deleted": True})
    return {"success": True, "deleted": label, "reset": label in _DEFAULTS}


# -- context block: pinned slots lead ------------------------------------------------------------------


def pinned_slots_block(req: BlockRequest) -> list[Block]:
    slots = [
        s
        for s in merged_slots(req.ctx, req.ctx.rt.db.reader(), req.project)
        if s.get("pinned") and (s.get("content") or "").strip()
    ]
    if not slots:
        return []
    parts = ["# agentmemory pinned slots"]
    parts += [f"## {s['label']}\n{escape(s['content'].strip())}" for s in slots]
    return [Block("pinned_slots", "\n".join(parts), PINNED, [s["label"] for s in slots])]


# -- subsystem: sanity checks ----------------------------------------------------------------------------


class SlotService:
    def __init__(self, rt: Any):
        self.rt = rt

    def _stored(self) -> Iterator[tuple[str, str, dict]]:
        for scope, key, value in self.rt.db.reader().records.list_prefix(SLOTS):
            if isinstance(value, dict):
                yield scope, key, value

    def diagnose(self) -> list[dict[str, Any]]:
        over = [
            f"{s}/{k}"
            for s, k, v in self._stored()
            if len(v.get("content") or "") > int(v.get("sizeLimit") or DEFAULT_SIZE)
        ]
        ok = not over
        return [
            {
                "name": "slot_sizes",
                "category": "slots",
                "status": "pass" if ok else "warn",
                "message": "every slot fits its sizeLimit"
                if ok
                else f"{len(over)} slot(s) exceed their sizeLimit: {', '.join(over[:5])}",
                "fix": "" if ok else "raise the slot's sizeLimit (create it again) or replace its content",
                "fixable": False,
            }
        ]
