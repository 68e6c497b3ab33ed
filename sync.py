#!/usr/bin/env python3
"""The HuggingFace dataset backup sidecar: ``python sync.py restore|backup|loop``.

The code lives in ``src/agentmemory_server/storage/sqlite/hf_sync.py`` (installed, it is also
``agentmemory backup`` / ``agentmemory restore``). This file runs the copy in its own checkout,
with no install: that checkout's ``src/`` goes first on the import path, so every module of the
sidecar comes from the same version even when another version of the package is installed (it
used to run ``hf_sync.py`` from the checkout and import its helper modules from the installed
package).
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src"

if __name__ == "__main__":
    sys.path.insert(0, str(SRC))
    from agentmemory_server.storage.sqlite import hf_sync

    sys.exit(hf_sync.main())
