"""The ``agentmemory`` console script.

``agentmemory hook ...`` runs before every tool call of some agents, so it must start fast: it is
dispatched here without importing the server (``adapters/cli.py`` loads every feature module,
about half a second). Every other command goes to ``cli.main``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hook"]:
        from agentmemory_server.adapters import hook_client

        return hook_client.main(args[1:])
    if args[:1] == ["hook-drain"]:  # started by a hook call: sends the events it kept
        from agentmemory_server.adapters import hook_client

        return hook_client.drain_main(args[1:])
    from agentmemory_server.adapters import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
