"""Which images exist (``images``) and which search rows use them (``image_links``) on SQLite.

The bytes are files beside the database (storage/blobs.py), written before their row and
deleted with it inside the writer's transaction, so the sweep never deletes a file that a
transaction in flight is about to reuse. A link row is deleted with its search row (foreign key,
ON DELETE CASCADE), so forgetting a record releases its images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from agentmemory_server.storage.blobs import BlobStore
from agentmemory_server.storage.sqlite.common import Unit, in_chunks


class SqliteImageIndex:
    def __init__(self, unit: Unit, blobs: BlobStore):
        self.unit = unit
        self.conn = unit.conn
        self.blobs = blobs
        # Search rows this unit inserted and has linked nothing to: a link row references an
        # existing search row and is deleted with it (foreign key), so such a row has none, and
        # linking no image to it needs no statement (every observe without an image).
        self._new_rows: set[int] = set()

    def note_new_row(self, doc_rowid: int) -> None:
        self._new_rows.add(doc_rowid)

    def put(self, image_id: str, mime: str, data: bytes, now: str) -> None:
        """Keep an image (again): its file first, then its row; an evicted image is kept once more."""
        if self.blobs.put(data) != image_id:
            raise ValueError(f"image {image_id} does not match the sha256 of its bytes")
        self.conn.execute(
            "INSERT INTO images (id, mime, bytes, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET evicted_at = NULL, created_at = CASE WHEN images.evicted_at "
            "IS NULL THEN images.created_at ELSE excluded.created_at END",
            (image_id, mime, len(data), now),
        )

    def read(self, image_id: str) -> bytes | None:
        return self.blobs.read(image_id)

    def linked_rows(self, image_id: str) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT doc_rowid FROM image_links WHERE image_id = ?", (image_id,))]

    def link(self, doc_rowid: int, image_ids: Sequence[str]) -> None:
        """The images search row ``doc_rowid`` references are exactly ``image_ids``."""
        if not image_ids and doc_rowid in self._new_rows:
            return
        self._new_rows.discard(doc_rowid)
        current = {
            r[0] for r in self.conn.execute("SELECT image_id FROM image_links WHERE doc_rowid = ?", (doc_rowid,))
        }
        wanted = set(image_ids)
        if current == wanted:
            return
        self.conn.execute("DELETE FROM image_links WHERE doc_rowid = ?", (doc_rowid,))
        self.conn.executemany(
            "INSERT INTO image_links (doc_rowid, image_id) VALUES (?, ?)", [(doc_rowid, i) for i in sorted(wanted)]
        )

    def link_many(self, links: Sequence[tuple[int, Sequence[str]]]) -> None:
        """``link`` of each (doc_rowid, image_ids) in order, reading the current links in one
        query a chunk and writing only the rows whose set changes (a bulk import's records
        mostly have no image and had none)."""
        current: dict[int, set[str]] = {rowid: set() for rowid, _ids in links}
        self._new_rows.difference_update(current)
        for chunk, marks in in_chunks(current):
            rows = self.conn.execute(f"SELECT doc_rowid, image_id FROM image_links WHERE doc_rowid IN ({marks})", chunk)
            for rowid, image_id in rows:
                current[rowid].add(image_id)
        changed: dict[int, set[str]] = {}
        for rowid, image_ids in links:  # a rowid met again compares with what the earlier one set
            wanted = set(image_ids)
            if current[rowid] != wanted:
                current[rowid] = changed[rowid] = wanted
        self.conn.executemany("DELETE FROM image_links WHERE doc_rowid = ?", [(rowid,) for rowid in changed])
        self.conn.executemany(
            "INSERT INTO image_links (doc_rowid, image_id) VALUES (?, ?)",
            [(rowid, i) for rowid, wanted in changed.items() for i in sorted(wanted)],
        )

    def get(self, image_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT id, mime, bytes, created_at, evicted_at, "
            "(SELECT count(*) FROM image_links WHERE image_id = images.id) FROM images WHERE id = ?",
            (image_id,),
        ).fetchone()
        if not row:
            return None
        return {
            "id": row[0],
            "mime": row[1],
            "bytes": row[2],
            "createdAt": row[3],
            "evictedAt": row[4],
            "refs": row[5],
        }

    def unreferenced(self, *, created_before: str, limit: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM images WHERE created_at < ? AND NOT EXISTS "
            "(SELECT 1 FROM image_links WHERE image_id = images.id) ORDER BY created_at LIMIT ?",
            (created_before, limit),
        )
        return [r[0] for r in rows]

    def oldest(self, *, created_before: str, limit: int) -> list[tuple[str, int]]:
        """Images whose file is still kept, oldest first (the quota's eviction order)."""
        rows = self.conn.execute(
            "SELECT id, bytes FROM images WHERE evicted_at IS NULL AND created_at < ? ORDER BY created_at, id LIMIT ?",
            (created_before, limit),
        )
        return [(r[0], r[1]) for r in rows]

    def delete(self, image_ids: Iterable[str]) -> None:
        for chunk, marks in in_chunks(image_ids):
            self.conn.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
            for image_id in chunk:
                self.blobs.delete(image_id)
                self.unit.record_change(f"images/{image_id}")

    def mark_evicted(self, image_ids: Iterable[str], now: str) -> None:
        for chunk, marks in in_chunks(image_ids):
            self.conn.execute(f"UPDATE images SET evicted_at = ? WHERE id IN ({marks})", (now, *chunk))
            for image_id in chunk:
                self.blobs.delete(image_id)
                self.unit.record_change(f"images/{image_id}")

    def sweep_leftovers(self, older_than: float) -> int:
        """Files without a row (a transaction that failed after writing its file) and temporary
        files a crash left behind, modified before epoch ``older_than``."""
        candidates = [name for name, _size, mtime in self.blobs.files() if mtime < older_than]
        removed = 0
        for chunk, _marks in in_chunks(candidates):
            for name in set(chunk) - self.known(chunk):
                removed += self.blobs.delete(name)
        return removed + self.blobs.remove_strays(older_than)

    def location(self) -> str:
        return str(self.blobs.root)

    def known(self, image_ids: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for chunk, marks in in_chunks(image_ids):
            found.update(r[0] for r in self.conn.execute(f"SELECT id FROM images WHERE id IN ({marks})", chunk))
        return found

    def stats(self) -> dict[str, int]:
        images, kept_bytes, evicted = self.conn.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN evicted_at IS NULL THEN bytes END), 0), "
            "coalesce(sum(evicted_at IS NOT NULL), 0) FROM images"
        ).fetchone()
        unreferenced = self.conn.execute(
            "SELECT count(*) FROM images WHERE NOT EXISTS (SELECT 1 FROM image_links WHERE image_id = images.id)"
        ).fetchone()[0]
        return {"images": images, "bytes": kept_bytes, "evicted": evicted, "unreferenced": unreferenced}
