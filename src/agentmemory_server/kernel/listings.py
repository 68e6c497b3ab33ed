"""Paged listings of the core record kinds (sessions, observations, memories), shared by the
tools and blocks of several features. Each is one indexed query plus its count."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS, obs_scope
from agentmemory_server.storage.interfaces import UnitOfWork, Where, equal


def sessions_page(
    store: UnitOfWork,
    *,
    project: str | None = None,
    agent_id: str | None = None,
    status: str | None = None,
    limit: int,
    offset: int = 0,
) -> tuple[list[Any], int]:
    """Sessions newest first (by start time) and how many match."""
    where = equal(project=project, agentId=agent_id, status=status)
    items = store.records.query(SESSIONS, where, order_by=[("startedAt", True)], limit=limit, offset=offset)
    return items, store.records.count_where(SESSIONS, where)


def observations_page(
    store: UnitOfWork, session_id: str, *, agent_id: str | None = None, limit: int, offset: int = 0
) -> tuple[list[Any], int]:
    """A session's observations in time order and how many match."""
    scope, where = obs_scope(session_id), equal(agentId=agent_id)
    items = store.records.query(scope, where, order_by=[("timestamp", False)], limit=limit, offset=offset)
    return items, store.records.count_where(scope, where)


def top_observations(store: UnitOfWork, session_id: str, *, min_importance: int, limit: int) -> list[Any]:
    """A session's most important observations, most important first."""
    return store.records.query(
        obs_scope(session_id), [Where("importance", ">=", min_importance)], order_by=[("importance", True)], limit=limit
    )


def memories_page(
    store: UnitOfWork,
    *,
    project: str | None = None,
    agent_id: str | None = None,
    latest_only: bool = False,
    limit: int,
    offset: int = 0,
) -> tuple[list[Any], int]:
    """Memories most recently updated first and how many match."""
    where = equal(project=project, agentId=agent_id, isLatest=True if latest_only else None)
    items = store.records.query(MEMORIES, where, order_by=[("updatedAt", True)], limit=limit, offset=offset)
    return items, store.records.count_where(MEMORIES, where)


def session_ids_with(store: UnitOfWork, **fields: Any) -> list[str]:
    """Ids of the sessions whose fields equal the given values (e.g. ``project=...``)."""
    return store.records.keys_where(SESSIONS, equal(**fields))


def encode_cursor(value: Any, key: str) -> str:
    """An opaque keyset cursor: the (sort value, key) of the last row of a page."""
    return base64.urlsafe_b64encode(json.dumps([value, key], separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    """The position a cursor from ``encode_cursor`` stands for.

    :raise InvalidInput: the text is not such a cursor.
    """
    try:
        value, key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(key, str):
            raise ValueError(key)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidInput(
            "'cursor' is not a cursor this server gave out (use nextCursor as it is)", field="cursor"
        ) from None
    return value, key
