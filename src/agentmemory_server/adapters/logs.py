"""How the server's processes log: one format, and libraries' start-up chatter kept down."""

from __future__ import annotations

import faulthandler
import logging
import signal

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# faiss logs at INFO, in every process at every start, each CPU-specific build it could not load
# before the one it does ("Could not load library with AVX512 support due to:
# ModuleNotFoundError(...)"): lines that read like a failure and are not one. Its warnings show.
QUIET_LOGGERS = ("faiss.loader",)
# The signal that makes a server process (the arbiter, a request process, the background worker)
# write every thread's stack to its log and carry on: what a process that does not stop is
# waiting for (`kill -URG <pid>`). SIGURG, because gunicorn takes SIGUSR1 and SIGUSR2 for itself
# and SIGURG's default is to be ignored: sent to a process that did not register it, it does nothing.
STACK_DUMP_SIGNAL = signal.SIGURG


def configure(level: str) -> None:
    """Log at ``level`` ("info", "debug", ...) in our format; the quiet loggers from WARNING."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))


def dump_stacks_on_signal() -> None:
    """From now on ``STACK_DUMP_SIGNAL`` writes this process's thread stacks to stderr (the log).
    faulthandler writes them from its C handler, so it works while the main thread is blocked in
    a join or a lock, when a Python-level handler would never run; the handler survives a fork."""
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True, chain=False)
