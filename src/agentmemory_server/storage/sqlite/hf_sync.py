#!/usr/bin/env python3
"""Back up the agentmemory SQLite database to a private HuggingFace dataset, and restore it.

    python sync.py restore [--force] [--boot]   download the latest backup (before the server starts)
    python sync.py backup [--force]             upload a snapshot if the database changed
    python sync.py loop [--interval SECONDS]    back up every interval; a final backup on SIGTERM/SIGINT

A separate process that talks only to the database file and the Hub (never to the server), so it
runs beside a running server, or none. The snapshot comes from SQLite's online
backup API (a consistent copy even while the server writes; never a file copy of a live WAL
database) and is integrity-checked before it leaves the machine. Each backup commits, in one
Hub commit, ``agentmemory.db`` (the latest), ``backups/agentmemory-<UTC time>.db`` (the last
AGENTMEMORY_BACKUP_KEEP are kept; older ones are deleted in the same commit) and
``backup-meta.json`` (id, sha256, times, schema version, row counts). The image store beside the
database (``images/<2 hex>/<sha256>``, content-addressed) is mirrored under ``images/`` in the
same commit: the files the snapshot knows (not evicted) that the dataset lacks are uploaded, the
ones it no longer knows are deleted; a restore fetches the files the database knows and the
local store lacks, each checked against its sha256 name.

Nothing is overwritten blindly. A state file next to the database
(``<db>.sync.json``) records which remote backup the local file descends from and its mtime
fingerprint (``_quick_hash``) at that moment:

- backup skips the upload when the fingerprint is unchanged (no Hub request at all), and
  refuses to replace a remote backup this database did not come from (another writer, or a
  fresh empty database after a failed restore) unless ``--force``;
- restore refuses to replace a local database changed more recently than the remote
  snapshot's source unless ``--force``; a replaced database is kept as ``<db>.pre-restore``.

Exit codes: 0 done (or nothing to do), 1 failed (Hub unreachable, bad download, ...),
2 configuration error, 3 refused to overwrite (see the message).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows; locks become no-ops there
    fcntl = None  # type: ignore[assignment]

# The configuration, the local-file work and the Hub client live in modules of their own; their
# names are re-exported here, so ``hf_sync`` stays the one module callers and tests know.
from agentmemory_server.storage.sqlite.backup_config import (  # noqa: F401
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    SYNC_SETTINGS,
    Config,
    ConfigError,
    Refused,
    SyncError,
    SyncSetting,
    db_path_from_env,
)
from agentmemory_server.storage.sqlite.backup_files import (  # noqa: F401
    IMAGES_DIR,
    IMAGES_PREFIX,
    LATEST,
    _quick_hash,
    _sidecar,
    check_room,
    db_in_use,
    file_lock,
    image_ids,
    image_path,
    inspect,
    install,
    last_change,
    remote_image_name,
    remove_leftovers,
    sha256_file,
    snapshot,
)
from agentmemory_server.storage.sqlite.backup_hub import (  # noqa: F401
    META,
    Hub,
    configure_hub,
    describe_hub_error,
    fetch_images,
    hub_errors,
    image_operations,
)
from agentmemory_server.threads import SignalSafeFlag

HISTORY_PREFIX = "backups/agentmemory-"
log = logging.getLogger("agentmemory.sync")


class State:
    """What the local database was last synced with: ``<db>.sync.json``."""

    FIELDS = ("repo", "fingerprint", "sha256", "remoteId", "pendingId", "syncedAt")

    def __init__(self, path: Path, values: dict[str, Any]):
        self.path = path
        self.values = {k: values.get(k) for k in self.FIELDS}

    @classmethod
    def load(cls, cfg: Config) -> State:
        path = _sidecar(cfg.db_path, ".sync.json")
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            values = {}
        if not isinstance(values, dict) or values.get("repo") != cfg.repo:
            values = {}  # a state about another dataset says nothing about this one
        return cls(path, {**values, "repo": cfg.repo})

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def save(self, **changes: Any) -> None:
        self.values.update(changes, syncedAt=_iso(time.time()))
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.values, indent=2))
        os.replace(tmp, self.path)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- backup ------------------------------------------------------------------------------------------------


def _check_lineage(state: State, meta: dict[str, Any] | None, repo: str, force: bool) -> None:
    """Refuse to replace a remote backup this database does not descend from."""
    if meta is None or meta["id"] in (state.get("remoteId"), state.get("pendingId")):
        return
    if force:
        log.warning(
            "--force: replacing remote backup %s (made %s) with this database", meta["id"], meta.get("createdAt")
        )
        return
    known = state.get("remoteId") or "none (never restored from or backed up to this dataset)"
    raise Refused(
        f"{repo} holds backup {meta['id']} (made {meta.get('createdAt')} on {meta.get('host')}), but this "
        f"database descends from {known}. Refusing to overwrite it: run `sync.py restore` to take the "
        "remote copy, or `sync.py backup --force` to replace it with this database."
    )


def stamp(ts: float) -> str:
    """UTC time as ``20261122T101530.123Z``: sorts as text in time order."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return f"{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z"


def _history_name(created: float) -> str:
    return f"{HISTORY_PREFIX}{stamp(created)}.db"


def _operations(snapshot_path: Path, meta: dict[str, Any], files: set[str], keep: int) -> tuple[list, list[str]]:
    """Commit operations: latest + timestamped copy + metadata, and deletions beyond ``keep``."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ops: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=LATEST, path_or_fileobj=str(snapshot_path))
    ]
    history = sorted(f for f in files if f.startswith(HISTORY_PREFIX) and f.endswith(".db"))
    if keep > 0:
        ops.append(CommitOperationAdd(path_in_repo=meta["history"], path_or_fileobj=str(snapshot_path)))
        history = sorted(set(history) | {meta["history"]})
    pruned = history[:-keep] if keep > 0 else history
    ops += [CommitOperationDelete(path_in_repo=name) for name in pruned]
    ops.append(_meta_operation(meta))
    return ops, pruned


def _meta_operation(meta: dict[str, Any]) -> Any:
    from huggingface_hub import CommitOperationAdd

    return CommitOperationAdd(path_in_repo=META, path_or_fileobj=json.dumps(meta, indent=2).encode())


def _new_meta(info: dict[str, Any], changed_at: float, remote: dict[str, Any] | None) -> dict[str, Any]:
    now = time.time()
    return {
        "format": 1,
        "id": f"{stamp(now)}-{info['sha256'][:12]}",
        "file": LATEST,
        "history": _history_name(now),
        "createdAt": _iso(now),
        "sourceChangedAt": _iso(changed_at),
        "sourceChangedAtEpoch": changed_at,
        "host": socket.gethostname(),
        "previous": remote["id"] if remote else None,
        **info,
    }


def _publish(
    hub: Hub, state: State, path: Path, meta: dict[str, Any], head: str | None, files: set[str]
) -> dict[str, Any]:
    """One commit: latest, timestamped copy, metadata, pruned history and the image store.
    ``head`` as the parent makes the Hub reject the commit if anyone else committed since."""
    operations, pruned = _operations(path, meta, files, hub.cfg.keep)
    image_ops, meta["images"] = image_operations(hub.cfg.db_path, image_ids(path), files)
    operations[-1:-1] = image_ops  # before the metadata, which says what the commit holds
    operations[-1] = _meta_operation(meta)
    # Recorded before the upload: if the Hub commits but the reply is lost, the next run still
    # recognises the remote backup as its own.
    state.save(pendingId=meta["id"])
    commit = hub.commit(operations, f"agentmemory backup {meta['id']}", head)
    return {
        "status": "uploaded",
        "id": meta["id"],
        "commit": commit,
        "size": meta["size"],
        "tables": meta["tables"],
        "pruned": pruned,
        "images": meta["images"],
    }


# The scratch folders beside the database of a backup and of a restore (a killed run leaves one).
BACKUP_SCRATCH, RESTORE_SCRATCH = ".agentmemory-backup-", ".agentmemory-restore-"


def _remove_scratch_leftovers(db: Path) -> None:
    """Under ``file_lock``, which every backup and restore holds while its scratch folder exists."""
    for prefix in (BACKUP_SCRATCH, RESTORE_SCRATCH):
        remove_leftovers(db.parent, prefix + "*")


def backup(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Upload a snapshot of the database when it changed since the last sync.

    :return: ``{"status": "unchanged" | "uploaded", ...}``.
    :raise SyncError: no database, Hub failure, failed integrity check.
    :raise Refused: the remote backup is not one this database descends from (see --force).
    """
    db, repo = cfg.db_path, cfg.require_repo()
    if not db.exists():
        raise SyncError(f"no database at {db}: nothing to back up")
    with file_lock(db):
        _remove_scratch_leftovers(db)  # before check_room: a killed run's copy holds room
        state = State.load(cfg)
        fingerprint, changed_at = _quick_hash(db), last_change(db)
        if not force and state.get("remoteId") and state.get("fingerprint") == fingerprint:
            return {"status": "unchanged", "id": state.get("remoteId")}
        check_room(db, cfg.reserve_mb * 1024 * 1024)  # before anything is written, here or on the Hub
        hub = Hub(cfg)
        head, files = hub.head(create=True)
        if head is None:  # head(create=True) creates the dataset; a None here is the Hub's bug
            raise SyncError(f"the Hub returned no commit for {repo} after creating it")
        with tempfile.TemporaryDirectory(dir=db.parent, prefix=BACKUP_SCRATCH) as scratch:
            remote = hub.meta(head, files, Path(scratch))
            _check_lineage(state, remote, repo, force)
            info = snapshot(db, Path(scratch) / LATEST)
            if remote is not None and remote.get("sha256") == info["sha256"] and not force:
                state.save(fingerprint=fingerprint, sha256=info["sha256"], remoteId=remote["id"], pendingId=None)
                return {"status": "unchanged", "id": remote["id"]}
            result = _publish(hub, state, Path(scratch) / LATEST, _new_meta(info, changed_at, remote), head, files)
        state.save(fingerprint=fingerprint, sha256=info["sha256"], remoteId=result["id"], pendingId=None)
    log.info(
        "uploaded backup %s (%d bytes, schema %s) to %s; pruned %d old snapshot(s)",
        result["id"],
        info["size"],
        info["schemaVersion"],
        repo,
        len(result["pruned"]),
    )
    return result


# -- restore -----------------------------------------------------------------------------------------------


def _restore_decision(db: Path, state: State, meta: dict[str, Any] | None, force: bool) -> str | None:
    """Why to download the remote backup, or None when the local database already has it.

    :raise Refused: the local database changed after the remote snapshot's source did.
    """
    if not db.exists() or db.stat().st_size == 0:
        return "there is no local database"
    if force:
        return "--force"
    remote_id = meta["id"] if meta else None
    if remote_id and remote_id in (state.get("remoteId"), state.get("pendingId")):
        return None
    if state.get("remoteId") and state.get("fingerprint") == _quick_hash(db):
        return "the local database is unchanged since its last sync and the remote backup is newer"
    local_at = last_change(db)
    remote_at = meta.get("sourceChangedAtEpoch") if meta else None
    if not isinstance(remote_at, (int, float)) or local_at > remote_at:
        remote_desc = (
            f"backup {remote_id} of a database last changed {meta.get('sourceChangedAt')}"
            if meta
            else "backup (it has no metadata, so its age is unknown)"
        )
        raise Refused(
            f"the local database {db} (last changed {_iso(local_at)}) is newer than the remote {remote_desc}; "
            "not overwriting it. Use `restore --force` to replace it anyway, or `backup --force` to upload it."
        )
    return "the remote backup is newer than the local changes (the local copy is kept as .pre-restore)"


def restore(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Download the latest backup into place, unless the local database is as new or newer.

    :return: ``{"status": "no-backup" | "up-to-date" | "restored", ...}``.
    :raise Refused: the local database is newer than the remote (see --force).
    :raise SyncError: Hub failure, bad download, or the database is open in another process.
    """
    db, repo = cfg.db_path, cfg.require_repo()
    with file_lock(db):
        _remove_scratch_leftovers(db)
        hub = Hub(cfg)
        head, files = hub.head(create=False)
        if head is None or LATEST not in files:
            what = "does not exist yet" if head is None else f"has no {LATEST} yet"
            log.info("dataset %s %s: nothing to restore (first boot is fine)", repo, what)
            return {"status": "no-backup"}
        with tempfile.TemporaryDirectory(dir=db.parent, prefix=RESTORE_SCRATCH) as scratch:
            meta = hub.meta(head, files, Path(scratch) / "meta")
            state = State.load(cfg)
            reason = _restore_decision(db, state, meta, force)
            if reason is None and meta is not None:  # None only when the remote id is the local one
                log.info("local database already contains remote backup %s: nothing to restore", meta["id"])
                images = fetch_images(hub, head, files, db, Path(scratch) / "images")
                return {"status": "up-to-date", "id": meta["id"], "images": images}
            info, kept = _download_and_install(hub, head, db, meta, Path(scratch) / "db")
            images = fetch_images(hub, head, files, db, Path(scratch) / "images")
        remote_id = meta["id"] if meta else f"unversioned-{info['sha256'][:12]}"
        state.save(fingerprint=_quick_hash(db), sha256=info["sha256"], remoteId=remote_id, pendingId=None)
    return _restored(db, remote_id, info, kept, reason, images)


def _restored(
    db: Path, remote_id: str, info: dict[str, Any], kept: Path | None, reason: str | None, images: dict[str, int]
) -> dict[str, Any]:
    """Log a restore done and say what it installed."""
    log.info(
        "restored backup %s into %s (%d bytes, schema %s): %s",
        remote_id,
        db,
        info["size"],
        info["schemaVersion"],
        reason,
    )
    return {
        "status": "restored",
        "id": remote_id,
        "size": info["size"],
        "tables": info["tables"],
        "kept": str(kept) if kept else None,
        "reason": reason,
        "images": images,
    }


def _download_and_install(
    hub: Hub, head: str, db: Path, meta: dict[str, Any] | None, scratch: Path
) -> tuple[dict[str, Any], Path | None]:
    """Put the latest backup in place of ``db`` once it is checked (the database is closed, the
    download matches its metadata's sha256); returns its description and where the old file was kept."""
    if db_in_use(db):
        raise SyncError(f"{db} is open in another process (is the server running?); stop it first")
    path = hub.download(LATEST, head, scratch)
    if meta is not None and meta.get("sha256") != sha256_file(path):
        raise SyncError(f"downloaded {LATEST} does not match the sha256 in {META}; not installed")
    info = inspect(path)
    return info, install(path, db)


def latest_backup_time(cfg: Config) -> float | None:
    """When the dataset's latest backup was taken (Unix time), or None when it has none."""
    hub = Hub(cfg)
    head, files = hub.head(create=False)
    if head is None or LATEST not in files:
        return None
    with tempfile.TemporaryDirectory(prefix=".agentmemory-meta-") as scratch:
        meta = hub.meta(head, files, Path(scratch))
    if meta is None or not isinstance(meta.get("createdAt"), str):
        return 0.0  # a backup of unknown age: older than any dated local snapshot
    return datetime.fromisoformat(meta["createdAt"].replace("Z", "+00:00")).timestamp()


def restore_for_boot(cfg: Config) -> int:
    """Restore before the server starts: retry a failing Hub, keep a newer local database, and
    refuse to start on an empty database when no backup could be fetched (serving an empty
    memory would hide the real one) unless AGENTMEMORY_RESTORE_REQUIRED=false."""
    for attempt in range(1, cfg.restore_attempts + 1):
        try:
            restore(cfg)
            return EXIT_OK
        except Refused as exc:
            log.warning("%s Starting with the local database.", exc)
            return EXIT_OK
        except ConfigError:
            raise
        except SyncError as exc:
            log.error("restore attempt %d/%d failed: %s", attempt, cfg.restore_attempts, exc)
        if attempt < cfg.restore_attempts:
            time.sleep(cfg.restore_retry_delay)
    if cfg.db_path.exists():
        log.warning("could not restore; starting with the existing local database %s", cfg.db_path)
        return EXIT_OK
    if not cfg.restore_required:
        log.warning("could not restore; starting with an empty database (AGENTMEMORY_RESTORE_REQUIRED=false)")
        return EXIT_OK
    log.error(
        "could not restore and there is no local database: not starting, because an empty "
        "database would hide the backup. Set AGENTMEMORY_RESTORE_REQUIRED=false to start anyway."
    )
    return EXIT_FAILED


# -- loop --------------------------------------------------------------------------------------------------


def _backup_logged(cfg: Config, when: str) -> bool:
    """One backup for the loop: every failure is logged and survived."""
    try:
        result = backup(cfg)
        if result["status"] == "unchanged":
            log.debug("%s backup: unchanged", when)
        return True
    except SyncError as exc:
        log.error("%s backup failed: %s", when, exc)
    except Exception:  # noqa: BLE001 - the loop must survive anything and try again next tick
        log.exception("%s backup failed unexpectedly", when)
    return False


def run_loop(cfg: Config, stop: threading.Event | SignalSafeFlag | None = None) -> int:
    """Back up every ``cfg.interval`` seconds until SIGTERM/SIGINT (or ``stop``), then once more.

    :return: 0, or 1 when the final backup failed.
    """
    cfg.require_repo()
    stop = stop or SignalSafeFlag()  # set by the signal handlers below, where an Event could deadlock
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("backing up %s to dataset %s every %gs", cfg.db_path, cfg.repo, cfg.interval)
    while not stop.wait(cfg.interval):
        if cfg.db_path.exists():
            _backup_logged(cfg, "periodic")
    log.info("stopping: final backup")
    if not cfg.db_path.exists():
        return EXIT_OK
    return EXIT_OK if _backup_logged(cfg, "final") else EXIT_FAILED


# -- command line ------------------------------------------------------------------------------------------


class _MaskToken(logging.Filter):
    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "[REDACTED_SECRET]"), ()
        return True


def setup_logging(verbose: bool = False) -> None:
    level = "DEBUG" if verbose else (os.environ.get("AGENTMEMORY_LOG_LEVEL") or "info").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s sync %(levelname)s: %(message)s")
    token = (os.environ.get("HF_TOKEN") or "").strip()
    if len(token) >= 8:  # standalone (no server code here): at least the Hub token never reaches a log
        for handler in logging.getLogger().handlers:
            handler.addFilter(_MaskToken(token))
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one INFO line per HTTP request
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bar noise in logs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sync.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    restore_cmd = commands.add_parser("restore", help="download the latest backup into place")
    restore_cmd.add_argument("--force", action="store_true", help="replace a newer local database")
    restore_cmd.add_argument("--boot", action="store_true", help="container boot policy (retries, see README)")
    backup_cmd = commands.add_parser("backup", help="upload a snapshot if the database changed")
    backup_cmd.add_argument("--force", action="store_true", help="upload even if unchanged or diverged")
    loop_cmd = commands.add_parser("loop", help="back up periodically; final backup on SIGTERM")
    loop_cmd.add_argument("--interval", type=float, help="seconds (default AGENTMEMORY_BACKUP_INTERVAL)")
    opts = parser.parse_args(argv)
    setup_logging(opts.verbose)
    try:
        cfg = Config.from_env()
        if opts.command == "restore":
            return restore_for_boot(cfg) if opts.boot else _print(restore(cfg, force=opts.force))
        if opts.command == "backup":
            return _print(backup(cfg, force=opts.force))
        if opts.interval is not None:
            cfg = Config.from_env(interval=max(opts.interval, 0.05))
        return run_loop(cfg)
    except SyncError as exc:
        log.error("%s failed: %s", opts.command, exc)
        return exc.exit_code


def _print(result: dict[str, Any]) -> int:
    print(json.dumps(result, sort_keys=True), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
