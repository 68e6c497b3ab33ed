"""Which provider and model each LLM feature uses, and the clients that reach them.

``AGENTMEMORY_LLM_PROVIDER`` picks one provider for every feature (``auto``: gemini when a
Gemini key is set, else none); ``AGENTMEMORY_LLM_MODEL`` its model (unset: the provider's
default), and ``AGENTMEMORY_LLM_MODEL_<FEATURE>`` a different model for one feature. A provider
whose credentials are missing (no Gemini key; no key for api.openai.com or api.anthropic.com)
is reported, not used: every feature takes its deterministic path. Clients of one provider
share one transport (one connection pool, one retry counter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentmemory_server.kernel.settings_llm import LLM_FEATURES
from agentmemory_server.providers import anthropic, gemini, openai
from agentmemory_server.providers.chat import ChatClient
from agentmemory_server.providers.http import JsonTransport

PROVIDERS = (gemini.PROVIDER, openai.PROVIDER, anthropic.PROVIDER)
FEATURES = LLM_FEATURES


@dataclass(frozen=True)
class ProviderChoice:
    """``name`` None: no model at all. ``problem``: why a configured provider cannot be used."""

    name: str | None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.name is not None and self.problem is None


def choose_provider(settings: Any) -> ProviderChoice:
    wanted = settings.llm_provider
    if wanted == "none" or (wanted == "auto" and not settings.gemini_api_key):
        return ProviderChoice(None)
    name = gemini.PROVIDER if wanted == "auto" else wanted
    return ProviderChoice(name, missing_credentials(settings, name))


def missing_credentials(settings: Any, provider: str) -> str | None:
    if provider == gemini.PROVIDER and not settings.gemini_api_key:
        return "AGENTMEMORY_LLM_PROVIDER=gemini needs GEMINI_API_KEY or GOOGLE_API_KEY"
    if provider == openai.PROVIDER and not settings.openai_api_key and _is(settings.openai_base_url, openai):
        return "api.openai.com needs OPENAI_API_KEY (a local server in OPENAI_BASE_URL needs none)"
    if (
        provider == anthropic.PROVIDER
        and not settings.anthropic_api_key
        and _is(settings.anthropic_base_url, anthropic)
    ):
        return "AGENTMEMORY_LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY"
    return None


def _is(base_url: str, module: Any) -> bool:
    return base_url.rstrip("/") == module.DEFAULT_BASE


def default_model(settings: Any, provider: str) -> str:
    if provider == gemini.PROVIDER:
        return settings.gemini_model
    return openai.DEFAULT_MODEL if provider == openai.PROVIDER else anthropic.DEFAULT_MODEL


def model_for(settings: Any, provider: str, feature: str | None) -> str:
    """The model ``feature`` uses (None: the provider-wide model, e.g. for ``llm test``)."""
    override = getattr(settings, f"llm_model_{feature}", None) if feature in FEATURES else None
    return override or settings.llm_model or default_model(settings, provider)


def make_transport(settings: Any, provider: str) -> JsonTransport:
    timeout = settings.llm_timeout_seconds
    if provider == gemini.PROVIDER:
        return gemini.gemini_transport(
            api_key=settings.gemini_api_key, base_url=settings.gemini_api_base, timeout=timeout
        )
    if provider == openai.PROVIDER:
        return openai.openai_transport(
            api_key=settings.openai_api_key, base_url=settings.openai_base_url, timeout=timeout
        )
    return anthropic.anthropic_transport(
        api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url, timeout=timeout
    )


def make_client(settings: Any, provider: str, transport: JsonTransport, model: str) -> ChatClient:
    common = {
        "attempts": settings.llm_max_attempts,
        "backoff": settings.llm_retry_backoff_seconds,
        "max_output_tokens": settings.llm_max_output_tokens,
    }
    if provider == gemini.PROVIDER:
        return gemini.GeminiChat(transport, model, thinking_budget=settings.gemini_thinking_budget, **common)
    if provider == openai.PROVIDER:
        return openai.OpenAIChat(
            transport,
            model,
            json_mode=settings.openai_response_format,
            token_field=settings.openai_token_limit_param,
            **common,
        )
    return anthropic.AnthropicChat(transport, model, **common)


class Clients:
    """The chat clients of the chosen provider, one per model in use, built on first use."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.choice = choose_provider(settings)
        self.transport = make_transport(settings, self.choice.name) if self.choice.usable and self.choice.name else None
        self._by_model: dict[str, ChatClient] = {}

    @property
    def provider(self) -> str | None:
        """The provider in use (None: no model)."""
        return self.choice.name if self.choice.usable else None

    def model_for(self, feature: str | None) -> str | None:
        return model_for(self.settings, self.provider, feature) if self.provider else None

    def client(self, feature: str | None) -> ChatClient | None:
        model = self.model_for(feature)
        if model is None or self.transport is None or self.provider is None:
            return None
        client = self._by_model.get(model)
        if client is None:
            client = self._by_model[model] = make_client(self.settings, self.provider, self.transport, model)
        return client

    def scrub(self, text: str) -> str:
        return self.transport.scrub(text) if self.transport else text
