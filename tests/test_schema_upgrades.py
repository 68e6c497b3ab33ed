"""Upgrades never lose data: a database written by every earlier released schema (real files made
by the code of those releases, tests/fixtures/schemas/README.md) opens in today's server with every
record intact and searchable; a file from a newer release is refused untouched; a migration
killed halfway rolls back and completes at the next start."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import ROOT, SRC, LiveServer, hook, post, wait_for

from agentmemory_server.kernel.scopes import RECORD_INDEXES
from agentmemory_server.storage import open_database
from agentmemory_server.storage.sqlite.migrations import MIGRATIONS

FIXTURES = ROOT / "tests" / "fixtures" / "schemas"
# Schema 3 never reached main: the merge that brought the vector index (460d0e8) added migrations
# 3 and 4 at once, so no released database has user_version 3.
# Schemas 10-12 neither: issues 14, 18 and 20 of one round each added a migration, merged together
# (13 is the first released after 9). Issue 15 of the same round adds 14 and 15 on top: until a
# release ships 15, neither 13 nor 14 reached a user alone. main carried 11 and 12 for a few
# minutes between those merges, so v11.db and v12.db exist anyway: more coverage, not a requirement.
NEVER_RELEASED = {3, 10, 11, 12, 13, 14}
VERSIONS = sorted(int(p.stem[1:]) for p in FIXTURES.glob("v*.db"))
PRESERVED_TABLES = ("kv_store", "capture_events", "wm_kv", "wm_scratchpad", "wm_task", "wm_checkpoint")


def rows(db: Path) -> dict[str, set[tuple]]:
    """The rows of the tables that hold the records (absent tables: empty)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: set(conn.execute(f'SELECT * FROM "{t}"').fetchall()) if t in names else set()
                for t in PRESERVED_TABLES}
    finally:
        conn.close()


def schema_version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def schema(db: Path) -> dict[str, str]:
    """Every table, index and trigger by name, its SQL with quoting and spacing normalised."""
    conn = sqlite3.connect(db)
    try:
        found = conn.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    finally:
        conn.close()
    # A renamed FTS5 table's shadow tables are written with other quotes and spaces: same schema.
    return {name: re.sub(r"\s+", " ", re.sub(r"[\"']", "", sql or "")).replace("( ", "(").replace(" )", ")").strip()
            for name, sql in found}


def test_there_is_a_fixture_for_every_released_schema():
    # The current schema may be unreleased; every schema before it was released (but 3) and has one.
    earlier = set(range(1, len(MIGRATIONS))) - NEVER_RELEASED
    assert earlier <= set(VERSIONS) and max(VERSIONS) <= len(MIGRATIONS), (
        "a release added a migration: make a fixture with the code of the release before it "
        "(tests/fixtures/schemas/README.md)")
    for version in VERSIONS:
        manifest = json.loads((FIXTURES / f"v{version}.json").read_text())
        assert manifest["schemaVersion"] == version == schema_version(FIXTURES / f"v{version}.db")
        # Small: every table and index takes at least one 4 KB page, so the files grow with the
        # schema (a schema-12 database with one record of each kind is 344 KB).
        assert (FIXTURES / f"v{version}.db").stat().st_size < 512 * 1024


@pytest.mark.parametrize("version", VERSIONS)
def test_a_database_from_an_earlier_release_upgrades_with_nothing_lost(version, tmp_path):
    manifest = json.loads((FIXTURES / f"v{version}.json").read_text())
    server = LiveServer(tmp_path, {"AGENTMEMORY_BACKGROUND_JOBS": "false", "EMBEDDING_PROVIDER": "hash"}, [],
                        start=False)
    server.data_dir.mkdir(parents=True)
    shutil.copyfile(FIXTURES / f"v{version}.db", server.db_path)
    before = rows(server.db_path)
    server.start()
    try:
        health = requests.get(server.api("/health"), timeout=30).json()
        assert health["db"]["schemaVersion"] == len(MIGRATIONS) and health["status"] != "critical"
        assert health["counts"]["observations"] == manifest["written"]["observation"]
        for what, word in manifest["words"].items():
            hits = post(server.api("/search"), {"query": word, "limit": 5}).json()["results"]
            assert hits, f"{what} ({word}) is not found after the upgrade from v{version}"
        for session in ("fixture-s0", "fixture-s1"):
            listed = requests.get(server.api("/observations"), params={"sessionId": session}).json()
            assert len(listed["observations"]) == 3
        checks = {c["name"]: c["status"] for c in post(server.api("/diagnostics"), {}).json()["checks"]}
        for name in ("db_integrity", "search_rows_missing", "search_rows_orphaned", "search_text_missing",
                     "session_counts"):
            assert checks[name] == "pass", (name, checks)
        assert post(server.api("/observe"), hook("after-upgrade")).status_code == 201
    finally:
        server.stop()
    after = rows(server.db_path)
    for table in PRESERVED_TABLES:
        assert before[table] <= after[table], f"{table}: rows changed or lost by the upgrade from v{version}"
    # The upgraded file has exactly the schema of a database created today.
    fresh = tmp_path / "fresh.db"
    open_database(fresh, now=lambda: "2026-12-01T00:00:00.000Z", record_indexes=RECORD_INDEXES).close()
    assert schema(server.db_path) == schema(fresh)


def test_the_periodic_schedule_keeps_its_rows_and_gains_error_times_in_the_upgrade_from_v16(tmp_path):
    """Schema 16's periodic_jobs kept a failed run's message with no time; schema 17 adds when it
    happened and when a later run succeeded. The rows of the schedule survive the upgrade as they
    were; an error from before has no time (unknown), and the next good run marks it recovered."""
    db = tmp_path / "agentmemory.db"
    shutil.copyfile(FIXTURES / "v16.db", db)
    conn = sqlite3.connect(db)  # as schema 16's code left them
    conn.executemany(
        "INSERT INTO periodic_jobs (name, next_run, holder, runs, errors, last_run, last_error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [("retention", 1_900_000_000.0, "host:1:2", 7, 2, 1_899_990_000.0, "OSError: No space left on device"),
         ("sweep", 1_900_000_060.0, "host:1:2", 3, 0, 1_899_999_000.0, None)])
    conn.commit()
    conn.close()
    store = open_database(db, now=lambda: "2026-12-07T00:00:00.000Z")
    try:
        assert store.reader().jobs.periodic_status() == [
            {"name": "retention", "nextRun": 1_900_000_000.0, "holder": "host:1:2", "runs": 7, "errors": 2,
             "lastRun": 1_899_990_000.0, "lastError": "OSError: No space left on device", "lastErrorAt": None,
             "recoveredAt": None},
            {"name": "sweep", "nextRun": 1_900_000_060.0, "holder": "host:1:2", "runs": 3, "errors": 0,
             "lastRun": 1_899_999_000.0, "lastError": None, "lastErrorAt": None, "recoveredAt": None},
        ]
        with store.transaction("test") as tx:
            tx.jobs.periodic_done("retention", 1_900_000_005.0, None)
            tx.jobs.periodic_done("sweep", 1_900_000_065.0, None)
        retention, sweep = store.reader().jobs.periodic_status()
        assert retention["lastError"] == "OSError: No space left on device" and retention["runs"] == 8
        assert retention["recoveredAt"] == 1_900_000_005.0 and sweep["recoveredAt"] is None  # no error to recover
    finally:
        store.close()


def test_the_periodic_schedule_gains_each_runs_due_time_in_the_upgrade_from_v17(tmp_path):
    """Schema 18 keeps when a job's run became due (its period's start), which a claim's lease used
    to overwrite in next_run. A row of schema 17 is due at its next_run; a claim keeps that time,
    and recording the run sets the next one's."""
    db = tmp_path / "agentmemory.db"
    shutil.copyfile(FIXTURES / "v17.db", db)
    conn = sqlite3.connect(db)  # as schema 17's code left it
    conn.execute("INSERT INTO periodic_jobs (name, next_run, holder, runs, errors) "
                 "VALUES ('local_backup', 1900000000.0, 'host:1:2', 4, 0)")
    conn.commit()
    conn.close()
    store = open_database(db, now=lambda: "2026-12-07T00:00:00.000Z")
    try:
        assert store.reader().jobs.periodic_due_at("local_backup") == 1_900_000_000.0
        with store.transaction("test") as tx:
            assert tx.jobs.claim_periodic("local_backup", 1_900_000_010.0, 1_900_000_310.0, "host:3:4")
        assert store.reader().jobs.periodic_due_at("local_backup") == 1_900_000_000.0  # not the lease's end
        with store.transaction("test") as tx:
            assert tx.jobs.periodic_done("local_backup", 1_900_000_020.0, None, holder="host:3:4",
                                         next_run=1_900_003_610.0)
        assert store.reader().jobs.periodic_due_at("local_backup") == 1_900_003_610.0
    finally:
        store.close()


def test_a_database_from_a_newer_release_is_refused_and_left_untouched(tmp_path):
    server = LiveServer(tmp_path, {}, [], start=False)
    server.data_dir.mkdir(parents=True)
    shutil.copyfile(FIXTURES / f"v{max(VERSIONS)}.db", server.db_path)
    conn = sqlite3.connect(server.db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    digest = sha256(server.db_path)
    proc = subprocess.run([sys.executable, str(SRC / "app.py")], env=server.env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"schema version {len(MIGRATIONS) + 1} but this server knows {len(MIGRATIONS)}" in proc.stderr
    assert "Upgrade agentmemory-python" in proc.stderr and "nothing was changed" in proc.stderr
    cli = subprocess.run([str(Path(sys.executable).with_name("agentmemory")), "stats"], env=server.env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "newer agentmemory-python" in cli.stderr
    assert sha256(server.db_path) == digest  # not migrated, not converted, not touched


MIGRATE = ("import sys; from pathlib import Path; from agentmemory_server.storage import open_database; "
           "open_database(Path(sys.argv[1]), now=lambda: '2026-12-01T00:00:00.000Z').close()")


def inflate(db: Path, rows_to_add: int) -> None:
    """Add search rows so that the pending migration (6: a new column set on every row) takes
    long enough to be killed in the middle."""
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO search_docs (doc_id, kind, scope, key, project, ts) VALUES (?, 'memory', 'mem:memories', ?, "
        "NULL, '2026-01-01T00:00:00Z')",
        ((f"memory:bulk{i}", f"bulk{i}") for i in range(rows_to_add)))
    conn.commit()
    conn.close()


def test_a_migration_killed_midway_rolls_back_and_completes_at_the_next_start(tmp_path):
    assert MIGRATIONS[5][0] == "search_docs_global"  # the migration this test interrupts
    for attempt, extra in enumerate((300_000, 800_000, 1_600_000)):
        db = tmp_path / f"attempt{attempt}" / "agentmemory.db"
        db.parent.mkdir()
        shutil.copyfile(FIXTURES / "v5.db", db)
        inflate(db, extra)
        total = 9 + extra
        wal = Path(str(db) + "-wal")
        proc = subprocess.Popen([sys.executable, "-c", MIGRATE, str(db)], cwd=ROOT)
        try:  # mid-migration: the transaction is spilling into the WAL and 6 is not committed
            wait_for(lambda: proc.poll() is not None or (wal.exists() and wal.stat().st_size > 4 << 20),
                     timeout=120, interval=0.005, message="the migration never wrote its transaction")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL and schema_version(db) == 5:
            break
    else:
        pytest.fail("the migration always finished before it could be killed")
    conn = sqlite3.connect(db)
    try:  # rolled back: still schema 5, no trace of the half-done migration, every row there
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert "global" not in {r[1] for r in conn.execute("PRAGMA table_info(search_docs)")}
        assert conn.execute("SELECT count(*) FROM search_docs").fetchone()[0] == total
    finally:
        conn.close()
    server = LiveServer(tmp_path, {"AGENTMEMORY_DB": str(db), "AGENTMEMORY_BACKGROUND_JOBS": "false"}, [],
                        ready_timeout=180)
    try:
        assert requests.get(server.api("/health"), timeout=60).json()["db"]["schemaVersion"] == len(MIGRATIONS)
    finally:
        server.stop()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM search_docs").fetchone()[0] == total
        assert conn.execute("SELECT count(*) FROM search_docs WHERE global = 1").fetchone()[0] >= extra
    finally:
        conn.close()


def test_record_indexes_follow_what_is_declared_and_a_tool_leaves_them_alone(tmp_path):
    """The server creates the record indexes its features declare and drops those no longer
    declared. An opener that declares none (a script, a one-off check) leaves them as they are:
    it used to drop them all, and the next server start built them again (6 s at 1M records)."""
    from agentmemory_server.storage.sqlite.records import index_name

    path = tmp_path / "agentmemory.db"
    now = lambda: "2026-12-06T00:00:00.000Z"  # noqa: E731

    def indexes() -> set[str]:
        conn = sqlite3.connect(path)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'kv_idx_%'")}
        finally:
            conn.close()

    declared = {index_name(spec) for spec in RECORD_INDEXES}
    open_database(path, now=now, lexical_engine="fts5", record_indexes=RECORD_INDEXES).close()
    assert indexes() == declared and len(declared) > 2
    open_database(path, now=now, lexical_engine="fts5").close()
    assert indexes() == declared
    open_database(path, now=now, lexical_engine="fts5", record_indexes=RECORD_INDEXES[:2]).close()
    assert indexes() == {index_name(spec) for spec in RECORD_INDEXES[:2]}
