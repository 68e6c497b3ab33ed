"""A loopback fake of the Gemini API: embeddings (embedContent, batchEmbedContents) and text
generation (generateContent).

Speaks the real JSON. Embedding requests carry ``model``, ``content.parts[].text``,
``taskType`` and ``outputDimensionality``; answers are ``{"embedding": {"values": [...]}}`` and
``{"embeddings": [{"values": [...]}, ...]}``, vectors from the hash embedder at the asked
dimension (deterministic; texts sharing words are close). generateContent requests carry
``systemInstruction``, ``contents`` (role + parts) and ``generationConfig``; answers are
``{"candidates": [{"content": {"role": "model", "parts": [{"text": ...}]}, "finishReason"}],
"usageMetadata": {...}}``.

Scripting: ``fail_next`` holds error statuses (or ``(status, headers)``) for the next requests of
any kind; ``replies`` holds the next generateContent answers (a dict/list is sent as JSON text,
a str as raw text, ``Raw(body)`` as the whole response); otherwise ``responder(body)`` answers.
``stall()`` holds every generateContent request until ``release()``; ``entered`` is set when
one arrives. Every request is recorded in ``calls``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from agentmemory_server.retrieval.embeddings import HashEmbedder

_PATH = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):"
                   r"(?P<method>embedContent|batchEmbedContents|generateContent)$")


@dataclass(frozen=True)
class Raw:
    """A whole generateContent response body (blocked prompts, odd finish reasons, ...)."""

    body: dict[str, Any]


def request_text(body: dict[str, Any]) -> str:
    """Every text part of a generateContent request: system instruction and all turns."""
    parts = list((body.get("systemInstruction") or {}).get("parts") or [])
    for turn in body.get("contents") or []:
        parts += turn.get("parts") or []
    return "\n".join(p.get("text", "") for p in parts)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test) is not an error of the fake


class FakeGemini:
    def __init__(self, api_key: str = "test-key"):
        self.api_key = api_key
        self.calls: list[dict[str, Any]] = []
        self.fail_next: list[Any] = []
        self.replies: list[Any] = []
        self.responder: Callable[[dict[str, Any]], Any] | None = None
        self.entered = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def stall(self) -> None:
        self.entered.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def generations(self) -> list[dict[str, Any]]:
        """The generateContent requests received, oldest first."""
        with self._lock:
            return [c["body"] for c in self.calls if c["path"].endswith(":generateContent")]

    def prompts(self) -> list[str]:
        return [request_text(b) for b in self.generations()]

    def _vector(self, request: dict[str, Any]) -> list[float]:
        dim = int(request.get("outputDimensionality") or 3072)
        text = " ".join(p.get("text", "") for p in request["content"]["parts"])
        return [float(x) * 3.0 for x in HashEmbedder(dim).embed([text])[0]]  # not unit length

    def _generation(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            reply = self.replies.pop(0) if self.replies else None
        if reply is None:
            reply = self.responder(body) if self.responder else {}
        if isinstance(reply, Raw):
            return reply.body
        text = reply if isinstance(reply, str) else json.dumps(reply)
        prompt_tokens = max(1, len(request_text(body)) // 4)
        output_tokens = max(1, len(text) // 4)
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
                                  "totalTokenCount": prompt_tokens + output_tokens},
                "modelVersion": model}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                match = _PATH.match(self.path)
                if match is not None and match["method"] == "generateContent":
                    fake.entered.set()
                    fake._open.wait(timeout=60)
                with fake._lock:
                    fake.calls.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    scripted = fake.fail_next.pop(0) if fake.fail_next else 200
                status, headers = scripted if isinstance(scripted, tuple) else (scripted, {})
                if self.headers.get("x-goog-api-key") != fake.api_key:
                    return self._reply(403, {"error": {"code": 403, "message": "API key not valid"}})
                if match is None:
                    return self._reply(404, {"error": {"code": 404, "message": "not found"}})
                if status != 200:
                    return self._reply(status, {"error": {"code": status, "message": "scripted failure"}}, headers)
                if match["method"] == "generateContent":
                    return self._reply(200, fake._generation(match["model"], body))
                if match["method"] == "embedContent":
                    return self._reply(200, {"embedding": {"values": fake._vector(body)}})
                return self._reply(200, {"embeddings": [{"values": fake._vector(r)} for r in body["requests"]]})

        return Handler
