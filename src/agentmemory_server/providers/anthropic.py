"""The Anthropic Messages API (``POST {base}/v1/messages``).

- **Transport.** ``anthropic_transport``: the key in ``x-api-key``, ``anthropic-version:
  2023-06-01``; retries (including 529 ``overloaded_error``), Retry-After, timeouts and
  scrubbing come from http.py.
- **Structured output by a forced tool call.** The request declares one tool whose
  ``input_schema`` is the answer's JSON Schema and sets ``tool_choice: {type: tool, name}``, so
  the model answers with a ``tool_use`` content block whose ``input`` is the JSON object; that
  works on every Claude model (the newer ``output_config`` JSON mode does not). The schema is
  therefore not repeated in the system text (``carries_schema``). A plain text answer is taken
  as it is and validated like any other.
- **Repair round.** The model's ``tool_use`` block is sent back as its assistant turn and our
  complaint as the ``tool_result`` for that block (``is_error: true``), which is how the API
  expects a tool call to be answered.
- **Answer.** ``usage.input_tokens`` (plus cache writes and reads, billed as input) and
  ``usage.output_tokens`` give the tokens; ``stop_reason: refusal`` or an empty answer is a
  refusal; ``max_tokens`` is parsed and goes through the repair round.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agentmemory_server.providers.chat import ASSISTANT, ChatRequest, Generation, Refusal, Turn, count
from agentmemory_server.providers.http import JsonTransport

PROVIDER = "anthropic"
DEFAULT_BASE = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-haiku-4-5"
API_VERSION = "2023-06-01"
_NAME = re.compile(r"[^A-Za-z0-9_-]")


def anthropic_transport(*, api_key: str | None, base_url: str, timeout: float, **options: Any) -> JsonTransport:
    headers = {"anthropic-version": API_VERSION}
    if api_key:
        headers["x-api-key"] = api_key
    return JsonTransport(
        name="Anthropic",
        base_url=base_url,
        headers=headers,
        secrets=(api_key,),
        timeout=timeout,
        not_found_hint="ANTHROPIC_BASE_URL is the API's base, without /v1",
        **options,
    )


def tool_name(schema_name: str) -> str:
    return ("record_" + _NAME.sub("_", schema_name))[:64]


def tool_uses(native: Any) -> list[dict[str, Any]]:
    return [b for b in native or [] if isinstance(b, dict) and b.get("type") == "tool_use"]


def messages(turns: list[Turn]) -> list[dict[str, Any]]:
    """The turns as Messages API messages: an assistant turn that called the tool is sent as
    that call, and the user turn after it answers the call with a ``tool_result``."""
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == ASSISTANT:
            pending = tool_uses(turn.native)
            content = pending or [{"type": "text", "text": turn.text}]
            out.append({"role": "assistant", "content": content})
            continue
        if pending:
            results = [
                {"type": "tool_result", "tool_use_id": call["id"], "content": turn.text, "is_error": True}
                for call in pending
            ]
            out.append({"role": "user", "content": results})
        else:
            out.append({"role": "user", "content": [{"type": "text", "text": turn.text}]})
        pending = []
    return out


def parse_message(data: dict[str, Any]) -> Generation:
    """The tool call's input (as JSON text) or the text blocks, and the usage counts.
    :raise Refusal: refused or empty."""
    usage = data.get("usage") or {}
    prompt = sum(
        count(usage.get(k)) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    output = count(usage.get("output_tokens"))
    reason = str(data.get("stop_reason") or "end_turn")
    if reason == "refusal":
        raise Refusal("the model refused (stop_reason refusal)", prompt, output)
    blocks = [b for b in data.get("content") or [] if isinstance(b, dict)]
    calls = tool_uses(blocks)
    if calls:
        return Generation(json.dumps(calls[0].get("input")), reason, prompt, output, prompt + output, native=blocks)
    text = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
    if not text.strip():
        raise Refusal(f"the model answered with no text (stop_reason {reason})", prompt, output)
    return Generation(text, reason, prompt, output, prompt + output)


class AnthropicChat:
    """Messages for one model."""

    provider = PROVIDER
    carries_schema = True  # the tool definition gives the model the answer's schema

    def __init__(self, transport: JsonTransport, model: str, *, attempts: int, backoff: float, max_output_tokens: int):
        self.transport, self.model = transport, model
        self.attempts, self.backoff = attempts, backoff
        self.max_output_tokens = max_output_tokens

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_output_tokens or self.max_output_tokens,
            "system": request.system,
            "messages": messages(request.turns),
            "temperature": 0.2,
            "stream": False,
        }
        if request.schema is not None:
            name = tool_name(request.schema_name)
            body["tools"] = [
                {"name": name, "description": "Record the answer as JSON.", "input_schema": request.schema}
            ]
            body["tool_choice"] = {"type": "tool", "name": name}
        return body

    def generate(self, request: ChatRequest) -> Generation:
        data = self.transport.post("/v1/messages", self.body(request), attempts=self.attempts, backoff=self.backoff)
        return parse_message(data)
