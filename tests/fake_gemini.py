"""A loopback fake of the Gemini embeddings API (embedContent, batchEmbedContents).

Speaks the real JSON: requests carry ``model``, ``content.parts[].text``, ``taskType`` and
``outputDimensionality``; answers are ``{"embedding": {"values": [...]}}`` and
``{"embeddings": [{"values": [...]}, ...]}``. Vectors come from the hash embedder at the asked
dimension, so they are deterministic and texts sharing words are close. ``fail_next`` scripts
error statuses for the next calls; every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from embeddings import HashEmbedder

_PATH = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):(?P<method>embedContent|batchEmbedContents)$")


class FakeGemini:
    def __init__(self, api_key: str = "test-key"):
        self.api_key = api_key
        self.calls: list[dict[str, Any]] = []
        self.fail_next: list[int] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _vector(self, request: dict[str, Any]) -> list[float]:
        dim = int(request.get("outputDimensionality") or 3072)
        text = " ".join(p.get("text", "") for p in request["content"]["parts"])
        return [float(x) * 3.0 for x in HashEmbedder(dim).embed([text])[0]]  # not unit length

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                match = _PATH.match(self.path)
                with fake._lock:
                    fake.calls.append({"path": self.path, "body": body})
                    status = fake.fail_next.pop(0) if fake.fail_next else 200
                if self.headers.get("x-goog-api-key") != fake.api_key:
                    return self._reply(403, {"error": {"code": 403, "message": "API key not valid"}})
                if match is None:
                    return self._reply(404, {"error": {"code": 404, "message": "not found"}})
                if status != 200:
                    return self._reply(status, {"error": {"code": status, "message": "scripted failure"}})
                if match["method"] == "embedContent":
                    return self._reply(200, {"embedding": {"values": fake._vector(body)}})
                return self._reply(200, {"embeddings": [{"values": fake._vector(r)} for r in body["requests"]]})

        return Handler
