"""The image store: images moved out of hook payloads, named by their sha256 and
reference-counted through the search rows that use them. The storage keeps the bytes
(``ImageIndex``): files beside a SQLite database (``images/``), rows of the database on
PostgreSQL, so any node of a cluster serves any image.

Saving happens inside the observation's transaction, and the sweep drops bytes inside its own
transaction, so bytes are never dropped between an observation deciding to reuse them and
committing. Every ``SWEEP_SECONDS`` the sweep drops images no record references any more (after
a ``GRACE_SECONDS`` grace, so an image written by a transaction still in flight is never taken),
then, while the kept bytes exceed ``AGENTMEMORY_IMAGE_STORE_MAX_BYTES``, evicts the oldest: the
bytes go, the row stays marked evicted, and the records keep their reference (GET /images/<id>
answers 410 saying why).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from agentmemory_server import errors
from agentmemory_server.capture.images import FoundImage
from agentmemory_server.errors import NotFound
from agentmemory_server.kernel.access import agent_filter, in_token_projects, isolated
from agentmemory_server.kernel.registry import Ctx, Reply, params, string, tool
from agentmemory_server.kernel.util import iso
from agentmemory_server.storage.blobs import is_blob_id
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
        self.max_bytes = rt.settings.image_store_max_bytes
        self.evicted = 0
        self.removed = 0
        self._last_orphan_scan = 0.0
        rt.every(SWEEP_SECONDS, "image_store_sweep", self.sweep)

    def save(self, tx: UnitOfWork, images: list[FoundImage], now: str) -> None:
        """Store the bytes and rows of ``images`` inside the caller's transaction."""
        for image in images:
            tx.images.put(image.id, image.mime, image.data, now)

    def read(self, image_id: str) -> tuple[dict[str, Any], bytes]:
        """The image's facts and bytes.

        :raise NotFound: no such image (404), or its file was evicted by the quota (410).
        """
        store = self.rt.db.reader()
        meta = store.images.get(image_id) if is_blob_id(image_id) else None
        if meta is None:
            raise NotFound(f"no image {image_id!r} in the image store", code=errors.IMAGE_NOT_FOUND)
        data = None if meta["evictedAt"] else store.images.read(image_id)
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
            victims = self._over_quota(tx, cutoff)
            tx.images.mark_evicted(victims, rt.clock.iso())
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
            self._last_orphan_scan = time.monotonic()
            with rt.db.transaction("image_sweep") as tx:  # the writer lock keeps saves out meanwhile
                tx.images.sweep_leftovers(time.time() - GRACE_SECONDS)
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

    def health(self) -> dict[str, Any]:
        store = self.rt.db.reader()
        return {
            **store.images.stats(),
            "quotaBytes": self.max_bytes,
            "storedIn": store.images.location(),
            "evictedSinceStart": self.evicted,
            "removedSinceStart": self.removed,
        }


def _shown_to(ctx: Ctx, image_id: str) -> bool:
    """Whether a record the caller may read references the image (its agent, its token's projects)."""
    reader = ctx.rt.db.reader()
    rows = reader.images.linked_rows(image_id) if is_blob_id(image_id) else []
    docs = reader.index.by_rowid(rows, {"agent_id": agent_filter(ctx)})
    return any(in_token_projects(ctx, doc) for doc in docs)


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
    quota evicted it. A caller whose reads are limited (isolated agent scope, a principal's token)
    gets only an image one of its records shows; any other is as unknown to it as a hash never stored."""
    if isolated(ctx) and not _shown_to(ctx, args["imageId"]):
        raise NotFound(f"no image {args['imageId']!r} in the image store", code=errors.IMAGE_NOT_FOUND)
    meta, data = store(ctx).read(args["imageId"])
    return Reply(meta, 200, content=(data, meta["mime"]))
