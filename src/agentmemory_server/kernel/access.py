"""The access policy: which agent's records a caller may read and whose name a new record gets.

Every read of records goes through ``agent_filter`` (or ``visible_to``) and every new record is
stamped with ``stamp_agent``. In shared scope (the default) callers may filter by agent; in
isolated scope (``AGENTMEMORY_AGENT_SCOPE=isolated``) every read is limited to this server's
``AGENT_ID`` whatever was asked, and fails closed without one. ``tests/test_isolation.py``
calls every tool, resource, prompt and transport as one agent with another's ids.
"""

from __future__ import annotations

from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import Conflict, Forbidden
from agentmemory_server.kernel.principals import scope_project
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.storage.interfaces import Where, equal


def token_principal(ctx: Ctx) -> str | None:
    """The principal of the caller's API token, when it speaks for one (not the admin secret):
    such a caller works in an isolated scope of its own (kernel/principals.py)."""
    principal = getattr(ctx, "principal", None)
    return None if principal is None or principal.is_admin_token else str(principal.name)


def isolated(ctx: Ctx) -> bool:
    """Whether reads are limited to one agent: AGENTMEMORY_AGENT_SCOPE=isolated, or a caller
    with a principal's token."""
    return ctx.rt.settings.agent_scope == "isolated" or token_principal(ctx) is not None


def agent_filter(ctx: Ctx, requested: str | None = None) -> str | None:
    """The agent id every read must be limited to, or None for all agents.

    Shared scope: the caller's ``agentId`` filter, where "*" (or nothing) means every agent.
    Isolated scope: always this server's AGENT_ID, whatever was asked; without one, fail closed.
    A principal's token: always that principal.
    """
    settings = ctx.rt.settings
    principal = token_principal(ctx)
    if principal is not None:
        return principal
    if settings.agent_scope == "isolated":
        if not settings.agent_id:
            raise Forbidden(
                "AGENTMEMORY_AGENT_SCOPE=isolated but AGENT_ID is not set; refusing to read across agents",
                code=errors.AGENT_SCOPE_UNSET,
            )
        return str(settings.agent_id)
    return None if requested in (None, "", "*") else requested


def stamp_agent(ctx: Ctx, given: str | None) -> str | None:
    """The agent id to record on a new record."""
    if isolated(ctx):
        return agent_filter(ctx)
    return given or ctx.rt.settings.agent_id


def in_token_projects(ctx: Ctx, record: dict[str, Any]) -> bool:
    """Whether the caller's API token is valid for the project of ``record`` (a record of no
    project, and any record for the admin secret, pass). A principal's records may lie in
    projects its other tokens (or the admin, writing as it) chose; a token limited to some
    projects reaches only theirs, even by id.

    A record of no project passes on purpose: it is the principal's global record. Hooks file
    under a project (upstream's send one; ours take the working directory every client sends)
    and a limited token's calls naming none get its project (``principals.scope_nested_call``),
    so such a record comes from a token for every project that named none: a global memory,
    lesson or slot, which every project's searches and context blocks use. A token for alpha is
    the principal working on alpha and gets them as a token for every project would
    (docs/deploy.md)."""
    principal = getattr(ctx, "principal", None)
    if principal is None or principal.is_admin_token:
        return True
    project = record.get("project")
    return not isinstance(project, str) or principal.allows_project(project)


def token_limits_projects(ctx: Ctx) -> bool:
    """Whether the caller's API token is valid for some projects only (not ``*``)."""
    return token_projects(ctx) is not None


def token_projects(ctx: Ctx) -> tuple[str, ...] | None:
    """The projects the caller's API token is valid for, or None when it is not limited to some
    (the admin secret, a token for ``*``, a trusted in-process caller). Counts and listings that
    name no project keep to these, and to records of no project (``in_token_projects``)."""
    principal = getattr(ctx, "principal", None)
    if principal is None or principal.is_admin_token or "*" in principal.projects:
        return None
    return tuple(principal.projects)


def may_read(ctx: Ctx) -> bool:
    """Whether the caller may read records: False only for a principal's token without the
    ``read`` right, whose write tools answer with ids and states alone
    (``principals.write_receipt``)."""
    principal = getattr(ctx, "principal", None)
    return principal is None or principal.is_admin_token or principal.may("read")


def count_visible(ctx: Ctx, store: Any, scope: str, requested: str | None = None) -> int:
    """How many records of ``scope`` the caller may read (``visible_to``'s rule, counted by the
    database): those of its agent filter and, for a token limited to projects, only those of one
    of them or of no project."""
    where = equal(agentId=agent_filter(ctx, requested))
    total = int(store.records.count_where(scope, where))
    projects = token_projects(ctx)
    if projects is None:
        return total
    with_project = store.records.count_where(scope, [*where, Where("project", ">=", "")])  # any project at all
    listed = store.records.count_where(scope, [*where, Where("project", "in", list(projects))])
    return total - int(with_project) + int(listed)


def visible_to(ctx: Ctx, record: dict[str, Any] | None, requested: str | None = None) -> bool:
    """Whether the caller may see ``record`` (None is never visible)."""
    agent = agent_filter(ctx, requested)
    return record is not None and (agent is None or record.get("agentId") == agent) and in_token_projects(ctx, record)


def claim_session(ctx: Ctx, session: dict[str, Any] | None, session_id: str) -> None:
    """Refuse to write into a session another agent owns when agents are isolated (the write
    would change that agent's session and answer with its data), or one of a project the
    caller's token is not valid for (403 ``token_project``, counted with the other denials)."""
    if session is not None and isinstance(session.get("project"), str):
        scope_project(ctx, session["project"], f"session {session_id}", stored=True)
    if session is not None and isolated(ctx) and not visible_to(ctx, session):
        raise Conflict(f"session {session_id!r} belongs to another agent", code=errors.SESSION_OWNED_BY_OTHER_AGENT)
