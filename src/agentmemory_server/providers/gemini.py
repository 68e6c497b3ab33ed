"""HTTP to the Gemini API (Generative Language ``v1beta``), shared by embeddings and the LLM layer.

``GeminiTransport.post(model, method, body)`` sends one JSON POST to
``{base}/v1beta/models/{model}:{method}`` and retries what is worth retrying: 429 and 5xx
answers, connection errors and timeouts, with exponential backoff that honours a
``Retry-After`` header (seconds or an HTTP date, capped). Other statuses fail at once. The API
key travels in the ``x-goog-api-key`` header, never in the URL, and is scrubbed from every error
message, so it cannot reach logs, /health or a reply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 30.0


class GeminiHTTPError(Exception):
    """A request that failed for good. ``status`` is the last HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(0.0, when.timestamp() - current)


def model_path(model: str) -> str:
    """``models/<name>`` for a bare or prefixed model name."""
    return model if model.startswith("models/") else f"models/{model}"


class GeminiTransport:
    """:param api_key: the secret (header only). :param base_url: GEMINI_API_BASE.
    :param timeout: seconds per attempt. :param sleep: injectable for tests (records delays)."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: float,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._key = api_key
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.retries = 0  # attempts beyond the first, over the transport's life
        self._local = threading.local()  # one requests.Session per thread

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def scrub(self, text: str) -> str:
        """``text`` without the API key (an error message must never carry it)."""
        return text.replace(self._key, "[REDACTED]") if self._key else text

    def url(self, model: str, method: str) -> str:
        return f"{self.base}/v1beta/{model_path(model)}:{method}"

    def post(self, model: str, method: str, body: dict[str, Any], *, attempts: int, backoff: float) -> dict[str, Any]:
        """The decoded JSON answer. :raise GeminiHTTPError: after the last failed attempt."""
        url, last, status = self.url(model, method), "no attempt made", None
        for attempt in range(max(1, attempts)):
            wait = backoff * (2**attempt)
            try:
                resp = self._session().post(url, json=body, timeout=self.timeout, headers={"x-goog-api-key": self._key})
            except requests.RequestException as exc:
                last, status = f"{type(exc).__name__}: {exc}", None
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError:
                        raise GeminiHTTPError("Gemini answered 200 with a body that is not JSON", 200) from None
                last, status = f"HTTP {resp.status_code}: {resp.text[:200]}", resp.status_code
                if resp.status_code not in RETRY_STATUS:
                    break
                asked = retry_after_seconds(resp.headers.get("Retry-After"))
                if asked is not None:
                    wait = max(wait, asked)
            if attempt + 1 < attempts:
                self.retries += 1
                self.sleep(min(wait, self.max_backoff))
        raise GeminiHTTPError(self.scrub(f"Gemini {method} failed: {last}"), status)
