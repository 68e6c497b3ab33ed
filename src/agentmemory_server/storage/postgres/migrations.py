"""The PostgreSQL schema, as an ordered list of migrations (like ``storage/sqlite/migrations.py``).

``agentmemory_schema.version`` records how many have run. ``schema.Schema.migrate`` applies the
rest when ``PostgresDatabase`` opens the database, under an advisory lock (nodes starting
together migrate once), each migration in its own transaction, and refuses a database written by
a newer schema. Never edit a released migration: add a new one at the end.

The tables mirror the SQLite ones. Differences, and why:

- ``kv_store.value`` is ``jsonb`` (record fields are queried and indexed as JSON); a record whose
  JSON text ``jsonb`` cannot hold (a NUL character, a lone surrogate) keeps its exact text in
  ``raw`` and a scrubbed copy in ``value`` for queries.
- Key columns are ``COLLATE "C"``: byte order, as SQLite compares, whatever the database's locale.
- Search text lives in ``search_text`` with a generated, weighted ``tsvector`` (GIN): the
  database's own full-text engine answers while the Tantivy index of a node is being built.
- Vectors are pgvector ``vector`` columns; an HNSW (cosine) index per model and dimension is
  created when that model stores its first vector.
- ``lexical_nodes``: how far each node's Tantivy index has applied the outbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Migration = Callable[[Any], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        if any(existing == name for existing, _ in MIGRATIONS):
            raise ValueError(f"duplicate migration {name!r}")
        MIGRATIONS.append((name, fn))
        return fn

    return register


def run_script(conn: Any, script: str) -> None:
    """Execute statements separated by ``;`` at line ends, in the caller's transaction."""
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)


@migration("core")
def _m001_core(conn: Any) -> None:
    run_script(
        conn,
        """
        CREATE EXTENSION IF NOT EXISTS vector;
        CREATE TABLE kv_store (
            scope TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            value JSONB NOT NULL,
            raw TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        );
        CREATE TABLE audit_log (
            id BIGSERIAL PRIMARY KEY,
            ts TEXT NOT NULL,
            agent_id TEXT,
            operation TEXT NOT NULL,
            message TEXT NOT NULL,
            targets JSONB NOT NULL DEFAULT '[]',
            details JSONB NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_log_operation ON audit_log (operation, id);
        CREATE TABLE capture_events (
            event_id TEXT COLLATE "C" PRIMARY KEY,
            session_id TEXT NOT NULL,
            obs_id TEXT,
            created_at TEXT NOT NULL,
            deleted BOOLEAN NOT NULL DEFAULT false
        );
        CREATE INDEX capture_events_obs ON capture_events (obs_id);
        CREATE TABLE search_docs (
            id BIGSERIAL PRIMARY KEY,
            doc_id TEXT COLLATE "C" NOT NULL UNIQUE,
            kind TEXT COLLATE "C" NOT NULL,
            scope TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            session_id TEXT COLLATE "C",
            project TEXT COLLATE "C",
            agent_id TEXT COLLATE "C",
            type TEXT COLLATE "C",
            ts TEXT COLLATE "C" NOT NULL,
            active BOOLEAN NOT NULL DEFAULT true,
            global BOOLEAN NOT NULL DEFAULT false
        );
        CREATE INDEX search_docs_project_ts ON search_docs (project, ts);
        CREATE INDEX search_docs_session_ts ON search_docs (session_id, ts);
        CREATE INDEX search_docs_kind_ts ON search_docs (kind, ts);
        CREATE INDEX search_docs_ts ON search_docs (ts, id);
        CREATE INDEX search_docs_scope_key ON search_docs (scope, key);
        CREATE TABLE search_text (
            rowid BIGINT PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            title TEXT NOT NULL DEFAULT '',
            body TEXT NOT NULL DEFAULT '',
            concepts TEXT NOT NULL DEFAULT '',
            files TEXT NOT NULL DEFAULT '',
            context TEXT NOT NULL DEFAULT '',
            tsv TSVECTOR GENERATED ALWAYS AS (
                setweight(to_tsvector('english', title), 'A')
                || setweight(to_tsvector('english', concepts), 'B')
                || setweight(to_tsvector('english', files), 'C')
                || setweight(to_tsvector('english', body || ' ' || context), 'D')
            ) STORED
        );
        CREATE INDEX search_text_tsv ON search_text USING gin (tsv);
        CREATE TABLE search_vectors (
            doc_rowid BIGINT PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector vector NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX search_vectors_model ON search_vectors (model, dim);
        CREATE TABLE vector_models (
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            index_name TEXT NOT NULL,
            PRIMARY KEY (model, dim)
        );
        CREATE TABLE embed_backlog (
            doc_rowid BIGINT PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            queued_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE INDEX embed_backlog_next ON embed_backlog (next_try, doc_rowid);
        CREATE TABLE llm_jobs (
            kind TEXT COLLATE "C" NOT NULL,
            ref TEXT COLLATE "C" NOT NULL,
            args JSONB NOT NULL DEFAULT '{}',
            queued_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT,
            PRIMARY KEY (kind, ref)
        );
        CREATE INDEX llm_jobs_next ON llm_jobs (next_try, queued_at);
        CREATE TABLE lexical_outbox (
            seq BIGSERIAL PRIMARY KEY,
            rowid BIGINT NOT NULL,
            at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
        );
        CREATE TABLE lexical_state (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE lexical_nodes (
            node TEXT PRIMARY KEY,
            applied_seq BIGINT NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL
        )
        """,
    )


@migration("working_memory")
def _m002_working_memory(conn: Any) -> None:
    run_script(
        conn,
        """
        CREATE TABLE wm_kv (
            project TEXT COLLATE "C" NOT NULL,
            agent TEXT COLLATE "C" NOT NULL,
            session TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            value TEXT NOT NULL,
            expires_at DOUBLE PRECISION,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (project, agent, session, key)
        );
        CREATE INDEX wm_kv_expires ON wm_kv (expires_at) WHERE expires_at IS NOT NULL;
        CREATE INDEX wm_kv_session ON wm_kv (session);
        CREATE TABLE wm_scratchpad (
            project TEXT COLLATE "C" NOT NULL,
            agent TEXT COLLATE "C" NOT NULL,
            session TEXT COLLATE "C" NOT NULL,
            seq INTEGER NOT NULL,
            content TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (project, agent, session, seq)
        );
        CREATE INDEX wm_scratchpad_session ON wm_scratchpad (session);
        CREATE TABLE wm_task (
            project TEXT COLLATE "C" NOT NULL,
            agent TEXT COLLATE "C" NOT NULL,
            session TEXT COLLATE "C" NOT NULL,
            task TEXT NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (project, agent, session)
        );
        CREATE INDEX wm_task_session ON wm_task (session);
        CREATE TABLE wm_checkpoint (
            project TEXT COLLATE "C" NOT NULL,
            agent TEXT COLLATE "C" NOT NULL,
            session TEXT COLLATE "C" NOT NULL,
            checkpoint_id TEXT COLLATE "C" NOT NULL,
            seq INTEGER NOT NULL,
            meta TEXT NOT NULL,
            snapshot TEXT NOT NULL,
            PRIMARY KEY (project, agent, session, checkpoint_id),
            UNIQUE (project, agent, session, seq)
        )
        """,
    )


@migration("live_events")
def _m003_live_events(conn: Any) -> None:
    # Live events shared by every worker process and node (kernel/bus.py); appends are
    # serialised by the write lock, so seq order is commit order.
    run_script(
        conn,
        """
        CREATE TABLE live_events (
            seq BIGSERIAL PRIMARY KEY,
            type TEXT NOT NULL,
            record TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            origin TEXT NOT NULL
        )
        """,
    )


@migration("background_work")
def _m004_background_work(conn: Any) -> None:
    # Periodic jobs run once per database (a conditional update claims a due run, so two nodes
    # never run one together); background workers say they are alive with a heartbeat row.
    run_script(
        conn,
        """
        CREATE TABLE periodic_jobs (
            name TEXT PRIMARY KEY,
            next_run DOUBLE PRECISION NOT NULL,
            holder TEXT,
            runs INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            last_run DOUBLE PRECISION,
            last_error TEXT
        );
        CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            beat_at DOUBLE PRECISION NOT NULL,
            info JSONB NOT NULL DEFAULT '{}'
        )
        """,
    )


@migration("capture_inbox_images_usage")
def _m005_capture_inbox_images_usage(conn: Any) -> None:
    # The tables of SQLite's migrations 8 (llm_usage) and 12 (capture inbox, capture counters,
    # images and their links to search rows). search_counts (SQLite's 9) is not needed: counting
    # search rows per kind is an index-only scan here. vector_log (SQLite's 10) neither: pgvector
    # keeps its index itself.
    run_script(
        conn,
        """
        CREATE TABLE llm_usage (
            day TEXT COLLATE "C" NOT NULL,
            provider TEXT COLLATE "C" NOT NULL,
            model TEXT COLLATE "C" NOT NULL,
            feature TEXT COLLATE "C" NOT NULL,
            calls BIGINT NOT NULL DEFAULT 0,
            failed BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            latency_ms_total DOUBLE PRECISION NOT NULL DEFAULT 0,
            latency_ms_max DOUBLE PRECISION NOT NULL DEFAULT 0,
            skipped_budget BIGINT NOT NULL DEFAULT 0,
            skipped_low_value BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (day, provider, model, feature)
        );
        CREATE TABLE capture_inbox (
            event_id TEXT COLLATE "C" PRIMARY KEY,
            status TEXT COLLATE "C" NOT NULL,
            reason TEXT NOT NULL,
            session_id TEXT COLLATE "C",
            hook_type TEXT,
            tool_name TEXT,
            agent_id TEXT COLLATE "C",
            body TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at TEXT COLLATE "C" NOT NULL,
            updated_at TEXT COLLATE "C" NOT NULL
        );
        CREATE INDEX capture_inbox_due ON capture_inbox (status, next_try);
        CREATE INDEX capture_inbox_age ON capture_inbox (status, updated_at, event_id);
        CREATE INDEX capture_inbox_recent ON capture_inbox (updated_at, event_id);
        CREATE TABLE capture_counts (
            kind TEXT COLLATE "C" NOT NULL,
            name TEXT COLLATE "C" NOT NULL,
            count BIGINT NOT NULL DEFAULT 0,
            last_at TEXT NOT NULL,
            PRIMARY KEY (kind, name)
        );
        CREATE TABLE images (
            id TEXT COLLATE "C" PRIMARY KEY,
            mime TEXT NOT NULL,
            bytes BIGINT NOT NULL,
            created_at TEXT COLLATE "C" NOT NULL,
            evicted_at TEXT
        );
        CREATE INDEX images_created ON images (created_at);
        CREATE TABLE image_links (
            doc_rowid BIGINT NOT NULL REFERENCES search_docs (id) ON DELETE CASCADE,
            image_id TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (doc_rowid, image_id)
        );
        CREATE INDEX image_links_image ON image_links (image_id)
        """,
    )


@migration("image_bytes")
def _m006_image_bytes(conn: Any) -> None:
    # Image bytes live in the database, so any node serves any image. PNG and JPEG are already
    # compressed: EXTERNAL stores them out of line without trying to compress them again. Rows
    # from before keep data NULL; their files are read from the node's images directory.
    run_script(
        conn,
        """
        ALTER TABLE images ADD COLUMN data BYTEA;
        ALTER TABLE images ALTER COLUMN data SET STORAGE EXTERNAL
        """,
    )


@migration("search_tokens")
def _m007_search_tokens(conn: Any) -> None:
    # Each record's token vectors for late interaction (retrieval/late_interaction.py), as on
    # SQLite (its migration 16). Already compact int8: not compressed again.
    run_script(
        conn,
        """
        CREATE TABLE search_tokens (
            doc_rowid BIGINT PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            tokens BYTEA NOT NULL
        );
        ALTER TABLE search_tokens ALTER COLUMN tokens SET STORAGE EXTERNAL;
        ALTER TABLE embed_backlog ADD COLUMN tokens_only INTEGER NOT NULL DEFAULT 0
        """,
    )


@migration("periodic_error_times")
def _m008_periodic_error_times(conn: Any) -> None:
    # When a periodic job's last error happened and when a later run succeeded, as on SQLite (its
    # migration 17).
    run_script(
        conn,
        """
        ALTER TABLE periodic_jobs ADD COLUMN last_error_at DOUBLE PRECISION;
        ALTER TABLE periodic_jobs ADD COLUMN recovered_at DOUBLE PRECISION
        """,
    )


@migration("periodic_due_times")
def _m009_periodic_due_times(conn: Any) -> None:
    # When the run now due (or under way) became due, its period's start, as on SQLite (its
    # migration 18).
    run_script(
        conn,
        """
        ALTER TABLE periodic_jobs ADD COLUMN due_at DOUBLE PRECISION;
        UPDATE periodic_jobs SET due_at = next_run
        """,
    )
