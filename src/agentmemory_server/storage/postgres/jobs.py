"""The durable queue of background model work on PostgreSQL (``llm_jobs``). Claims take their
rows with ``FOR UPDATE SKIP LOCKED``, so workers on different nodes never claim the same job."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.postgres.common import Jsonb, Unit


class PgJobQueue:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def put(self, kind: str, ref: str, args: dict[str, Any], now: str, not_before: float = 0.0) -> None:
        self.conn.execute(
            "INSERT INTO llm_jobs (kind, ref, args, queued_at, next_try) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (kind, ref) DO UPDATE SET args = excluded.args, queued_at = excluded.queued_at, "
            "attempts = 0, next_try = excluded.next_try, last_error = NULL",
            (kind, ref, Jsonb(args), now, not_before),
        )

    def claim(self, now_epoch: float, limit: int, lease_until: float) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "UPDATE llm_jobs j SET next_try = %s FROM (SELECT kind, ref FROM llm_jobs WHERE next_try <= %s "
            "ORDER BY next_try, queued_at LIMIT %s FOR UPDATE SKIP LOCKED) due "
            "WHERE j.kind = due.kind AND j.ref = due.ref "
            "RETURNING j.kind, j.ref, j.args, j.queued_at, j.attempts",
            (lease_until, now_epoch, limit),
        ).fetchall()
        rows.sort(key=lambda r: r[3])
        return [{"kind": k, "ref": r, "args": a, "queuedAt": q, "attempts": n} for k, r, a, q, n in rows]

    def done(self, kind: str, ref: str, queued_at: str) -> None:
        self.conn.execute(
            "DELETE FROM llm_jobs WHERE kind = %s AND ref = %s AND queued_at = %s", (kind, ref, queued_at)
        )

    def retry(self, kind: str, ref: str, error: str, next_try: float) -> None:
        self.conn.execute(
            "UPDATE llm_jobs SET attempts = attempts + 1, next_try = %s, last_error = %s WHERE kind = %s AND ref = %s",
            (next_try, error[:500].replace("\x00", " "), kind, ref),
        )

    def stats(self) -> dict[str, Any]:
        by_kind = {k: int(n) for k, n in self.conn.execute("SELECT kind, count(*) FROM llm_jobs GROUP BY kind")}
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE attempts > 0), (SELECT last_error FROM llm_jobs WHERE last_error "
            "IS NOT NULL ORDER BY next_try DESC LIMIT 1) FROM llm_jobs"
        ).fetchone()
        return {"pending": sum(by_kind.values()), "byKind": by_kind, "waiting": int(row[0]), "lastError": row[1]}
