"""Thread helpers with no dependencies, usable from every layer."""

from __future__ import annotations

import os
import threading


def lower_thread_priority(niceness: int = 19) -> None:
    """Make the calling thread yield the CPU to request threads (Linux: a thread has its own
    nice value). Background batches keep a core busy for seconds; at normal priority an
    embedding worker took a quarter of observe's throughput on a 2-core machine. Elsewhere this
    is a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
