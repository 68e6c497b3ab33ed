"""agentmemory-python: a self-hosted memory server for AI coding agents.

The package mirrors the architecture (AGENTS.md has the diagram): ``adapters`` (HTTP, MCP,
WebSocket, CLI) call the tool registry in ``kernel``; features (``capture``, ``memory``,
``retrieval``, ``working``, ``models``, ``operations``) hold the behaviour; ``storage`` holds
every SQL statement behind typed repository interfaces.
"""

__version__ = "0.2.0"
