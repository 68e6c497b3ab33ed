"""Whole-database operations on PostgreSQL: checks, table counts, wiping the records."""

from __future__ import annotations

from agentmemory_server.storage.postgres.common import Unit
from agentmemory_server.storage.postgres.search_index import PgSearchIndex

TABLES = (
    "audit_log",
    "capture_counts",
    "capture_events",
    "capture_inbox",
    "embed_backlog",
    "image_links",
    "images",
    "kv_store",
    "lexical_outbox",
    "live_events",
    "llm_jobs",
    "llm_usage",
    "periodic_jobs",
    "search_docs",
    "search_text",
    "search_vectors",
    "wm_checkpoint",
    "wm_kv",
    "wm_scratchpad",
    "wm_task",
    "workers",
)


class PgAdmin:
    def __init__(self, unit: Unit, index: PgSearchIndex):
        self.unit = unit
        self.conn = unit.conn
        self._index = index

    def integrity_check(self) -> str:
        # PostgreSQL keeps its own pages consistent; what can drift is ours: records that are not
        # valid JSON objects where raw text was kept.
        bad = self.conn.execute("SELECT count(*) FROM kv_store WHERE raw IS NOT NULL AND raw = ''").fetchone()[0]
        return "ok" if not bad else f"{bad} record(s) with empty raw text"

    def quick_check(self) -> list[str]:
        return [self.integrity_check()]

    def table_counts(self) -> dict[str, int]:
        return {name: int(self.conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]) for name in TABLES}

    def wipe_records(self) -> None:
        """Remove every record and index row (import with strategy=replace). Audit is kept."""
        for table in ("kv_store", "search_docs", "capture_events"):
            self.conn.execute(f"DELETE FROM {table}")
        self._index.wiped()
        self.unit.touch("*", "*")
