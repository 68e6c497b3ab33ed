"""The SQLite schema, as an ordered list of migrations.

``PRAGMA user_version`` records how many have run; ``schema.migrate`` applies the rest when
``Database`` opens the file, each in its own transaction, and refuses a file written by a newer
schema. Never edit a released migration: add a new one at the end (tests open databases made by
every earlier schema).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    """Register a schema migration. Order of registration is the order applied; PRAGMA
    user_version records how many have run. Names must be unique."""

    def register(fn: Migration) -> Migration:
        if any(existing == name for existing, _ in MIGRATIONS):
            raise ValueError(f"duplicate migration {name!r}")
        MIGRATIONS.append((name, fn))
        return fn

    return register


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute several statements inside the caller's transaction (``executescript`` would
    commit first, which would make a failed migration half-applied)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement[:80]!r}")


@migration("core")
def _m001_core(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE kv_store (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL CHECK (json_valid(value)),
            updated_at TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        );
        CREATE INDEX kv_sessions_started ON kv_store (json_extract(value, '$.startedAt'))
            WHERE scope = 'mem:sessions';
        CREATE INDEX kv_memories_updated ON kv_store (json_extract(value, '$.updatedAt'))
            WHERE scope = 'mem:memories';

        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            agent_id TEXT,
            operation TEXT NOT NULL,
            message TEXT NOT NULL,
            targets TEXT NOT NULL DEFAULT '[]',
            details TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_log_operation ON audit_log (operation, id);

        CREATE TABLE capture_events (
            event_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            obs_id TEXT,
            created_at TEXT NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        );

        CREATE TABLE search_docs (
            id INTEGER PRIMARY KEY,
            doc_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            session_id TEXT,
            project TEXT,
            agent_id TEXT,
            type TEXT,
            ts TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX search_docs_project_ts ON search_docs (project, ts);
        CREATE INDEX search_docs_session_ts ON search_docs (session_id, ts);
        CREATE INDEX search_docs_kind_ts ON search_docs (kind, ts);
        -- context: the text just before a record in its session (a reply rarely restates
        -- the question it answers), weighted low in bm25.
        CREATE VIRTUAL TABLE search_fts USING fts5 (
            title, body, concepts, files, context,
            tokenize = 'porter unicode61 remove_diacritics 2'
        );
        """,
    )


@migration("working_memory")
def _m002_working_memory(conn: sqlite3.Connection) -> None:
    # Session-scoped working memory (working.py). Every primary key starts with the scope
    # (project, agent, session); reserved data (task, scratchpad, checkpoints) has its own table,
    # so no key pattern can reach it and checkpoints sit outside key TTL and key capacity.
    run_script(
        conn,
        """
        CREATE TABLE wm_kv (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL CHECK (json_valid(value)),
            expires_at REAL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (project, agent, session, key)
        ) WITHOUT ROWID;
        CREATE INDEX wm_kv_expires ON wm_kv (expires_at) WHERE expires_at IS NOT NULL;

        CREATE TABLE wm_scratchpad (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            seq INTEGER NOT NULL,
            content TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (project, agent, session, seq)
        ) WITHOUT ROWID;

        CREATE TABLE wm_task (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            task TEXT NOT NULL CHECK (json_valid(task)),
            version INTEGER NOT NULL,
            PRIMARY KEY (project, agent, session)
        ) WITHOUT ROWID;

        CREATE TABLE wm_checkpoint (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            meta TEXT NOT NULL CHECK (json_valid(meta)),
            snapshot TEXT NOT NULL CHECK (json_valid(snapshot)),
            PRIMARY KEY (project, agent, session, checkpoint_id)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX wm_checkpoint_order ON wm_checkpoint (project, agent, session, seq);
        """,
    )


@migration("vectors")
def _m003_vectors(conn: sqlite3.Connection) -> None:
    """Embeddings keyed to their search row (deleted with it) and the durable embedding backlog.

    Every row already indexed is queued, so an upgraded database gets its vectors in the
    background instead of at start-up."""
    run_script(
        conn,
        """
        CREATE TABLE search_vectors (
            doc_rowid INTEGER PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX search_vectors_model ON search_vectors (model);
        CREATE TABLE embed_backlog (
            doc_rowid INTEGER PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            queued_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try REAL NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE INDEX embed_backlog_next ON embed_backlog (next_try, doc_rowid);
        INSERT INTO embed_backlog (doc_rowid, queued_at)
            SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM search_docs;
        """,
    )


@migration("memory_model_indexes")
def _m004_memory_model(conn: sqlite3.Connection) -> None:
    # Relations are looked up from either end; retention finds expired memories; diagnostics
    # and retention join search rows back to their record by (scope, key).
    run_script(
        conn,
        """
        CREATE INDEX kv_relations_source ON kv_store (json_extract(value, '$.sourceId'))
            WHERE scope = 'mem:relations';
        CREATE INDEX kv_relations_target ON kv_store (json_extract(value, '$.targetId'))
            WHERE scope = 'mem:relations';
        CREATE INDEX kv_memories_forget ON kv_store (json_extract(value, '$.forgetAfter'))
            WHERE scope = 'mem:memories';
        CREATE INDEX search_docs_scope_key ON search_docs (scope, key);
        """,
    )


@migration("llm_jobs")
def _m005_llm_jobs(conn: sqlite3.Connection) -> None:
    # Durable queue of background model work (llm.py): an observation to compress, a session to
    # summarise or graph, a project to consolidate. Written in the same transaction as the
    # record it is about, so a crash never loses pending work.
    run_script(
        conn,
        """
        CREATE TABLE llm_jobs (
            kind TEXT NOT NULL,
            ref TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(args)),
            queued_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            PRIMARY KEY (kind, ref)
        );
        CREATE INDEX llm_jobs_next ON llm_jobs (next_try, queued_at);
        """,
    )


@migration("search_docs_global")
def _m006_search_docs_global(conn: sqlite3.Connection) -> None:
    # Whether a search row is visible from every project (a memory or lesson saved without a
    # project) becomes a column the indexer sets, instead of a rule on kinds inside the filter
    # SQL. The record indexes of the first migrations are now declared by the features
    # (kernel/scopes.py RECORD_INDEXES) and created by name at open; the old ones go.
    run_script(
        conn,
        """
        ALTER TABLE search_docs ADD COLUMN global INTEGER NOT NULL DEFAULT 0;
        UPDATE search_docs SET global = 1 WHERE project IS NULL AND kind != 'observation';
        DROP INDEX IF EXISTS kv_sessions_started;
        DROP INDEX IF EXISTS kv_memories_updated;
        DROP INDEX IF EXISTS kv_relations_source;
        DROP INDEX IF EXISTS kv_relations_target;
        DROP INDEX IF EXISTS kv_memories_forget;
        """,
    )


@migration("lexical_outbox")
def _m007_lexical_outbox(conn: sqlite3.Connection) -> None:
    # The change feed of the search index for a lexical engine kept outside SQLite (Tantivy):
    # every change to a search row appends its rowid here in the same transaction; the engine
    # applies entries in order and prunes them once its own commit holds them. rowid -1 marks a
    # wipe of every row. lexical_state remembers which engine served the last writes, so an
    # engine that missed some (the store ran with another one) rebuilds itself.
    run_script(
        conn,
        """
        CREATE TABLE lexical_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            rowid INTEGER NOT NULL
        );
        CREATE TABLE lexical_state (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    )


@migration("llm_usage")
def _m008_llm_usage(conn: sqlite3.Connection) -> None:
    # Model calls summed per UTC day, provider, model and feature (models/accounting.py): the
    # token counts /health, the viewer and `agentmemory stats` show, and what the daily token
    # budget is checked against. Aggregated in place, so the table grows by a few rows a day.
    run_script(
        conn,
        """
        CREATE TABLE llm_usage (
            day TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            feature TEXT NOT NULL,
            calls INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            latency_ms_total REAL NOT NULL DEFAULT 0,
            latency_ms_max REAL NOT NULL DEFAULT 0,
            skipped_budget INTEGER NOT NULL DEFAULT 0,
            skipped_low_value INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, provider, model, feature)
        ) WITHOUT ROWID;
        """,
    )


@migration("search_counts")
def _m009_search_counts(conn: sqlite3.Connection) -> None:
    # Search rows per kind, kept by triggers, so /health's counts cost one small read instead of
    # a GROUP BY over every row (100+ ms at a million records, on every health probe).
    run_script(
        conn,
        """
        CREATE TABLE search_counts (
            kind TEXT PRIMARY KEY,
            n INTEGER NOT NULL
        );
        INSERT INTO search_counts (kind, n) SELECT kind, count(*) FROM search_docs GROUP BY kind;
        CREATE TRIGGER search_counts_insert AFTER INSERT ON search_docs BEGIN
            INSERT INTO search_counts (kind, n) VALUES (new.kind, 1)
            ON CONFLICT (kind) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER search_counts_delete AFTER DELETE ON search_docs BEGIN
            UPDATE search_counts SET n = n - 1 WHERE kind = old.kind;
        END;
        CREATE TRIGGER search_counts_kind AFTER UPDATE OF kind ON search_docs
        WHEN old.kind IS NOT new.kind BEGIN
            UPDATE search_counts SET n = n - 1 WHERE kind = old.kind;
            INSERT INTO search_counts (kind, n) VALUES (new.kind, 1)
            ON CONFLICT (kind) DO UPDATE SET n = n + 1;
        END;
        """,
    )


@migration("vector_log")
def _m010_vector_log(conn: sqlite3.Connection) -> None:
    # Every change to search_vectors (cascaded deletes too) appends the row's id here, in commit
    # order (one writer at a time): a process's vector index applies the log past the seq it
    # holds and so catches up with vectors any process wrote (vector_index.py). AUTOINCREMENT:
    # a seq is never reused, even after the newest entries are pruned.
    run_script(
        conn,
        """
        CREATE TABLE vector_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, doc_rowid INTEGER NOT NULL);
        CREATE TRIGGER search_vectors_logged_insert AFTER INSERT ON search_vectors
            BEGIN INSERT INTO vector_log (doc_rowid) VALUES (new.doc_rowid); END;
        CREATE TRIGGER search_vectors_logged_update AFTER UPDATE ON search_vectors
            BEGIN INSERT INTO vector_log (doc_rowid) VALUES (new.doc_rowid); END;
        CREATE TRIGGER search_vectors_logged_delete AFTER DELETE ON search_vectors
            BEGIN INSERT INTO vector_log (doc_rowid) VALUES (old.doc_rowid); END;
        """,
    )


@migration("background_work")
def _m011_background_work(conn: sqlite3.Connection) -> None:
    # Periodic jobs run once per database, whichever worker gets there first (a conditional
    # update claims a due run); background workers say they are alive with a heartbeat row.
    run_script(
        conn,
        """
        CREATE TABLE periodic_jobs (
            name TEXT PRIMARY KEY,
            next_run REAL NOT NULL,
            holder TEXT,
            runs INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            last_run REAL,
            last_error TEXT
        );
        CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at REAL NOT NULL,
            beat_at REAL NOT NULL,
            info TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(info))
        );
        """,
    )


@migration("capture_inbox_and_images")
def _m012_capture_inbox_and_images(conn: sqlite3.Connection) -> None:
    # The capture inbox keeps hook events that did not become an observation (processing failed,
    # the session was full, a capture filter refused the tool) with their attempts, so nothing is
    # lost without a trace; capture_counts counts what the pipeline changed or refused (unknown
    # hook types, truncated fields, filtered tools). Images moved out of hook payloads live as
    # files named by their sha256 beside the database; `images` knows each file and
    # `image_links` which search row references it (deleted with the row, so a forgotten record
    # releases its images without any caller remembering to).
    run_script(
        conn,
        """
        CREATE TABLE capture_inbox (
            event_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            reason TEXT NOT NULL,
            session_id TEXT,
            hook_type TEXT,
            tool_name TEXT,
            agent_id TEXT,
            body TEXT NOT NULL CHECK (json_valid(body)),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX capture_inbox_due ON capture_inbox (status, next_try);
        CREATE INDEX capture_inbox_age ON capture_inbox (status, updated_at, event_id);
        CREATE INDEX capture_inbox_recent ON capture_inbox (updated_at, event_id);

        CREATE TABLE capture_counts (
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            count INTEGER NOT NULL DEFAULT 0,
            last_at TEXT NOT NULL,
            PRIMARY KEY (kind, name)
        );

        CREATE TABLE images (
            id TEXT PRIMARY KEY,
            mime TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            evicted_at TEXT
        );
        CREATE INDEX images_created ON images (created_at);
        CREATE TABLE image_links (
            doc_rowid INTEGER NOT NULL REFERENCES search_docs (id) ON DELETE CASCADE,
            image_id TEXT NOT NULL,
            PRIMARY KEY (doc_rowid, image_id)
        ) WITHOUT ROWID;
        CREATE INDEX image_links_image ON image_links (image_id);
        """,
    )


@migration("search_fts_context")
def _m013_search_fts_context(conn: sqlite3.Connection) -> None:
    # Migration 1 was edited after release (the `context` column came later), so a database made
    # by the first releases has a four-column search_fts and every new search row failed on it
    # (found by tests/test_schema_upgrades.py with a database from that release). FTS5 tables
    # have no ADD COLUMN: copy the text into a five-column table and swap it in. The context of
    # old rows starts empty (it is weighted low); `agentmemory reindex` fills it.
    if "context" in {row[1] for row in conn.execute("PRAGMA table_info(search_fts)")}:
        return
    run_script(
        conn,
        """
        CREATE VIRTUAL TABLE search_fts_v10 USING fts5 (
            title, body, concepts, files, context,
            tokenize = 'porter unicode61 remove_diacritics 2'
        );
        INSERT INTO search_fts_v10 (rowid, title, body, concepts, files, context)
            SELECT rowid, title, body, concepts, files, '' FROM search_fts;
        DROP TABLE search_fts;
        ALTER TABLE search_fts_v10 RENAME TO search_fts;
        """,
    )


@migration("lexical_outbox_time")
def _m014_lexical_outbox_time(conn: sqlite3.Connection) -> None:
    # When each outbox entry was written (epoch seconds): applied entries stay a while, so the
    # searchers of other worker processes, which reload the index a moment after each commit,
    # still find the entries their index does not hold yet. Older entries count as old enough.
    run_script(conn, "ALTER TABLE lexical_outbox ADD COLUMN at REAL NOT NULL DEFAULT 0;")


@migration("live_events")
def _m015_live_events(conn: sqlite3.Connection) -> None:
    # Live events shared by the worker processes of one node (kernel/bus.py): each process
    # appends what it publishes and tails the table to feed its own viewers, in seq order.
    run_script(
        conn,
        """
        CREATE TABLE live_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            type TEXT NOT NULL,
            record TEXT NOT NULL,
            ts REAL NOT NULL,
            origin TEXT NOT NULL
        );
        """,
    )


@migration("search_tokens")
def _m016_search_tokens(conn: sqlite3.Connection) -> None:
    # Each record's token vectors for late interaction (retrieval/late_interaction.py), written by
    # the embedding worker beside its vector and deleted with its search row. A table of their own:
    # in search_vectors they would push every vector onto overflow pages, which the nearest-neighbour
    # index reads in full when it loads. Nothing is queued here: the worker's reconcile finds the
    # rows without token vectors and queues them, marked ``tokens_only`` when their dense vector is
    # current (only the token vectors are computed).
    run_script(
        conn,
        """
        CREATE TABLE search_tokens (
            doc_rowid INTEGER PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            tokens BLOB NOT NULL
        );
        ALTER TABLE embed_backlog ADD COLUMN tokens_only INTEGER NOT NULL DEFAULT 0;
        """,
    )


@migration("periodic_error_times")
def _m017_periodic_error_times(conn: sqlite3.Connection) -> None:
    # When a periodic job's last error happened and when a later run succeeded (epoch seconds), so
    # /health says whether the error still stands and /status alerts only while it does. An error
    # recorded before keeps its message with no time; the job's next run says whether it stands.
    run_script(
        conn,
        """
        ALTER TABLE periodic_jobs ADD COLUMN last_error_at REAL;
        ALTER TABLE periodic_jobs ADD COLUMN recovered_at REAL;
        """,
    )


@migration("periodic_due_times")
def _m018_periodic_due_times(conn: sqlite3.Connection) -> None:
    # When the run now due (or under way) became due: its period's start. A claim moves next_run to
    # the end of its lease, so a run taken up after another worker's claim lapsed could not tell
    # when its period began (a local snapshot run: one taken since then means its work is done).
    # A row claimed at the upgrade gets its lease's end: that one run is judged as before.
    run_script(
        conn,
        """
        ALTER TABLE periodic_jobs ADD COLUMN due_at REAL;
        UPDATE periodic_jobs SET due_at = next_run;
        """,
    )
