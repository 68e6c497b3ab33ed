"""Whole-database operations on SQLite: integrity checks, table counts, wiping the records."""

from __future__ import annotations

from agentmemory_server.storage.sqlite.common import Unit
from agentmemory_server.storage.sqlite.search_index import SqliteSearchIndex


class SqliteAdmin:
    def __init__(self, unit: Unit, index: SqliteSearchIndex):
        self.unit = unit
        self.conn = unit.conn
        self._index = index

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    def quick_check(self) -> list[str]:
        return [r[0] for r in self.conn.execute("PRAGMA quick_check(20)")]

    def table_counts(self) -> dict[str, int]:
        """Rows per table of the schema (FTS5 shadow tables left out)."""
        names = [
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "AND name NOT LIKE 'search_fts_%' ORDER BY name"
            )
        ]
        return {name: self.conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}

    def wipe_records(self) -> None:
        """Remove every record and index row (import with strategy=replace). Audit is kept."""
        for table in ("kv_store", "search_docs", "search_fts", "capture_events"):
            self.conn.execute(f"DELETE FROM {table}")
        self._index.wiped()
        self.unit.touch("*", "*")
