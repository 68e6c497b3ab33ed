"""The durable queue of background model work on PostgreSQL (``llm_jobs``), periodic jobs run
once per database (``periodic_jobs``) and the heartbeats of background workers (``workers``).
Claims take their rows with ``FOR UPDATE SKIP LOCKED``, so workers on different nodes never claim
the same job; a periodic run is claimed by one conditional update, so it runs on one node, with a
lease its node renews while it runs (one it left unfinished when it died is claimed again)."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.postgres.common import Jsonb, Unit

JOBS = "llm_jobs"


class PgJobQueue:
    def __init__(self, unit: Unit):
        self.conn = unit.conn
        self.bounds = unit.bounds

    def _size(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM llm_jobs").fetchone()[0])

    def put(self, kind: str, ref: str, args: dict[str, Any], now: str, not_before: float = 0.0) -> bool:
        """Queue (or re-queue from scratch) one job; False: the queue is at its bound (shed)."""
        if not self.bounds.admit(JOBS, self._size):
            return False
        self.conn.execute(
            "INSERT INTO llm_jobs (kind, ref, args, queued_at, next_try) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (kind, ref) DO UPDATE SET args = excluded.args, queued_at = excluded.queued_at, "
            "attempts = 0, next_try = excluded.next_try, last_error = NULL",
            (kind, ref, Jsonb(args), now, not_before),
        )
        return True

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
        removed = self.conn.execute(
            "DELETE FROM llm_jobs WHERE kind = %s AND ref = %s AND queued_at = %s", (kind, ref, queued_at)
        ).rowcount
        self.bounds.removed(JOBS, removed)

    def retry(self, kind: str, ref: str, error: str, next_try: float, counted: bool = True) -> None:
        self.conn.execute(
            "UPDATE llm_jobs SET attempts = attempts + %s, next_try = %s, last_error = %s WHERE kind = %s AND ref = %s",
            (1 if counted else 0, next_try, error[:500].replace("\x00", " "), kind, ref),
        )

    def stats(self) -> dict[str, Any]:
        by_kind = {k: int(n) for k, n in self.conn.execute("SELECT kind, count(*) FROM llm_jobs GROUP BY kind")}
        row = self.conn.execute(
            "SELECT count(last_error), min(queued_at) FILTER (WHERE last_error IS NOT NULL), "
            "(SELECT last_error FROM llm_jobs WHERE last_error IS NOT NULL ORDER BY next_try DESC LIMIT 1) "
            "FROM llm_jobs"
        ).fetchone()
        return {
            "pending": sum(by_kind.values()),
            "byKind": by_kind,
            "waiting": int(row[0]),
            "oldestWaitingQueuedAt": row[1],
            "lastError": row[2],
        }

    # ---- periodic jobs, once per database
    def claim_periodic(
        self, name: str, now_epoch: float, lease_until: float, holder: str, first_run: float | None = None
    ) -> bool:
        """Claim the due run of ``name`` until ``lease_until`` (see ``JobQueue.claim_periodic``);
        False when it is not due or another worker claimed it first."""
        # A job seen for the first time is due one period from now (as a timer would be). A claim
        # (or a renewal, or a take-up) keeps when the run became due (``due_at``, its period's
        # start): the right-hand sides read the row as it was, and the run was due no later than
        # the ``next_run`` it was found due at (a take-up finds the lapsed lease's end there).
        due = lease_until if first_run is None else first_run
        self.conn.execute(
            "INSERT INTO periodic_jobs (name, next_run, due_at) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (name, due, due),
        )
        return (
            self.conn.execute(
                "UPDATE periodic_jobs SET due_at = LEAST(due_at, next_run), next_run = %s, holder = %s "
                "WHERE name = %s AND next_run <= %s",
                (lease_until, holder, name, now_epoch),
            ).rowcount
            == 1
        )

    def hold_periodic(self, name: str, now_epoch: float, lease_until: float, holder: str) -> bool:
        """Renew ``holder``'s claim (or take up a lapsed one); False: another worker claimed it since.
        The run's due time is kept, as by ``claim_periodic``."""
        return (
            self.conn.execute(
                "UPDATE periodic_jobs SET due_at = LEAST(due_at, next_run), next_run = %s, holder = %s "
                "WHERE name = %s AND (holder = %s OR next_run <= %s)",
                (lease_until, holder, name, holder, now_epoch),
            ).rowcount
            == 1
        )

    def periodic_due_at(self, name: str) -> float | None:
        """When the run of ``name`` now due or under way became due (see ``JobQueue.periodic_due_at``)."""
        row = self.conn.execute("SELECT due_at FROM periodic_jobs WHERE name = %s", (name,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def periodic_next_run(self, name: str) -> float | None:
        """When ``name`` may next be claimed (see ``JobQueue.periodic_next_run``)."""
        row = self.conn.execute("SELECT next_run FROM periodic_jobs WHERE name = %s", (name,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def holds_periodic(self, name: str, holder: str) -> bool:
        """Whether ``holder`` still holds the claim of ``name``'s run (see ``JobQueue.holds_periodic``)."""
        row = self.conn.execute(
            "SELECT 1 FROM periodic_jobs WHERE name = %s AND holder = %s", (name, holder)
        ).fetchone()
        return row is not None

    def periodic_done(
        self,
        name: str,
        now_epoch: float,
        error: str | None,
        *,
        holder: str | None = None,
        next_run: float | None = None,
    ) -> bool:
        """Count a finished run. A failure keeps its message and time and clears any recovery; a
        success after an error not yet recovered from marks it recovered now (the message and its
        time stay, so an outage can still be read about). A claimed run's next one is due at
        ``next_run``; False, and nothing recorded, when another worker took the run up meanwhile
        (its claim stands, and its run is the one counted)."""
        if holder is not None and next_run is not None:
            moved = self.conn.execute(
                "UPDATE periodic_jobs SET next_run = %s, due_at = %s WHERE name = %s AND holder = %s",
                (next_run, next_run, name, holder),
            ).rowcount
            if moved != 1:
                return False
        if error:
            self.conn.execute(
                "UPDATE periodic_jobs SET runs = runs + 1, errors = errors + 1, last_run = %s, last_error = %s, "
                "last_error_at = %s, recovered_at = NULL WHERE name = %s",
                (now_epoch, error[:300].replace("\x00", " "), now_epoch, name),
            )
            return True
        self.conn.execute(
            "UPDATE periodic_jobs SET runs = runs + 1, last_run = %s, recovered_at = CASE "
            "WHEN last_error IS NOT NULL AND recovered_at IS NULL THEN %s ELSE recovered_at END WHERE name = %s",
            (now_epoch, now_epoch, name),
        )
        return True

    def periodic_status(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT name, next_run, holder, runs, errors, last_run, last_error, last_error_at, recovered_at "
            "FROM periodic_jobs ORDER BY name"
        )
        cols = ("name", "nextRun", "holder", "runs", "errors", "lastRun", "lastError", "lastErrorAt", "recoveredAt")
        return [dict(zip(cols, row, strict=True)) for row in rows]

    # ---- worker heartbeats
    def worker_beat(
        self, worker_id: str, host: str, pid: int, started_at: float, now_epoch: float, info: dict[str, Any]
    ) -> None:
        self.conn.execute(
            "INSERT INTO workers (id, host, pid, started_at, beat_at, info) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at, info = excluded.info",
            (worker_id, host, pid, started_at, now_epoch, Jsonb(info)),
        )

    def worker_gone(self, worker_id: str) -> None:
        self.conn.execute("DELETE FROM workers WHERE id = %s", (worker_id,))

    def workers(self, since_epoch: float) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT id, host, pid, started_at, beat_at, info FROM workers WHERE beat_at >= %s ORDER BY started_at",
            (since_epoch,),
        )
        return [{"id": i, "host": h, "pid": p, "startedAt": s, "beatAt": b, **info} for i, h, p, s, b, info in rows]
