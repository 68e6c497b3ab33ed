"""Which images exist (``images``), their bytes, and which search rows use them
(``image_links``) on PostgreSQL; a link row is deleted with its search row (ON DELETE CASCADE).

The bytes are in the ``images`` row (``data``), written in the observation's transaction, so
every node serves every image, nothing is left behind by a failed write, and a database backup
holds them. The quota (AGENTMEMORY_IMAGE_STORE_MAX_BYTES) bounds them as it bounds files on
SQLite: eviction sets ``data`` to NULL. Rows stored before migration 6 have no ``data``: their
bytes are still read from (and deleted in) the node's images directory, where earlier versions
kept them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from agentmemory_server.storage.blobs import BlobStore
from agentmemory_server.storage.postgres.common import Unit


class PgImageIndex:
    """:param legacy: the node's images directory, where rows without ``data`` keep their bytes."""

    def __init__(self, unit: Unit, legacy: BlobStore):
        self.unit = unit
        self.conn = unit.conn
        self.legacy = legacy

    def put(self, image_id: str, mime: str, data: bytes, now: str) -> None:
        """Keep an image (again): an evicted one is kept once more, a known one keeps its bytes."""
        if hashlib.sha256(data).hexdigest() != image_id:
            raise ValueError(f"image {image_id} does not match the sha256 of its bytes")
        self.conn.execute(
            "INSERT INTO images (id, mime, bytes, created_at, data) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET evicted_at = NULL, data = coalesce(images.data, excluded.data), "
            "created_at = CASE WHEN images.evicted_at IS NULL THEN images.created_at ELSE excluded.created_at END",
            (image_id, mime, len(data), now, data),
        )

    def read(self, image_id: str) -> bytes | None:
        row = self.conn.execute("SELECT data, evicted_at FROM images WHERE id = %s", (image_id,)).fetchone()
        if row is None or row[1] is not None:
            return None
        return bytes(row[0]) if row[0] is not None else self.legacy.read(image_id)

    def linked_rows(self, image_id: str) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT doc_rowid FROM image_links WHERE image_id = %s", (image_id,))]

    def link(self, doc_rowid: int, image_ids: Sequence[str]) -> None:
        """The images search row ``doc_rowid`` references are exactly ``image_ids``."""
        # One statement nobody waits for (a pipelined transaction sends it on with the others):
        # drop the links not wanted, add the missing ones; unchanged links are not rewritten.
        wanted = sorted(set(image_ids))
        self.conn.execute(
            "WITH gone AS (DELETE FROM image_links WHERE doc_rowid = %s AND image_id <> ALL(%s::text[])) "
            "INSERT INTO image_links (doc_rowid, image_id) SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
            (doc_rowid, wanted, doc_rowid, wanted),
        )

    def link_many(self, links: Sequence[tuple[int, Sequence[str]]]) -> None:
        """One statement for the batch: drop the links not wanted, add the missing ones."""
        if not links:
            return
        pairs = [(rowid, image_id) for rowid, ids in links for image_id in sorted(set(ids))]
        self.conn.execute(
            "WITH w AS (SELECT * FROM unnest(%s::bigint[], %s::text[]) AS w(doc_rowid, image_id)), "
            "gone AS (DELETE FROM image_links l WHERE l.doc_rowid = ANY(%s::bigint[]) AND NOT EXISTS "
            "(SELECT 1 FROM w WHERE w.doc_rowid = l.doc_rowid AND w.image_id = l.image_id)) "
            "INSERT INTO image_links (doc_rowid, image_id) SELECT doc_rowid, image_id FROM w ON CONFLICT DO NOTHING",
            ([p[0] for p in pairs], [p[1] for p in pairs], [rowid for rowid, _ids in links]),
        )

    def get(self, image_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT id, mime, bytes, created_at, evicted_at, "
            "(SELECT count(*) FROM image_links WHERE image_id = images.id) FROM images WHERE id = %s",
            (image_id,),
        ).fetchone()
        if not row:
            return None
        keys = ("id", "mime", "bytes", "createdAt", "evictedAt", "refs")
        return dict(zip(keys, (*row[:5], int(row[5])), strict=True))

    def unreferenced(self, *, created_before: str, limit: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM images WHERE created_at < %s AND NOT EXISTS "
            "(SELECT 1 FROM image_links WHERE image_id = images.id) ORDER BY created_at LIMIT %s",
            (created_before, limit),
        )
        return [r[0] for r in rows]

    def oldest(self, *, created_before: str, limit: int) -> list[tuple[str, int]]:
        """Images whose file is still kept, oldest first (the quota's eviction order)."""
        rows = self.conn.execute(
            "SELECT id, bytes FROM images WHERE evicted_at IS NULL AND created_at < %s "
            "ORDER BY created_at, id LIMIT %s",
            (created_before, limit),
        )
        return [(r[0], int(r[1])) for r in rows]

    def delete(self, image_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(image_ids))
        if ids:
            self.conn.execute("DELETE FROM images WHERE id = ANY(%s)", (ids,))
        for image_id in ids:
            self.legacy.delete(image_id)
            self.unit.record_change(f"images/{image_id}")

    def mark_evicted(self, image_ids: Iterable[str], now: str) -> None:
        ids = list(dict.fromkeys(image_ids))
        if ids:
            self.conn.execute("UPDATE images SET evicted_at = %s, data = NULL WHERE id = ANY(%s)", (now, ids))
        for image_id in ids:
            self.legacy.delete(image_id)
            self.unit.record_change(f"images/{image_id}")

    def sweep_leftovers(self, older_than: float) -> int:
        """Nothing to do: the bytes are written in their row's transaction. (Files of the images
        directory are the legacy rows' bytes, deleted with them.)"""
        return 0

    def location(self) -> str:
        return "database"

    def known(self, image_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return set()
        return {r[0] for r in self.conn.execute("SELECT id FROM images WHERE id = ANY(%s)", (ids,))}

    def stats(self) -> dict[str, int]:
        images, kept_bytes, evicted = self.conn.execute(
            "SELECT count(*), coalesce(sum(bytes) FILTER (WHERE evicted_at IS NULL), 0), "
            "count(*) FILTER (WHERE evicted_at IS NOT NULL) FROM images"
        ).fetchone()
        unreferenced = self.conn.execute(
            "SELECT count(*) FROM images WHERE NOT EXISTS (SELECT 1 FROM image_links WHERE image_id = images.id)"
        ).fetchone()[0]
        return {
            "images": int(images),
            "bytes": int(kept_bytes),
            "evicted": int(evicted),
            "unreferenced": int(unreferenced),
        }
