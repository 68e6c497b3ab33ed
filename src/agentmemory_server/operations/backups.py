"""Local snapshots taken by the server (AGENTMEMORY_LOCAL_BACKUP_INTERVAL), so a damaged
database can be restored from this disk with ``agentmemory restore --from-backup`` even without
an HF dataset. ``agentmemory backup --local`` takes one any time (storage/sqlite/local_backup.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from agentmemory_server.errors import LastError
from agentmemory_server.kernel.util import iso
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
        # when a snapshot was taken since the period began (its due time): by the run that took
        # this one up, or by a run that took it and stalled before recording the run, whose
        # claim this one took up. The run is then recorded, with no snapshot.
        self.rt.jobs.checkpoint()
        began = self.rt.jobs.period_began()
        if began is not None and self._taken_since(began):  # None: not a claimed run, taken as asked
            since = iso(datetime.fromtimestamp(began, tz=UTC))
            log.info("local snapshot not taken: one was taken since this run's period began (%s)", since)
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

    def _taken_since(self, began: float) -> bool:
        newest = local_backup.newest_taken_at(self.directory)
        return newest is not None and newest >= began - 0.001  # its name keeps milliseconds

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
