#!/usr/bin/env python3
"""The HuggingFace dataset backup sidecar: ``python sync.py restore|backup|loop``.

The code lives in ``src/agentmemory_server/storage/sqlite/hf_sync.py`` (installed, it is also
``agentmemory backup`` / ``agentmemory restore``). That module imports nothing else of the
server, so this file runs it straight from the checkout, beside any server version, with no
install and no change to the import path.
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parent / "src" / "agentmemory_server" / "storage" / "sqlite" / "hf_sync.py"),
                   run_name="__main__")
