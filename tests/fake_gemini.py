"""A loopback fake of the Gemini API: embeddings (embedContent, batchEmbedContents) and text
generation (generateContent). Scripting and plumbing: fake_http.py.

Speaks the real JSON. Embedding requests carry ``model``, ``content.parts[].text``,
``taskType`` and ``outputDimensionality``; answers are ``{"embedding": {"values": [...]}}`` and
``{"embeddings": [{"values": [...]}, ...]}``, vectors from the hash embedder at the asked
dimension (deterministic; texts sharing words are close). generateContent requests carry
``systemInstruction``, ``contents`` (role + parts) and ``generationConfig``; answers are
``{"candidates": [{"content": {"role": "model", "parts": [{"text": ...}]}, "finishReason"}],
"usageMetadata": {promptTokenCount, candidatesTokenCount, totalTokenCount}}``. The key must come
in ``x-goog-api-key``; errors are ``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

import re
from typing import Any

from agentmemory_server.retrieval.embeddings import HashEmbedder
from fake_http import LoopbackModel, Prompt, Raw, reply_text, tokens

__all__ = ["FakeGemini", "Raw", "request_text"]

_PATH = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):"
                   r"(?P<method>embedContent|batchEmbedContents|generateContent)$")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def request_text(body: dict[str, Any]) -> str:
    """Every text part of a generateContent request: system instruction and all turns."""
    parts = list((body.get("systemInstruction") or {}).get("parts") or [])
    for turn in body.get("contents") or []:
        parts += turn.get("parts") or []
    return "\n".join(p.get("text", "") for p in parts)


class FakeGemini(LoopbackModel):
    name = "gemini"
    unknown_model_code = None  # Gemini says NOT_FOUND

    def model_of(self, path: str, body: dict[str, Any]) -> str | None:
        match = _PATH.match(path)
        return match["model"] if match else None

    def route(self, path: str) -> str | None:
        match = _PATH.match(path)
        if match is None:
            return None
        return "generate" if match["method"] == "generateContent" else "embed"

    def authorised(self, headers: Any) -> bool:
        return headers.get("x-goog-api-key") == self.api_key

    def error_body(self, status: int, message: str, code: str | None) -> dict[str, Any]:
        return {"error": {"code": status, "message": message, "status": code or _STATUS.get(status, "UNKNOWN")}}

    def prompt(self, body: dict[str, Any]) -> Prompt:
        system = "".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])
        turns = [("assistant" if t.get("role") == "model" else "user", "".join(p.get("text", "") for p in t["parts"]))
                 for t in body.get("contents") or []]
        return Prompt(system, turns, body)

    def generation(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        text = reply_text(reply)
        prompt_tokens, output_tokens = tokens(request_text(body)), tokens(text)
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
                                  "totalTokenCount": prompt_tokens + output_tokens},
                "modelVersion": "fake"}

    def _vector(self, request: dict[str, Any]) -> list[float]:
        dim = int(request.get("outputDimensionality") or 3072)
        text = " ".join(p.get("text", "") for p in request["content"]["parts"])
        return [float(x) * 3.0 for x in HashEmbedder(dim).embed([text])[0]]  # not unit length

    def embedding(self, body: dict[str, Any]) -> dict[str, Any]:
        if "requests" in body:
            return {"embeddings": [{"values": self._vector(r)} for r in body["requests"]]}
        return {"embedding": {"values": self._vector(body)}}
