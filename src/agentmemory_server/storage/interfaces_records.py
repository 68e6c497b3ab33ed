"""The storage interface, part one: the records and what capture keeps beside them.

``Where``/``equal`` and ``RecordIndex`` (conditions on, and indexes over, record fields),
``Records`` (JSON values under (scope, key): the source of truth), ``CaptureLog`` (event ids of
stored hook events), ``CaptureInbox`` (hook events that did not become an observation) and
``ImageIndex`` (images taken out of payloads). Re-exported by ``interfaces``, which describes the
whole interface and holds the unit of work and the database; import these names from there.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Operator = Literal["=", "!=", "<", "<=", ">", ">=", "in"]


@dataclass(frozen=True)
class Where:
    """One condition on a top-level field of the stored JSON records: ``field op value``.
    A record without the field never matches (SQL NULL semantics)."""

    field: str
    op: Operator
    value: Any


def equal(**fields: Any) -> list[Where]:
    """``Where`` conditions for every given field that is not None."""
    return [Where(name, "=", value) for name, value in fields.items() if value is not None]


@dataclass(frozen=True)
class RecordIndex:
    """An index the features need on record fields of one scope, so listings and lookups by
    those fields never scan the scope (``kernel/scopes.py`` declares them). ``prefix``: the
    index serves every scope starting with ``scope`` (one session's observations, say)."""

    scope: str
    fields: tuple[str, ...]
    prefix: bool = False


def indexed_fields(indexes: Iterable[RecordIndex], *, prefix: bool) -> dict[str, tuple[tuple[str, ...], ...]]:
    """The field lists indexed per scope, among the ``prefix`` indexes or the others: the lookup
    the record stores use to pick an index for a query."""
    fields: dict[str, tuple[tuple[str, ...], ...]] = {}
    for spec in indexes:
        if spec.prefix == prefix:
            fields[spec.scope] = (*fields.get(spec.scope, ()), tuple(spec.fields))
    return fields


class Records(Protocol):
    """The records: JSON values under (scope, key)."""

    def get(self, scope: str, key: str) -> Any | None: ...
    def get_many(self, scope: str, keys: Iterable[str]) -> dict[str, Any]: ...
    def list(self, scope: str) -> builtins.list[tuple[str, Any]]: ...
    def list_prefix(self, scope_prefix: str) -> builtins.list[tuple[str, str, Any]]: ...
    def iter_scope(self, scope: str, *, batch: int = 500) -> Iterator[tuple[str, Any]]: ...
    def scopes(self) -> builtins.list[str]: ...
    def count(self, scope: str) -> int: ...
    def scope_counts(self, prefix: str = "") -> dict[str, int]: ...
    def set(self, scope: str, key: str, value: Any, *, now: str) -> None: ...
    def set_many(self, items: Sequence[tuple[str, str, Any]], *, now: str) -> None:
        """``set`` of each (scope, key, value) in order (a later one of the same key wins), in
        as few statements as the backend can (a bulk import)."""
        ...

    def delete(self, scope: str, key: str) -> bool: ...
    def delete_scope(self, scope: str) -> int: ...

    def query(
        self,
        scope: str,
        where: Sequence[Where] = (),
        *,
        order_by: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        prefix: bool = False,
    ) -> builtins.list[Any]:
        """Values of ``scope`` (or, with ``prefix``, of every scope starting with it) matching
        all conditions, ordered by ``(field, descending)`` pairs then key."""
        ...

    def newest(
        self,
        scope: str,
        where: Sequence[Where],
        *,
        by: str,
        before: tuple[Any, str] | None,
        limit: int,
        offset: int = 0,
    ) -> builtins.list[tuple[str, Any]]:
        """(key, value) of ``scope`` matching ``where``, ordered by the field ``by`` then key, both
        descending, starting after the ``(field value, key)`` position ``before`` (keyset paging:
        each page costs the same however deep it is, given a RecordIndex on ``by``); ``offset``
        skips rows along the same index walk."""
        ...

    def count_where(self, scope: str, where: Sequence[Where] = ()) -> int: ...
    def keys_where(self, scope: str, where: Sequence[Where]) -> builtins.list[str]: ...


class CaptureLog(Protocol):
    """Event ids of stored hook events (dedup), kept when their observation is forgotten."""

    def get(self, event_id: str) -> dict[str, Any] | None: ...
    def put(self, event_id: str, session_id: str, obs_id: str, now: str) -> None: ...
    def put_many(self, events: Sequence[tuple[str, str, str]], now: str) -> None:
        """``put`` of each new (event_id, session_id, obs_id)."""
        ...

    def known(self, event_ids: Sequence[str]) -> set[str]:
        """The ids among ``event_ids`` already stored (a bulk import's dedup, one query)."""
        ...

    def mark_deleted(self, obs_ids: list[str]) -> None: ...


class CaptureInbox(Protocol):
    """Hook events kept because they did not become an observation, with their attempts.

    An entry (a dict) has: eventId, status (``pending``: to retry; ``dead``: attempts used up or
    refused for good; ``filtered``: a capture filter refused its tool), reason, sessionId,
    hookType, toolName, agentId, body (the observe arguments, privacy-stripped), attempts,
    nextTry (epoch), lastError, createdAt, updatedAt. Counters count what the capture pipeline
    changed or refused, by kind and name (e.g. ``unknown_hook``/``PreCompaction``)."""

    def put(self, entry: dict[str, Any], now: str) -> None: ...
    def get(self, event_id: str) -> dict[str, Any] | None: ...
    def update(self, event_id: str, changes: Mapping[str, Any], now: str) -> None: ...
    def delete(self, event_id: str) -> bool: ...
    def due(self, now_epoch: float, limit: int) -> list[dict[str, Any]]: ...
    def page(
        self, *, status: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]: ...
    def event_ids(self, status: str, *, agent_id: str | None = None, limit: int) -> list[str]: ...
    def summary(self, agent_id: str | None = None) -> dict[str, Any]: ...
    def trim(self, status: str, keep: int) -> int: ...
    def bump(self, kind: str, name: str, now: str, by: int = 1) -> None: ...
    def counters(self) -> dict[str, dict[str, int]]: ...


class ImageIndex(Protocol):
    """Images named by the sha256 of their bytes (``id``): what each is, when it came, whether
    the quota evicted its bytes, which search rows reference it (a link goes with its row), and
    the bytes themselves. Where the bytes live is the backend's business: files beside a SQLite
    database, the database itself on PostgreSQL (so every node serves every image).

    ``put`` stores the bytes with the row (an evicted image is kept again); ``read`` answers the
    kept bytes or None; ``delete`` and ``mark_evicted`` drop the bytes with (or from) the row;
    ``sweep_leftovers`` removes bytes no row owns that are older than epoch ``older_than`` (a
    write that failed after storing its file) and answers how many; ``location`` says where the
    bytes are kept, for /health."""

    def put(self, image_id: str, mime: str, data: bytes, now: str) -> None: ...
    def read(self, image_id: str) -> bytes | None: ...
    def link(self, doc_rowid: int, image_ids: Sequence[str]) -> None: ...
    def link_many(self, links: Sequence[tuple[int, Sequence[str]]]) -> None:
        """``link`` of each (doc_rowid, image_ids), distinct rowids (a bulk import)."""
        ...

    def get(self, image_id: str) -> dict[str, Any] | None: ...
    def linked_rows(self, image_id: str) -> list[int]:
        """The search rows (rowids) that reference the image."""
        ...

    def unreferenced(self, *, created_before: str, limit: int) -> list[str]: ...
    def oldest(self, *, created_before: str, limit: int) -> list[tuple[str, int]]: ...
    def delete(self, image_ids: Iterable[str]) -> None: ...
    def mark_evicted(self, image_ids: Iterable[str], now: str) -> None: ...
    def known(self, image_ids: Iterable[str]) -> set[str]: ...
    def sweep_leftovers(self, older_than: float) -> int: ...
    def location(self) -> str: ...
    def stats(self) -> dict[str, int]: ...
