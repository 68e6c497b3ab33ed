"""``python -m agentmemory_server``: the ``agentmemory`` command."""

import sys

from agentmemory_server.adapters.cli import main

sys.exit(main())
