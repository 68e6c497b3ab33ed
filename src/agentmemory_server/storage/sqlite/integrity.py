"""The integrity of the SQLite file: the checks that read it (at open, periodically, on demand),
the damage they or a query find, and how that damage reaches every process using the file.

A check is ``PRAGMA quick_check`` on a fresh connection, kept to its time budget by a timer that
interrupts it. Damage found here, or by a query (``Database.app_error``), makes the file count
as damaged: ``Database`` then refuses every write transaction (reads go on), and the marker
``<db>.damaged`` (``faults.DamageMarker``) carries it to the other processes within a second.
The checks are shared among the processes opening one file: the start-up check through an
``flock`` on ``<db>.startup-check``, the periodic one through ``faults.CheckStamp``. Kept apart
from database.py, which holds one ``IntegrityChecks`` and answers the storage interface's
``damage``, ``run_integrity_check``, ... through it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmemory_server.storage.file_locks import try_lock
from agentmemory_server.storage.sqlite.faults import CheckStamp, DamageMarker, damaged

log = logging.getLogger("agentmemory.storage")


class IntegrityChecks:
    """The checks of one open file and what they found.

    :param path: the database file.
    :param now: callable returning the current ISO-8601 timestamp.
    :param connect_readonly: opens a new read-only connection to the file (a check reads the
        file, not a connection's cache).
    """

    def __init__(self, path: Path, *, now: Callable[[], str], connect_readonly: Callable[[], sqlite3.Connection]):
        self.path = path
        self._now = now
        self._connect_readonly = connect_readonly
        self._damage: dict[str, Any] | None = None
        self._marker = DamageMarker(path)
        self._check_stamp = CheckStamp(path)
        self.last_check: dict[str, Any] | None = None

    def startup_check(self, budget_seconds: float) -> None:
        """The integrity check at open, run by one of the processes that open the file together
        (a server's request processes and its worker start within a second of each other): while
        one runs it (an ``flock`` on ``<db>.startup-check``), the others skip it, and damage it
        finds reaches them through the damage marker. When each ran its own, side by side on two
        cores, they took about half a second of a start at 100k records (bench/first_search.py)."""
        try:
            fd = try_lock(Path(f"{self.path}.startup-check"))
            if fd is None:
                self.last_check = {
                    "at": self._now(),
                    "source": "start-up check",
                    "seconds": 0.0,
                    "result": "run by another process",
                }
                return
        except OSError:
            fd = None  # (a read-only directory: check without the lock)
        try:
            if self.run_check(budget_seconds, "start-up check") == ["ok"]:
                self._marker.clear()  # restored or repaired since another process found damage
        finally:
            if fd is not None:
                os.close(fd)

    def periodic_check(self, budget_seconds: float, passed_within: float) -> list[str] | None:
        """The periodic check, run by one of the processes using the file each interval instead of
        by every one of them (a full read of the file each: 11 GB at 1M records). A process skips
        its turn while another checks (``CheckStamp``'s lock), or when another's check passed less
        than ``passed_within`` seconds ago; damage found reaches every process through the marker.

        :return: the problems (``["ok"]`` when none, here or in the check taken over), or None
            when the check did not finish or another process is running it."""
        source = "periodic integrity check"
        try:
            fd = self._check_stamp.claim()
        except OSError:  # (a read-only directory: check without the lock)
            return self.run_check(budget_seconds, source)
        if fd is None:
            self.last_check = {"at": self._now(), "source": source, "seconds": 0.0, "result": "run by another process"}
            return None
        try:
            if (passed := CheckStamp.passed_within(fd, passed_within)) is not None:
                self.last_check = {**passed["check"], "byProcess": passed.get("pid")}
                return ["ok"]
            problems = self.run_check(budget_seconds, source)
            if problems == ["ok"] and self.last_check is not None:
                CheckStamp.record_pass(fd, self.last_check)
            return problems
        finally:
            os.close(fd)

    def run_check(self, budget_seconds: float, source: str) -> list[str] | None:
        """``PRAGMA quick_check`` on a fresh connection (so it reads the file, not a cache),
        stopped after ``budget_seconds``. Marks the database damaged when it finds problems.

        :return: the problems (``["ok"]`` when none), or None when the budget ran out first.
        """
        started = time.monotonic()
        problems: list[str] | None
        try:
            conn = self._connect_readonly()
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        else:
            # Stopped by a timer, not a progress handler: SQLite before 3.43 walks every b-tree's
            # pages in one VM step, which no progress handler interrupts, so a 1 s budget took
            # 2.7 s at 1M records. An interrupt reaches the walk itself.
            stop = threading.Timer(budget_seconds, _interrupt, (conn,))
            stop.daemon = True
            stop.start()
            try:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
            except sqlite3.OperationalError as exc:
                problems = None if "interrupt" in str(exc) else [str(exc)]
            except sqlite3.DatabaseError as exc:
                problems = [str(exc)]
            finally:
                stop.cancel()
                stop.join()  # (a timer firing now must not meet a closed connection)
                conn.close()
        self.last_check = {
            "at": self._now(),
            "source": source,
            "seconds": round(time.monotonic() - started, 3),
            "result": "unfinished" if problems is None else "ok" if problems == ["ok"] else "damaged",
        }
        if problems is None:
            log.warning("%s of %s did not finish within %gs; the next one will", source, self.path, budget_seconds)
        elif problems != ["ok"]:
            self.mark_damaged(problems, source)
        return problems

    @property
    def damage(self) -> dict[str, Any] | None:
        """What made the file count as damaged (here or in another process), or None."""
        if self._damage is None and (found := self._marker.poll()) is not None:
            error = damaged(self.path, [str(p) for p in found["problems"]])
            self._damage = {
                "at": found.get("at") or self._now(),
                "source": str(found.get("source") or "another process"),
                "problems": error.details["problems"],
                "fix": error.details["fix"],
            }
            log.error("%s found: %s. To recover: %s", self._damage["source"], error.message, error.details["fix"])
        return self._damage

    def mark_damaged(self, problems: list[str], source: str) -> None:
        """Refuse every write from now on, in every process using the file (reads go on);
        logged once with what to do."""
        if self.damage is not None:
            return
        error = damaged(self.path, problems)
        self._damage = {"at": self._now(), "source": source, "problems": problems[:20], "fix": error.details["fix"]}
        self._marker.write(self._damage)
        log.error("%s: %s. To recover: %s", source, error.message, error.details["fix"])

    def health(self) -> dict[str, Any]:
        """The integrity part of /health's storage section."""
        damage = self.damage
        integrity = {"status": "critical" if damage else "healthy", "lastCheck": self.last_check}
        if damage:
            integrity["damaged"] = damage
        return integrity


def _interrupt(conn: sqlite3.Connection) -> None:
    conn.interrupt()
