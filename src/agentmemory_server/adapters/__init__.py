"""The adapters: HTTP (Flask: REST, MCP over HTTP, the WebSocket, the viewer), the MCP stdio
proxy, the admin CLI, OpenAPI and the docs generator. Every process of the server starts here.

One BLAS thread: vector search is a memory-bound matrix-vector product, and on a small shared
machine extra BLAS threads only compete with the request threads. It must be set before numpy
loads, so it is done when the adapters package is first imported (an explicit setting wins).
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
