"""Upper bounds on the durable queues (the embedding backlog, background model jobs).

A flood of writes must not grow a queue without limit: past its bound a new entry is shed
(the caller learns it from the return value; the record itself is stored as usual) and counted.
Sizes are kept in memory: counted once, then moved by each insert and delete, and recounted at
the bound (at most once a second while full), so a write costs no ``count(*)``; they may be off
by what other processes (the CLI) or rolled-back transactions did until the next recount.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

RECOUNT_SECONDS = 1.0


class QueueBounds:
    """:param limits: queue name -> most entries (0 or missing: unbounded)."""

    def __init__(self, limits: Mapping[str, int]):
        self.limits = {name: n for name, n in limits.items() if n > 0}
        self._sizes: dict[str, int] = {}
        self._counted_at: dict[str, float] = {}
        self.shed: dict[str, int] = dict.fromkeys(self.limits, 0)
        self._closed: set[str] = set()
        self._lock = threading.Lock()

    def close(self, name: str) -> None:
        """Take no entries at all into ``name`` (nobody will ever drain it in this process, e.g.
        the embedding backlog with embeddings off). Not counted as shed: nothing is lost."""
        self._closed.add(name)

    def admit(self, name: str, count: Callable[[], int]) -> bool:
        """Whether one more entry fits in queue ``name`` (``count`` gives the real size)."""
        if name in self._closed:
            return False
        limit = self.limits.get(name)
        if limit is None:
            return True
        with self._lock:
            size = self._sizes.get(name)
            now = time.monotonic()
            if size is None or (size >= limit and now - self._counted_at.get(name, 0.0) >= RECOUNT_SECONDS):
                size = count()
                self._counted_at[name] = now
            if size >= limit:
                self._sizes[name] = size
                self.shed[name] += 1
                return False
            self._sizes[name] = size + 1
            return True

    def removed(self, name: str, n: int) -> None:
        with self._lock:
            if name in self._sizes:
                self._sizes[name] = max(0, self._sizes[name] - n)

    def room(self, name: str, count: Callable[[], int]) -> int | None:
        """Entries that still fit (a fresh count), or None when unbounded."""
        if name in self._closed:
            return 0
        limit = self.limits.get(name)
        if limit is None:
            return None
        with self._lock:
            size = self._sizes[name] = count()
            self._counted_at[name] = time.monotonic()
        return max(0, limit - size)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {
                    "size": self._sizes.get(name),
                    "max": limit,
                    "shed": self.shed[name],
                    "closed": name in self._closed,
                }
                for name, limit in self.limits.items()
            }
