"""The OpenAI Chat Completions and Embeddings shape, which OpenAI, Ollama, llama.cpp's server,
vLLM, LM Studio and OpenRouter all serve under a base URL ending in ``/v1``.

- **Transport.** ``openai_transport``: ``Authorization: Bearer <key>`` when a key is set (local
  servers need none), everything else from http.py (retries, Retry-After, timeouts, scrubbing).
- **Chat.** ``POST {base}/chat/completions`` with ``model``, ``messages`` (a ``system`` message,
  then user/assistant turns), ``temperature``, ``stream: false``, the output limit (``max_tokens``,
  or ``max_completion_tokens`` which OpenAI's reasoning models require) and ``response_format``:
  ``json_schema`` (``{name, schema, strict: false}``: our schemas use keywords strict mode
  refuses), ``json_object``, or nothing. The answer is ``choices[0].message.content``;
  ``usage.prompt_tokens`` / ``completion_tokens`` / ``total_tokens`` give the tokens. A
  ``message.refusal``, ``finish_reason: content_filter`` or an empty content is a refusal;
  ``length`` (cut off) is parsed and goes through the repair round.
- **Embeddings.** ``POST {base}/embeddings`` with ``model``, ``input`` (a list),
  ``encoding_format: float`` and ``dimensions`` only when configured (not every server or model
  accepts it); the answer's ``data[].embedding`` is put back in ``index`` order.
"""

from __future__ import annotations

import re
from typing import Any

from agentmemory_server.providers.chat import ASSISTANT, ChatRequest, Generation, Refusal, count
from agentmemory_server.providers.http import JsonTransport

PROVIDER = "openai"
DEFAULT_BASE = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
RESPONSE_FORMATS = ("json_schema", "json_object", "off")
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
_NAME = re.compile(r"[^A-Za-z0-9_-]")


def openai_transport(*, api_key: str | None, base_url: str, timeout: float, **options: Any) -> JsonTransport:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return JsonTransport(
        name="OpenAI-compatible",
        base_url=base_url,
        headers=headers,
        secrets=(api_key,),
        timeout=timeout,
        not_found_hint="OPENAI_BASE_URL is the API's base, which usually ends in /v1",
        **options,
    )


def response_format(mode: str, name: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if mode == "json_schema" and schema is not None:
        label = _NAME.sub("_", name)[:64] or "answer"
        return {"type": "json_schema", "json_schema": {"name": label, "schema": schema, "strict": False}}
    if mode in ("json_schema", "json_object"):
        return {"type": "json_object"}
    return None


def parse_completion(data: dict[str, Any]) -> Generation:
    """The text of ``choices[0]`` and the usage counts. :raise Refusal: refused or empty."""
    usage = data.get("usage") or {}
    prompt, output = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise Refusal("the model answered without choices", prompt, output)
    first = choices[0]
    reason = str(first.get("finish_reason") or "stop")
    message = first.get("message") or {}
    if message.get("refusal"):
        raise Refusal(f"the model refused: {str(message['refusal'])[:200]}", prompt, output)
    if reason == "content_filter":
        raise Refusal("the answer was withheld: finish_reason content_filter", prompt, output)
    text = message.get("content")
    if not isinstance(text, str) or not text.strip():
        raise Refusal(f"the model answered with no text (finish_reason {reason})", prompt, output)
    total = count(usage.get("total_tokens")) or prompt + output
    return Generation(text, reason, prompt, output, total)


class OpenAIChat:
    """Chat Completions for one model."""

    provider = PROVIDER
    carries_schema = False

    def __init__(
        self,
        transport: JsonTransport,
        model: str,
        *,
        attempts: int,
        backoff: float,
        max_output_tokens: int,
        json_mode: str = "json_schema",
        token_field: str = "max_tokens",
    ):
        self.transport, self.model = transport, model
        self.attempts, self.backoff = attempts, backoff
        self.max_output_tokens, self.json_mode, self.token_field = max_output_tokens, json_mode, token_field

    def body(self, request: ChatRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}]
        messages += [{"role": ASSISTANT if t.role == ASSISTANT else "user", "content": t.text} for t in request.turns]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0.2,
            "stream": False,
            self.token_field: request.max_output_tokens or self.max_output_tokens,
        }
        fmt = response_format(self.json_mode, request.schema_name, request.schema)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    def generate(self, request: ChatRequest) -> Generation:
        data = self.transport.post(
            "/chat/completions", self.body(request), attempts=self.attempts, backoff=self.backoff
        )
        return parse_completion(data)


def embed(
    transport: JsonTransport,
    model: str,
    texts: list[str],
    *,
    dimensions: int | None,
    attempts: int,
    backoff: float,
) -> tuple[list[list[float]], int]:
    """(one vector per text, in order; the prompt tokens reported). :raise ProviderHTTPError."""
    body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    data = transport.post("/embeddings", body, attempts=attempts, backoff=backoff)
    rows = sorted(data.get("data") or [], key=lambda row: count(row.get("index")))
    return [row["embedding"] for row in rows], count((data.get("usage") or {}).get("prompt_tokens"))
