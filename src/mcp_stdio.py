"""The MCP stdio server (``agentmemory-mcp`` once installed): ``python src/mcp_stdio.py``.

It proxies MCP tools, resources and prompts to a running server over HTTP, reading
``AGENTMEMORY_URL`` and ``AGENTMEMORY_SECRET`` on every call. The code is
``agentmemory_server.adapters.mcp_stdio``.
"""

from agentmemory_server.adapters.mcp_stdio import main

if __name__ == "__main__":
    main()
