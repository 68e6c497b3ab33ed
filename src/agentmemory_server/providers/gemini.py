"""The Gemini API (Generative Language ``v1beta``): generateContent for the LLM layer and the
transport the Gemini embedder uses.

- **Transport.** ``gemini_transport`` is a ``JsonTransport`` (http.py: retries, Retry-After,
  timeouts, scrubbing) with the key in the ``x-goog-api-key`` header, never in the URL;
  ``post_model(transport, model, method, body)`` posts to ``/v1beta/models/{model}:{method}``.
- **Chat.** ``systemInstruction``, ``contents`` (user/model turns) and ``generationConfig`` with
  ``responseMimeType: application/json`` (the schema itself is in the system instruction and
  checked by the LLM layer); the answer is ``candidates[0].content.parts[].text`` without
  thought parts; ``usageMetadata`` gives the tokens: promptTokenCount, and candidatesTokenCount
  plus thoughtsTokenCount (a thinking model's thoughts are billed as output).
  ``promptFeedback.blockReason`` or a safety ``finishReason`` is a refusal; MAX_TOKENS is parsed
  (the repair round may still save it).
"""

from __future__ import annotations

from typing import Any

from agentmemory_server.providers.chat import ASSISTANT, ChatRequest, Generation, Refusal, count
from agentmemory_server.providers.http import JsonTransport

PROVIDER = "gemini"
DEFAULT_BASE = "https://generativelanguage.googleapis.com"
# finishReasons that mean the model declined to answer (MAX_TOKENS is parsed: it may be usable).
REFUSALS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "IMAGE_SAFETY", "OTHER"}
)


def gemini_transport(*, api_key: str, base_url: str, timeout: float, **options: Any) -> JsonTransport:
    return JsonTransport(
        name="Gemini",
        base_url=base_url,
        headers={"x-goog-api-key": api_key},
        secrets=(api_key,),
        timeout=timeout,
        not_found_hint="GEMINI_API_BASE is the API's base, without /v1beta",
        **options,
    )


def model_path(model: str) -> str:
    """``models/<name>`` for a bare or prefixed model name."""
    return model if model.startswith("models/") else f"models/{model}"


def post_model(
    transport: JsonTransport, model: str, method: str, body: dict[str, Any], *, attempts: int, backoff: float
) -> dict[str, Any]:
    """POST ``/v1beta/models/{model}:{method}``. :raise ProviderHTTPError: failed for good."""
    return transport.post(f"/v1beta/{model_path(model)}:{method}", body, attempts=attempts, backoff=backoff)


def parse_generation(data: dict[str, Any]) -> Generation:
    """The text of ``candidates[0]`` and the usage counts. :raise Refusal: blocked or empty."""
    usage = data.get("usageMetadata") or {}
    # A thinking model's thoughts are billed as output but counted apart from the candidates.
    prompt = count(usage.get("promptTokenCount"))
    output = count(usage.get("candidatesTokenCount")) + count(usage.get("thoughtsTokenCount"))
    blocked = (data.get("promptFeedback") or {}).get("blockReason")
    if blocked:
        raise Refusal(f"Gemini blocked the prompt: {blocked}", prompt, output)
    candidates = data.get("candidates") or []
    if not candidates or not isinstance(candidates[0], dict):
        raise Refusal("Gemini answered without candidates", prompt, output)
    first = candidates[0]
    reason = str(first.get("finishReason") or "STOP")
    parts = (first.get("content") or {}).get("parts") or []
    text = "".join(p.get("text") or "" for p in parts if isinstance(p, dict) and not p.get("thought"))
    if reason in REFUSALS:
        raise Refusal(f"Gemini stopped the answer: finishReason {reason}", prompt, output)
    if not text.strip():
        raise Refusal(f"Gemini answered with no text (finishReason {reason})", prompt, output)
    return Generation(text, reason, prompt, output, prompt + output)


class GeminiChat:
    """generateContent for one model."""

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
        thinking_budget: int | None = None,
    ):
        self.transport, self.model = transport, model
        self.attempts, self.backoff = attempts, backoff
        self.max_output_tokens, self.thinking_budget = max_output_tokens, thinking_budget

    def body(self, request: ChatRequest) -> dict[str, Any]:
        config: dict[str, Any] = {
            "responseMimeType": "application/json",
            "temperature": 0.2,
            "candidateCount": 1,
            "maxOutputTokens": request.max_output_tokens or self.max_output_tokens,
        }
        if self.thinking_budget is not None:
            config["thinkingConfig"] = {"thinkingBudget": self.thinking_budget}
        contents = [
            {"role": "model" if t.role == ASSISTANT else "user", "parts": [{"text": t.text}]} for t in request.turns
        ]
        return {
            "systemInstruction": {"parts": [{"text": request.system}]},
            "contents": contents,
            "generationConfig": config,
        }

    def generate(self, request: ChatRequest) -> Generation:
        data = post_model(
            self.transport,
            self.model,
            "generateContent",
            self.body(request),
            attempts=self.attempts,
            backoff=self.backoff,
        )
        return parse_generation(data)
