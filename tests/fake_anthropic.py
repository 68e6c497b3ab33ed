"""A loopback fake of the Anthropic Messages API. Scripting and plumbing: fake_http.py.

``POST /v1/messages`` needs ``x-api-key`` (when the fake has a key) and ``anthropic-version``;
it takes ``model``, ``max_tokens``, ``system``, ``messages`` (user/assistant, content blocks:
text, tool_use, tool_result), ``stream`` (only false is served), ``tools`` and ``tool_choice``.
It answers a ``message`` object: ``content`` blocks, ``stop_reason`` and ``usage``
(input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens). When the
request forces a tool, a JSON object reply comes back as a ``tool_use`` block (its ``input``)
with ``stop_reason: tool_use``; a str reply (a model ignoring the tool) as a text block. Errors
are ``{"type": "error", "error": {"type", "message"}, "request_id"}``.
"""

from __future__ import annotations

import json
from typing import Any

from fake_http import LoopbackModel, Prompt, Raw, tokens

__all__ = ["FakeAnthropic", "Raw"]

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
          529: "overloaded_error"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "tool_use":
            parts.append(json.dumps(block["input"]))
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content")))
    return "\n".join(parts)


class FakeAnthropic(LoopbackModel):
    name = "anthropic"
    unknown_model_code = None  # Anthropic says not_found_error, with no code

    def route(self, path: str) -> str | None:
        return "generate" if path == "/v1/messages" else None

    def authorised(self, headers: Any) -> bool:
        key_ok = self.api_key is None or headers.get("x-api-key") == self.api_key
        return key_ok and headers.get("anthropic-version") == "2023-06-01"

    def error_body(self, status: int, message: str, code: str | None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": _TYPES.get(status, "api_error"), "message": message}
        if code:
            error["details"] = {"error_code": code}
        return {"type": "error", "error": error, "request_id": f"req_fake{len(self.calls)}"}

    def prompt(self, body: dict[str, Any]) -> Prompt:
        system = body.get("system") or ""
        if isinstance(system, list):
            system = _text_of(system)
        turns = [(m["role"], _text_of(m["content"])) for m in body.get("messages") or []]
        return Prompt(system, turns, body)

    def generation(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        forced = (body.get("tool_choice") or {}).get("type") == "tool"
        if forced and not isinstance(reply, str):
            content = [{"type": "tool_use", "id": f"toolu_fake{len(self.calls)}", "name": body["tool_choice"]["name"],
                        "input": reply}]
            stop, text = "tool_use", json.dumps(reply)
        else:
            text = reply if isinstance(reply, str) else json.dumps(reply)
            content, stop = [{"type": "text", "text": text}], "end_turn"
        return {"id": f"msg_fake{len(self.calls)}", "type": "message", "role": "assistant", "model": body.get("model"),
                "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": tokens(json.dumps([body.get("system"), body.get("messages"),
                                                             body.get("tools")])),
                          "output_tokens": tokens(text), "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}}
