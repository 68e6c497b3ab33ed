"""Content-addressed files beside the database: ``<db dir>/images/<2 hex>/<sha256>``.

A file's name is the sha256 of its bytes, so writing the same image twice stores it once, a
file is never changed after it is written, and a backup can copy only the names it lacks. Files
are written to a temporary name and renamed, so a reader never sees half a file. Which files are
still needed is the database's business (``ImageIndex``); this module only keeps the bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

IMAGES_DIR = "images"
_NAME = re.compile(r"^[0-9a-f]{64}\Z")  # \Z: "$" would let a final newline through


def images_dir(database_path: Path) -> Path:
    """Where the images of the database at ``database_path`` live."""
    return Path(database_path).parent / IMAGES_DIR


def is_blob_id(text: str) -> bool:
    return bool(_NAME.match(text or ""))


class BlobStore:
    """:param root: the directory (created on first write)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, blob_id: str) -> Path:
        if not is_blob_id(blob_id):
            raise ValueError(f"not a blob id: {blob_id!r}")
        return self.root / blob_id[:2] / blob_id

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its id, the sha256 hex of the bytes."""
        blob_id = hashlib.sha256(data).hexdigest()
        target = self.path(blob_id)
        if target.exists() and target.stat().st_size == len(data):
            return blob_id
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return blob_id

    def read(self, blob_id: str) -> bytes | None:
        try:
            return self.path(blob_id).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).exists()

    def delete(self, blob_id: str) -> bool:
        try:
            self.path(blob_id).unlink()
            return True
        except FileNotFoundError:
            return False

    def files(self) -> Iterator[tuple[str, int, float]]:
        """(id, size, mtime) of every stored file."""
        for entry in self._entries():
            if is_blob_id(entry.name):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                yield entry.name, stat.st_size, stat.st_mtime

    def remove_strays(self, older_than: float) -> int:
        """Delete temporary files a crash left behind (modified before epoch ``older_than``)."""
        removed = 0
        for entry in self._entries():
            if is_blob_id(entry.name):
                continue
            try:
                if entry.stat().st_mtime < older_than:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _entries(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir():
                yield from sorted(sub.iterdir())
