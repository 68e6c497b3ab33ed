"""Thread helpers with no dependencies, usable from every layer."""

from __future__ import annotations

import os
import threading
import time


def lower_thread_priority(niceness: int = 19) -> None:
    """Make the calling thread yield the CPU to request threads (Linux: a thread has its own
    nice value). Background batches keep a core busy for seconds; at normal priority an
    embedding worker took a quarter of observe's throughput on a 2-core machine. Elsewhere this
    is a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


class SignalSafeFlag:
    """A one-way mark ("stop") that a signal handler may set, in place of a ``threading.Event``.

    ``Event.set`` takes the event's lock. A Python signal handler runs in the main thread between
    two bytecodes, possibly while that same thread holds that lock: inside ``Event.wait``, or
    inside the handler of a first signal when a second one arrives (a node's stop signals a
    request process twice: the group's SIGTERM, then gunicorn's). The handler then waits for
    itself forever, and the process never stops. Setting this flag takes no lock; ``wait``
    looks at it every ``POLL_SECONDS`` rather than being woken."""

    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True  # one store under the GIL: nothing to lock

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Whether the flag was set within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self.POLL_SECONDS))
        return True
