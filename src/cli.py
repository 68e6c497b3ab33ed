"""Admin commands from a checkout: ``python src/cli.py <command>`` is ``agentmemory <command>``.

The code is ``agentmemory_server.adapters.cli``; ``agentmemory --help`` lists the commands.
"""

import sys

from agentmemory_server.adapters.cli import main

if __name__ == "__main__":
    sys.exit(main())
