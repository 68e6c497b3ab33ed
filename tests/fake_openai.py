"""A loopback fake of the OpenAI Chat Completions and Embeddings API (the shape OpenAI, Ollama,
llama.cpp's server, vLLM, LM Studio and OpenRouter serve under ``/v1``). Scripting and plumbing:
fake_http.py.

``POST /v1/chat/completions`` takes ``model``, ``messages`` (system/user/assistant/tool; content
a text or a list of ``{"type": "text", "text"}`` parts), ``tools``, ``stream`` (false only, a
streaming request gets 400, unless ``streaming`` is set), ``stream_options``, ``max_tokens`` or
``max_completion_tokens`` and ``response_format``; it answers a ``chat.completion`` object:
``choices[0].message`` (role assistant, content, refusal null), ``finish_reason``, and ``usage``
(prompt_tokens, completion_tokens, total_tokens). A ``ToolCall`` reply answers one function call
instead (``message.tool_calls``, content null, finish reason ``tool_calls``). Streamed, the answer
goes out as ``chat.completion.chunk`` events: the role and the content (or the tool call, its
arguments whole) in one delta, then the finish reason, then with ``stream_options.include_usage``
a last chunk with the usage and no choices. ``POST /v1/embeddings`` takes ``model``,
``input`` (a string or a list), ``encoding_format`` and optional ``dimensions``; it answers
``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}``
(hash-embedder vectors, ``dim`` wide unless ``dimensions`` is given). With ``api_key`` set the
key must come as ``Authorization: Bearer``; errors are ``{"error": {"message", "type", "param",
"code"}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agentmemory_server.retrieval.embeddings import HashEmbedder
from fake_http import LoopbackModel, Prompt, Raw, reply_text, tokens

__all__ = ["FakeOpenAI", "Raw", "ToolCall"]

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          429: "requests", 500: "server_error", 503: "server_error"}


@dataclass(frozen=True)
class ToolCall:
    """A scripted answer that calls one of the request's tools (a function) with ``arguments``."""

    name: str
    arguments: dict[str, Any]
    id: str = "call_1"


def _text(content: Any) -> str:
    """A message's content as text: a string as it is, the text parts of a list joined, else ''."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


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
        system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
        turns = [(m["role"], _text(m.get("content"))) for m in messages if m.get("role") in ("user", "assistant")]
        return Prompt(system, turns, body)

    def generation(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        if isinstance(reply, ToolCall):
            call = {"id": reply.id, "type": "function",
                    "function": {"name": reply.name, "arguments": json.dumps(reply.arguments)}}
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            text, finish = call["function"]["arguments"], "tool_calls"
        else:
            text, finish = reply_text(reply), "stop"
            message = {"role": "assistant", "content": text, "refusal": None}
        prompt_tokens = tokens(json.dumps(body.get("messages")))
        output_tokens = tokens(text)
        return {"id": f"chatcmpl-{len(self.calls)}", "object": "chat.completion", "created": 1_800_000_000,
                "model": body.get("model"), "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                          "total_tokens": prompt_tokens + output_tokens}}

    def stream_events(self, body: dict[str, Any], answer: dict[str, Any]) -> list[dict[str, Any]]:
        choice = answer["choices"][0]
        message = choice["message"]
        delta: dict[str, Any] = {"role": "assistant", "content": message["content"]}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        head = {key: answer[key] for key in ("id", "created", "model", "system_fingerprint")}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {**head, "object": "chat.completion.chunk", "choices": choices, **extra}

        events = [chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]),
                  chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}])]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=answer["usage"]))
        return events

    def embedding(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = int(body.get("dimensions") or self.dim)
        vectors = HashEmbedder(dim).embed(texts)
        return {"object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": [float(x) * 2.0 for x in v]}
                         for i, v in reversed(list(enumerate(vectors)))],  # out of order: clients must sort
                "usage": {"prompt_tokens": sum(tokens(t) for t in texts),
                          "total_tokens": sum(tokens(t) for t in texts)}}
