"""Which images exist (``images``) and which search rows use them (``image_links``) on
PostgreSQL; a link row is deleted with its search row (ON DELETE CASCADE). The bytes are files
in the node's images directory (storage/blobs.py): several nodes share them through one volume
mounted at the same place (deploy/docker-compose.yml)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from agentmemory_server.storage.postgres.common import Unit


class PgImageIndex:
    def __init__(self, unit: Unit):
        self.unit = unit
        self.conn = unit.conn

    def put(self, image_id: str, mime: str, size: int, now: str) -> None:
        """Know an image (again): a file the quota had evicted counts as present once more."""
        self.conn.execute(
            "INSERT INTO images (id, mime, bytes, created_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET evicted_at = NULL, created_at = CASE WHEN images.evicted_at "
            "IS NULL THEN images.created_at ELSE excluded.created_at END",
            (image_id, mime, size, now),
        )

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
            self.unit.record_change(f"images/{image_id}")

    def mark_evicted(self, image_ids: Iterable[str], now: str) -> None:
        ids = list(dict.fromkeys(image_ids))
        if ids:
            self.conn.execute("UPDATE images SET evicted_at = %s WHERE id = ANY(%s)", (now, ids))
        for image_id in ids:
            self.unit.record_change(f"images/{image_id}")

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
