"""Where the storage lives: ``agentmemory_server.storage``.

Every SQL statement of the server is in ``agentmemory_server/storage/sqlite/``; the rest of the
code talks to it through the repository interfaces in ``agentmemory_server/storage/interfaces.py``.
This module only re-exports the entry points for readers who look for them here.
"""

from agentmemory_server.storage.sqlite.database import Database

__all__ = ["Database"]
