"""People and agents: who a token speaks for, and what it may do.

``AGENTMEMORY_SECRET`` (or the generated secret file) stays the admin token, so upstream's hooks
and MCP shim work unchanged. Other tokens are created with ``agentmemory tokens create`` (or the
admin routes) and stored hashed (SHA-256 of a 256-bit random token: nothing to brute-force) as
records of ``mem:tokens``. Each names a principal (a person or an agent), the projects it may
touch (``*`` = all) and its rights:

- ``read``: tools that only read (GET routes, searches, context);
- ``write``: everything else that changes memory;
- ``admin``: import, export, reindex, stats, audit, heal, governance deletes, tokens, and what
  acts as the server's host or on every principal's records (Antigravity sync reads the host's
  files; graph compaction rewrites every graph record).

The admin right manages the store; it does not stand in for ``read``. An admin tool whose answer
carries records (it says so where it is registered, ``@tool(..., answers_with_records=True)``:
the export, the audit trail, recompress's before-and-after titles, a full Antigravity sync's
crystals and reflections) needs ``read`` as well, so a token given ``admin`` without ``read`` can
run the store but is not handed its records. The registry refuses an admin tool that does not
say either way (``registry._check_rights_declaration``). The admin right
is for tokens valid for every project (``*``) only: admin tools act on the whole store (an
import, the retention sweeps, new tokens for any project), so a token limited to alpha holding it
would reach beta through them. ``token_record`` refuses the combination (400); a token stored
before that rule keeps its other rights and is refused its admin tools (403).

A caller with a principal token works in an isolated scope of its own, the proven isolated
agent scope (``kernel/access.py``) with the principal as the agent: records it writes are
stamped with it and it reads only those. A project outside its list is refused (403) whenever a
call names one, and a record of such a project is out of reach by id too (``access.visible_to``).
Records of no project are the principal's global records and reach each of its tokens, one
limited to some projects too (``access.in_token_projects`` says why).
Lookups are cached for ``CACHE_SECONDS`` per process, so a revoked token stops working on every
node within that time (an open WebSocket checks its token again, ``adapters/stream.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import Forbidden, InvalidInput
from agentmemory_server.kernel.scopes import TOKENS

CACHE_SECONDS = 5.0
RIGHTS = ("read", "write", "admin")
KINDS = ("person", "agent")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9_.@\-]{1,64}\Z")  # \Z: "$" would let a final newline through
TOKEN_PREFIX = "amk_"

# Write tools that answer a caller without the read right in their own way (a hook's answer keeps
# its client's format, without the context block) instead of with ``write_receipt``.
OWN_WRITE_RECEIPT = frozenset({"hook_event"})


def right_needed(tool: Any) -> str:
    """``read``, ``write`` or ``admin`` for a registry tool: the right it declares where it is
    registered (``@tool(..., right=...)``: a search reached by POST reads, a tool acting on the
    whole store is an admin tool), else ``read`` for a tool reached only by GET and ``write`` for
    any other."""
    if tool.right is not None:
        return str(tool.right)
    if tool.routes and all(r.method == "GET" for r in tool.routes):
        return "read"
    return "write"


def rights_needed(tool: Any) -> tuple[str, ...]:
    """Every right a registry tool needs: ``right_needed``'s, and ``read`` too for an admin tool
    whose answer carries records (its ``answers_with_records`` declaration)."""
    needed = right_needed(tool)
    return (needed, "read") if _admin_answering_records(tool) else (needed,)


def _admin_answering_records(tool: Any) -> bool:
    return right_needed(tool) == "admin" and bool(tool.answers_with_records)


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``admin`` is the secret's holder: every right, every project, no scope."""

    name: str
    kind: str = "agent"
    projects: tuple[str, ...] = ("*",)
    rights: frozenset[str] = frozenset(RIGHTS)
    token_id: str | None = None

    @property
    def is_admin_token(self) -> bool:
        return self.token_id is None

    def may(self, right: str) -> bool:
        """Whether the token holds ``right``; the admin right counts only on a token for every
        project (a token stored before ``token_record`` refused the combination)."""
        return right in self.rights and (right != "admin" or self.every_project)

    @property
    def every_project(self) -> bool:
        return "*" in self.projects

    def allows_project(self, project: str | None) -> bool:
        return project is None or "*" in self.projects or project in self.projects


ADMIN = Principal("admin", kind="person")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_record(principal: str, kind: str, projects: Iterable[str], rights: Iterable[str], now: str) -> dict:
    """A new token's stored record (without the token); raises InvalidInput on bad fields."""
    if not _PRINCIPAL.match(principal or ""):
        raise InvalidInput("principal: 1-64 letters, digits, '_', '.', '@' or '-'", field="principal")
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", field="kind")
    chosen = sorted(set(rights), key=RIGHTS.index) if set(rights) <= set(RIGHTS) else None
    if not chosen:
        raise InvalidInput(f"rights: one or more of {', '.join(RIGHTS)}", field="rights")
    listed = sorted({p.strip() for p in projects if p and p.strip()}) or ["*"]
    if "admin" in chosen and "*" not in listed:
        raise InvalidInput(
            _ADMIN_NEEDS_EVERY_PROJECT + ": leave 'projects' out or drop the admin right", field="projects"
        )
    return {"principal": principal, "kind": kind, "projects": listed, "rights": chosen, "createdAt": now}


_ADMIN_NEEDS_EVERY_PROJECT = (
    "the admin right is for a token valid for every project: admin tools (import, export, the retention "
    "sweeps, tokens) act on the whole store"
)


def principal_of(record: dict[str, Any], token_id: str) -> Principal:
    return Principal(
        name=record["principal"],
        kind=record.get("kind", "agent"),
        projects=tuple(record.get("projects") or ("*",)),
        rights=frozenset(record.get("rights") or ()),
        token_id=token_id,
    )


class TokenCache:
    """Token hash -> Principal (or None for unknown/revoked), per process, for CACHE_SECONDS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def lookup(self, db: Any, token: str) -> Principal | None:
        digest = hash_token(token)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        record = db.reader().records.get(TOKENS, digest)
        found = None if record is None or record.get("revokedAt") else principal_of(record, digest[:12])
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (now, found)
        return found

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()


def authorize(principal: Principal | None, tool: Any, args: dict[str, Any]) -> None:
    """Refuse a call the principal's token does not allow (403, counted by the caller)."""
    if principal is None or principal.is_admin_token:
        return
    for needed in rights_needed(tool):
        if not principal.may(needed):
            raise _lacks(principal, needed, tool)
    project = args.get("project")
    if isinstance(project, str) and not principal.allows_project(project):
        raise _not_for_project(principal, project)


def _lacks(principal: Principal, right: str, tool: Any) -> Forbidden:
    """The refusal of a call needing a right the token does not hold, saying why when the token
    lists it (an admin right on a token limited to some projects) or when an admin tool needs
    ``read`` too."""
    who = f"the token of {principal.name!r}"
    if right in principal.rights:  # the admin right on a token limited to some projects
        why = f"{who} is limited to projects {', '.join(principal.projects)}; {_ADMIN_NEEDS_EVERY_PROJECT}"
        return Forbidden(f"{why}: create a token without projects for {tool.name}", code=errors.TOKEN_RIGHTS)
    because = " (its answer carries records)" if right == "read" and _admin_answering_records(tool) else ""
    return Forbidden(f"{who} lacks the {right!r} right that {tool.name} needs{because}", code=errors.TOKEN_RIGHTS)


def answers_with_receipt(principal: Principal | None, tool: Any) -> bool:
    """Whether a write tool's answer goes to a caller that may not read (a principal's token
    without the ``read`` right): it gets ``write_receipt`` of it, not the records."""
    return (
        principal is not None
        and not principal.is_admin_token
        and not principal.may("read")
        and tool.name not in OWN_WRITE_RECEIPT
        and right_needed(tool) == "write"
    )


def write_receipt(data: Any) -> Any:
    """What a write tool's answer tells a caller that may not read: its ids (``id``, ``...Id``,
    ``...Ids``, ``superseded``), states (``status``), flags and numbers (versions, counts), at the
    places the full answer has them; no text. Write tools answer with records the caller did not
    write (a near-duplicate's merged version, a session's summary built from its observations,
    a slot's whole content after an append, the memories an enrichment found, a reflection's
    insights), which a write-only token must not read."""
    if isinstance(data, dict):
        kept: dict[str, Any] = {}
        for key, value in data.items():
            if _kept_as_is(key, value):
                kept[key] = value
            elif isinstance(value, dict | list):
                kept[key] = write_receipt(value)
        return kept
    if isinstance(data, list):
        return [write_receipt(item) for item in data if isinstance(item, dict | list)]
    return None


def _kept_as_is(key: str, value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    names_ids = key == "id" or key.endswith(("Id", "Ids")) or key in ("superseded", "supersedes")
    if isinstance(value, str):
        return names_ids or key == "status"
    return names_ids and isinstance(value, list) and _all_strings(value)


def _all_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _not_for_project(principal: Principal, project: str) -> Forbidden:
    return Forbidden(f"the token of {principal.name!r} is not valid for project {project!r}", code=errors.TOKEN_PROJECT)


def scope_project(ctx: Any, project: str | None, what: str, *, stored: bool = False) -> None:
    """Refuse a project the request names by its content rather than by a ``project`` argument
    (a hook's working directory), as ``scope_call`` refuses the argument: 403, counted.
    ``stored``: the project is that of a stored record the request named by id (a session), so
    the refusal does not name it (the caller may not learn its principal's other projects)."""
    principal = ctx.principal
    if principal is None or principal.is_admin_token or project is None or principal.allows_project(project):
        return
    refused = (
        Forbidden(f"the token of {principal.name!r} is not valid for the project of {what}", code=errors.TOKEN_PROJECT)
        if stored
        else _not_for_project(principal, project)
    )
    ctx.rt.deny(refused.code, f"{what} as {principal.name}", ctx.source)
    raise refused


def scope_call(ctx: Any, tool: Any, args: dict[str, Any]) -> None:
    """Check a call against the caller's token before it runs; a refusal is counted and logged
    with the other denials (``auth.Denials``)."""
    principal = ctx.principal
    if principal.is_admin_token:
        return
    try:
        authorize(principal, tool, args)
    except Forbidden as exc:
        ctx.rt.deny(exc.code, f"{tool.name} as {principal.name}", ctx.source)
        raise
    scope_nested_call(ctx, tool, args)


def scope_nested_call(ctx: Any, tool: Any, args: dict[str, Any]) -> None:
    """The project part of ``scope_call``, also applied when one tool runs another
    (``registry.run``: an MCP resource or prompt naming a project, a listing it makes): a project
    outside the token's list is refused, a token limited to one project works there when a call
    names none, and a token limited to several must name one (a call naming none would read and
    write the principal's records of every project, its other tokens' too). The rights stay
    those of the tool the client called."""
    principal = ctx.principal
    if principal is None or principal.is_admin_token:
        return
    project = args.get("project")
    if isinstance(project, str) and not principal.allows_project(project):
        refused = _not_for_project(principal, project)
        ctx.rt.deny(refused.code, f"{tool.name} as {principal.name}", ctx.source)
        raise refused
    projects = [p for p in principal.projects if p != "*"]
    takes_project = "project" in (tool.schema.get("properties") or {})
    if not takes_project or args.get("project") is not None or "*" in principal.projects:
        return
    if len(projects) == 1:
        args["project"] = projects[0]
        return
    raise InvalidInput(
        f"the token of {principal.name!r} is valid for projects {', '.join(projects)}: name one of them in 'project'",
        field="project",
    )


# The principal of the request this thread is serving (set by the HTTP adapter for the request's
# lifetime); every Ctx made while serving it carries it (kernel/registry.Ctx).
CALLER: ContextVar[Principal | None] = ContextVar("agentmemory_caller", default=None)


def current() -> Principal | None:
    return CALLER.get()


def authenticate(rt: Any, token: str | None) -> Principal | None:
    """The principal a presented token speaks for: ADMIN for the server's secret, a principal
    for a live API token, None for anything else (refuse it)."""
    secret = rt.settings.secret
    if not token:
        return None
    if secret and hmac.compare_digest(token.encode("utf-8", "replace"), secret.encode("utf-8")):
        return ADMIN
    return rt.tokens.lookup(rt.db, token)
