"""What every chat provider takes and gives back, so the LLM layer speaks to one interface.

A ``ChatRequest`` is a system instruction, the conversation so far (user and assistant
``Turn``s) and the JSON Schema the answer must match. Each provider module (gemini.py,
openai.py, anthropic.py) maps it onto its own wire format, asks for JSON the way its API
allows (a JSON mime type, ``response_format``, a forced tool call), and returns a
``Generation``: the answer as JSON text plus the token counts the API reported. The LLM layer
validates that text itself; a provider never trusts its own structured-output mode.

A service that answered without usable content (a blocked prompt, a safety stop, an empty
answer) raises ``Refusal``: it is not an outage, so the breaker counts it as a success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agentmemory_server.providers.http import JsonTransport

USER, ASSISTANT = "user", "assistant"
# Finish reasons that say the output limit cut the answer short (OpenAI, Gemini, Anthropic).
CUT_OFF = frozenset({"length", "MAX_TOKENS", "max_tokens"})


@dataclass(frozen=True)
class Turn:
    """One message. ``native`` is the provider's own form of an assistant turn it produced
    (Anthropic's tool_use block), so a repair round can quote it back faithfully."""

    role: str
    text: str
    native: Any = None


@dataclass(frozen=True)
class ChatRequest:
    system: str
    turns: list[Turn]
    schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    max_output_tokens: int | None = None  # None: the client's configured limit


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    native: Any = field(default=None, compare=False)

    def turn(self) -> Turn:
        """This answer as the assistant turn of a follow-up request."""
        return Turn(ASSISTANT, self.text, self.native)

    @property
    def cut_off(self) -> bool:
        """Did the output limit end the answer (so invalid JSON may be only its missing end)?"""
        return self.finish_reason in CUT_OFF


class Refusal(Exception):
    """The model answered but gave nothing usable. Carries the tokens the call still cost."""

    def __init__(self, message: str, prompt_tokens: int = 0, output_tokens: int = 0):
        super().__init__(message)
        self.message = message
        self.prompt_tokens, self.output_tokens = prompt_tokens, output_tokens


class ChatClient(Protocol):
    """One model of one provider."""

    provider: str
    model: str
    transport: JsonTransport
    carries_schema: bool  # the request hands the answer's schema to the model (no need to spell it out)

    def generate(self, request: ChatRequest) -> Generation:
        """:raise Refusal: no usable answer. :raise ProviderHTTPError: transport failure.
        Other exceptions (a malformed body) count as failures too."""
        ...


def count(value: Any) -> int:
    """A token count from an API's usage object (absent, null or odd -> 0)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
