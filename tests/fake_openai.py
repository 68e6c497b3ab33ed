"""A loopback fake of the OpenAI Chat Completions and Embeddings API (the shape OpenAI, Ollama,
llama.cpp's server, vLLM, LM Studio and OpenRouter serve under ``/v1``). Scripting and plumbing:
fake_http.py.

``POST /v1/chat/completions`` takes ``model``, ``messages`` (system/user/assistant, text
content), ``stream`` (only false is served: a streaming request gets 400), ``max_tokens`` or
``max_completion_tokens`` and ``response_format``; it answers a ``chat.completion`` object:
``choices[0].message`` (role assistant, content, refusal null), ``finish_reason``, and ``usage``
(prompt_tokens, completion_tokens, total_tokens). ``POST /v1/embeddings`` takes ``model``,
``input`` (a string or a list), ``encoding_format`` and optional ``dimensions``; it answers
``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}``
(hash-embedder vectors, ``dim`` wide unless ``dimensions`` is given). With ``api_key`` set the
key must come as ``Authorization: Bearer``; errors are ``{"error": {"message", "type", "param",
"code"}}``.
"""

from __future__ import annotations

import json
from typing import Any

from agentmemory_server.retrieval.embeddings import HashEmbedder
from fake_http import LoopbackModel, Prompt, Raw, reply_text, tokens

__all__ = ["FakeOpenAI", "Raw"]

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          429: "requests", 500: "server_error", 503: "server_error"}


class FakeOpenAI(LoopbackModel):
    name = "openai"

    def __init__(self, api_key: str | None = "test-key", dim: int = 64):
        self.dim = dim
        super().__init__(api_key)

    @property
    def base(self) -> str:
        """What OPENAI_BASE_URL is set to."""
        return self.url + "/v1"

    def route(self, path: str) -> str | None:
        return {"/v1/chat/completions": "generate", "/v1/embeddings": "embed"}.get(path)

    def authorised(self, headers: Any) -> bool:
        return self.api_key is None or headers.get("Authorization") == f"Bearer {self.api_key}"

    def error_body(self, status: int, message: str, code: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": code or _TYPES.get(status, "server_error"), "param": None,
                          "code": code}}

    def prompt(self, body: dict[str, Any]) -> Prompt:
        messages = body.get("messages") or []
        system = "\n".join(m["content"] for m in messages if m.get("role") == "system")
        turns = [(m["role"], m["content"]) for m in messages if m.get("role") in ("user", "assistant")]
        return Prompt(system, turns, body)

    def generation(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        text = reply_text(reply)
        prompt_tokens = tokens(json.dumps(body.get("messages")))
        output_tokens = tokens(text)
        return {"id": f"chatcmpl-{len(self.calls)}", "object": "chat.completion", "created": 1_800_000_000,
                "model": body.get("model"), "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                          "total_tokens": prompt_tokens + output_tokens}}

    def embedding(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = int(body.get("dimensions") or self.dim)
        vectors = HashEmbedder(dim).embed(texts)
        return {"object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": [float(x) * 2.0 for x in v]}
                         for i, v in reversed(list(enumerate(vectors)))],  # out of order: clients must sort
                "usage": {"prompt_tokens": sum(tokens(t) for t in texts),
                          "total_tokens": sum(tokens(t) for t in texts)}}
