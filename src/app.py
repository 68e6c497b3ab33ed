"""Start the server: ``python src/app.py [--host H] [--port P] [--threads N] [--dev]``.

The same as ``agentmemory serve`` once the package is installed. The Flask app itself is
``agentmemory_server.adapters.web.create_app``; serving (gunicorn) is
``agentmemory_server.adapters.server``.
"""

from agentmemory_server.adapters.server import main
from agentmemory_server.adapters.web import create_app

__all__ = ["create_app", "main"]

if __name__ == "__main__":
    main()
