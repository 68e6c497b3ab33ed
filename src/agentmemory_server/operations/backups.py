"""Local snapshots taken by the server (AGENTMEMORY_LOCAL_BACKUP_INTERVAL), so a damaged
database can be restored from this disk with ``agentmemory restore --from-backup`` even without
an HF dataset. ``agentmemory backup --local`` takes one any time (storage/sqlite/local_backup.py)."""

from __future__ import annotations

import logging
from typing import Any

from agentmemory_server.errors import LastError
from agentmemory_server.storage.sqlite import local_backup
from agentmemory_server.storage.sqlite.hf_sync import SyncError

log = logging.getLogger("agentmemory.backup")


class LocalBackups:
    """The ``backups`` subsystem: the periodic snapshot job and its state in /health."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.directory = rt.settings.local_backup_path
        self.last: dict[str, Any] | None = None
        self.last_error = LastError()
        # A PostgreSQL store is backed up by the database server (pg_dump, base backups).
        self.applies = not rt.settings.database_url
        if rt.settings.local_backup_interval > 0 and self.applies:
            rt.every(rt.settings.local_backup_interval, "local_backup", self.take)

    def take(self) -> dict[str, Any] | None:
        """One snapshot, unless the database is damaged (a copy of it would push a good one out)
        or the disk has no room for it; either is recorded for /health, never raised."""
        if self.rt.db.damage is not None:
            self.last_error.failed("not taken: the database is damaged")
            return None
        # A second snapshot in one period would push a good older one out of the kept ones: a
        # run whose claim another worker took up stops here, and a run finds the period done
        # when a snapshot was written since it was claimed (by the run that took it up).
        self.rt.jobs.checkpoint()
        if self._taken_since(self.rt.jobs.claimed_at()):
            log.info("local snapshot not taken: one was written since this run was claimed")
            return None
        try:
            self.last = local_backup.take(
                self.rt.db.path,
                self.directory,
                keep=self.rt.settings.local_backup_keep,
                reserve_bytes=self.rt.settings.disk_reserve_mb * 1024 * 1024,
            )
        except SyncError as exc:
            self.last_error.failed(str(exc))
            log.warning("local snapshot skipped: %s", exc)
            return None
        self.last_error.succeeded()
        return self.last

    def _taken_since(self, claimed_at: float | None) -> bool:
        if claimed_at is None:  # not a claimed run: taken as asked
            return False
        newest = local_backup.newest_taken_at(self.directory)
        return newest is not None and newest >= claimed_at - 0.001  # its name keeps milliseconds

    def health(self) -> dict[str, Any]:
        if not self.applies:
            return {"status": "healthy", "message": "PostgreSQL: backed up by the database server, not by this node"}
        found = local_backup.snapshots(self.directory)
        return {
            "status": "degraded" if self.last_error.active else "healthy",
            "dir": str(self.directory),
            "intervalSeconds": self.rt.settings.local_backup_interval,
            "snapshots": len(found),
            "latest": found[0].name if found else None,
            **self.last_error.fields(),
        }
