"""The image store: images moved out of hook payloads, as files named by their sha256 beside the
database (``images/``), reference-counted through the search rows that use them.

Saving happens inside the observation's transaction (file first, then its row), and the sweep
deletes files inside its own transaction: both hold the writer lock, so a file is never deleted
between an observation deciding to reuse it and committing. Every ``SWEEP_SECONDS`` the sweep
drops images no record references any more (after a ``GRACE_SECONDS`` grace, so an image written
by a transaction still in flight is never taken), then, while the kept files exceed
``AGENTMEMORY_IMAGE_STORE_MAX_BYTES``, evicts the oldest: the file goes, the row stays marked
evicted, and the records keep their reference (GET /images/<id> answers 410 saying why).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from agentmemory_server import errors
from agentmemory_server.capture.images import FoundImage
from agentmemory_server.errors import NotFound
from agentmemory_server.kernel.registry import Ctx, Reply, params, string, tool
from agentmemory_server.kernel.util import iso
from agentmemory_server.storage.blobs import BlobStore, images_dir, is_blob_id
from agentmemory_server.storage.interfaces import UnitOfWork

log = logging.getLogger("agentmemory.images")
GRACE_SECONDS = 30
SWEEP_SECONDS = 30
ORPHAN_FILES_EVERY = 600  # a full listing of the directory, rarer than the sweep
BATCH = 500


class ImageStore:
    """Subsystem ``images``: saves, serves and sweeps the image files."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.blobs = BlobStore(images_dir(rt.db.path))
        self.max_bytes = rt.settings.image_store_max_bytes
        self.evicted = 0
        self.removed = 0
        self._last_orphan_scan = 0.0
        rt.every(SWEEP_SECONDS, "image_store_sweep", self.sweep)

    def save(self, tx: UnitOfWork, images: list[FoundImage], now: str) -> None:
        """Store the files and rows of ``images`` inside the caller's transaction."""
        for image in images:
            self.blobs.put(image.data)
            tx.images.put(image.id, image.mime, len(image.data), now)

    def add_file(self, tx: UnitOfWork, data: bytes, mime: str, now: str) -> str:
        """Store one image given as bytes (an import); returns its id."""
        image_id = self.blobs.put(data)
        tx.images.put(image_id, mime, len(data), now)
        return image_id

    def read(self, image_id: str) -> tuple[dict[str, Any], bytes]:
        """The image's facts and bytes.

        :raise NotFound: no such image (404), or its file was evicted by the quota (410).
        """
        meta = self.rt.db.reader().images.get(image_id) if is_blob_id(image_id) else None
        if meta is None:
            raise NotFound(f"no image {image_id!r} in the image store", code=errors.IMAGE_NOT_FOUND)
        data = None if meta["evictedAt"] else self.blobs.read(image_id)
        if data is None:
            raise NotFound(
                f"image {image_id} was evicted from the image store at {meta['evictedAt'] or 'an unknown time'} "
                "to stay under AGENTMEMORY_IMAGE_STORE_MAX_BYTES; raise it to keep more images",
                code=errors.IMAGE_EVICTED,
                status=410,
                details={
                    "imageId": image_id,
                    "evictedAt": meta["evictedAt"],
                    "setting": "AGENTMEMORY_IMAGE_STORE_MAX_BYTES",
                },
            )
        return meta, data

    def sweep(self) -> dict[str, int]:
        """Drop unreferenced images past the grace period, then evict the oldest over the quota."""
        rt = self.rt
        cutoff = iso(rt.clock.now() - timedelta(seconds=GRACE_SECONDS))
        with rt.db.transaction("image_sweep") as tx:
            unused = tx.images.unreferenced(created_before=cutoff, limit=BATCH)
            tx.images.delete(unused)
            for image_id in unused:
                self.blobs.delete(image_id)
            victims = self._over_quota(tx, cutoff)
            tx.images.mark_evicted(victims, rt.clock.iso())
            for image_id in victims:
                self.blobs.delete(image_id)
            if victims:
                tx.audit_details = {"evicted": len(victims), "quotaBytes": self.max_bytes}
        self.removed += len(unused)
        self.evicted += len(victims)
        if victims:
            log.warning(
                "image store over AGENTMEMORY_IMAGE_STORE_MAX_BYTES=%d: evicted the %d oldest image(s)",
                self.max_bytes,
                len(victims),
            )
        if time.monotonic() - self._last_orphan_scan >= ORPHAN_FILES_EVERY:
            self._remove_orphan_files()
        return {"removed": len(unused), "evicted": len(victims)}

    def _over_quota(self, tx: UnitOfWork, cutoff: str) -> list[str]:
        excess = tx.images.stats()["bytes"] - self.max_bytes
        victims: list[str] = []
        while excess > 0:
            batch = tx.images.oldest(created_before=cutoff, limit=BATCH)
            batch = [(i, n) for i, n in batch if i not in set(victims)]
            if not batch:
                break
            for image_id, size in batch:
                if excess <= 0:
                    break
                victims.append(image_id)
                excess -= size
        return victims

    def _remove_orphan_files(self) -> None:
        """Files without a row (a transaction that failed after writing its file) and temporary
        files a crash left behind."""
        self._last_orphan_scan = time.monotonic()
        old = time.time() - GRACE_SECONDS
        candidates = [name for name, _size, mtime in self.blobs.files() if mtime < old]
        with self.rt.db.transaction("image_sweep") as tx:  # the writer lock keeps saves out meanwhile
            for start in range(0, len(candidates), BATCH):
                chunk = candidates[start : start + BATCH]
                for name in set(chunk) - tx.images.known(chunk):
                    self.blobs.delete(name)
        self.blobs.remove_strays(old)

    def health(self) -> dict[str, Any]:
        stats = self.rt.db.reader().images.stats()
        return {
            **stats,
            "quotaBytes": self.max_bytes,
            "dir": str(self.blobs.root),
            "evictedSinceStart": self.evicted,
            "removedSinceStart": self.removed,
        }


def store(ctx: Ctx) -> ImageStore:
    service: ImageStore = ctx.rt.services["images"]
    return service


@tool(
    "image_get",
    params(["imageId"], imageId=string("Image id (the sha256 of its bytes)", max_length=64)),
    http=[("GET", "/images/<imageId>")],
    mcp=False,
    content=("image/*",),
)
def image_get(ctx: Ctx, args: dict) -> Reply:
    """One stored image: its bytes over REST (auth applies), its facts elsewhere; 410 once the
    quota evicted it."""
    meta, data = store(ctx).read(args["imageId"])
    return Reply(meta, 200, content=(data, meta["mime"]))
