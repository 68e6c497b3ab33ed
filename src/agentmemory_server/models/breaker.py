"""The circuit breaker in front of the model: closed; open after ``LLM_BREAKER_FAILURES`` failed
calls within ``LLM_BREAKER_WINDOW_SECONDS``; after ``LLM_BREAKER_COOLDOWN_SECONDS`` half-open,
when exactly one trial call goes through: its success closes the breaker, its failure opens it
again. A refusal is an answer, so it counts as a success.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


class CircuitBreaker:
    """Thread-safe closed -> open -> half-open breaker on an injectable clock."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, *, threshold: int, window: float, cooldown: float, clock: Callable[[], float]):
        self.threshold, self.window, self.cooldown = threshold, window, cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._trial = False  # the half-open trial call is in flight
        self.times_opened = 0

    def _state(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        return self.HALF_OPEN if self._clock() - self._opened_at >= self.cooldown else self.OPEN

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def retry_at(self) -> float | None:
        """When an open breaker lets its trial call through (None when closed)."""
        with self._lock:
            return None if self._opened_at is None else self._opened_at + self.cooldown

    def acquire(self) -> bool:
        """May a call go now? In half-open state only the first caller may (the trial)."""
        with self._lock:
            state = self._state()
            if state == self.CLOSED:
                return True
            if state == self.HALF_OPEN and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures.clear()
            self._opened_at, self._trial = None, False

    def failure(self) -> None:
        with self._lock:
            now = self._clock()
            if self._opened_at is not None:  # the trial (or a straggler) failed: open again
                self._opened_at, self._trial = now, False
                self.times_opened += 1
                return
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.window:
                self._failures.popleft()
            if len(self._failures) >= self.threshold:
                self._opened_at = now
                self._failures.clear()
                self.times_opened += 1

    def release(self) -> None:
        """Give the trial slot back when a call ended without a verdict."""
        with self._lock:
            self._trial = False

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = self._state()
            retry = None if self._opened_at is None else self._opened_at + self.cooldown
            return {
                "state": state,
                "recentFailures": len(self._failures),
                "timesOpened": self.times_opened,
                "retryAt": _iso(retry) if retry is not None else None,
            }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
