"""How the server's processes log: one format, and libraries' start-up chatter kept down."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# faiss logs at INFO, in every process at every start, each CPU-specific build it could not load
# before the one it does ("Could not load library with AVX512 support due to:
# ModuleNotFoundError(...)"): lines that read like a failure and are not one. Its warnings show.
QUIET_LOGGERS = ("faiss.loader",)


def configure(level: str) -> None:
    """Log at ``level`` ("info", "debug", ...) in our format; the quiet loggers from WARNING."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
