"""One JSON-over-HTTP transport for every model provider (Gemini, OpenAI-compatible, Anthropic).

``JsonTransport.post(path, body, attempts=, backoff=)`` sends one JSON POST to ``{base}{path}``
with the provider's headers and retries what is worth retrying: 429, 5xx and Anthropic's 529
("overloaded"), connection errors and timeouts, with exponential backoff that honours a
``Retry-After`` header (seconds or an HTTP date, capped). Other statuses fail at once, and so
does a 429 whose error code says money or quota ran out, or whose Google RPC details name a
daily quota (retrying cannot help; the caller's breaker and deterministic fallback take over).
Gemini asks for its wait in the body (``details[].retryDelay`` of a ``google.rpc.RetryInfo``),
honoured as a Retry-After. Every attempt has a timeout. A 200 whose body is
an ``error`` object instead of a result (OpenRouter's way to report a model that failed after
the request was accepted) is a failure too, retried when its code is a status worth retrying.

Secrets (API keys) travel only in headers and are scrubbed from every error message, so they
cannot reach logs, /health or a reply. Error messages quote the provider's own error
(``error.message`` / ``error.type`` / ``error.code``, the shape all three APIs share).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

# 529 is Anthropic's "overloaded_error"; 408 a proxy's request timeout.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})
MAX_BACKOFF_SECONDS = 30.0
# Error codes of a 429 that will not clear by waiting a few seconds (OpenAI's exhausted credit,
# Anthropic's monthly spend cap): fail at once instead of burning the attempts.
PERMANENT_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "enforced_spend_limit_reached", "credit_balance_exhausted"}
)
REDACTED = "[REDACTED]"
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


class ProviderHTTPError(Exception):
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
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class ErrorAnswer:
    """What a provider's error answer says: a one-line description, its error code, the wait it
    asks for in the body (seconds), and whether waiting a few seconds cannot help."""

    summary: str
    code: str | None = None
    wait: float | None = None
    lasting: bool = False
    from_provider: bool = False  # the body was the provider's error object, not some server's page


def error_summary(resp: requests.Response) -> ErrorAnswer:
    """An error answer: the provider's ``error`` object when the body has one
    (``{"error": {"message", "type"|"status", "code"}}``), else its text."""
    try:
        body = resp.json()
    except ValueError:
        return ErrorAnswer(resp.text[:200])
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ErrorAnswer(resp.text[:200])
    return describe_error(error)


def embedded_error(body: dict[str, Any]) -> tuple[int, ErrorAnswer] | None:
    """(status, error) of an error a 200 answer carries instead of a result, or None.
    OpenRouter answers 200 once it has passed a request to a model, and reports a failure after
    that as ``{"error": {"code": 502, "message"}}`` in the body; its numeric code is the status
    the failure would have had (so a 502 is retried like one)."""
    error = body.get("error")
    if not isinstance(error, dict) or not error:
        return None
    code = error.get("code")
    status = code if isinstance(code, int) and 100 <= code <= 599 else 200
    return status, describe_error(error)


def describe_error(error: dict[str, Any]) -> ErrorAnswer:
    """A provider's ``error`` object. Anthropic puts its code in ``details.error_code``; Google
    RPC errors (Gemini) list typed ``details``: a RetryInfo's ``retryDelay`` and a
    QuotaFailure's violated quota ids."""
    details = error.get("details")
    typed = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    details = details if isinstance(details, dict) else {}
    code = error.get("code") or details.get("error_code")
    kind = error.get("type") or error.get("status")
    label = " ".join(str(p) for p in (kind, code if code != kind else None) if p)
    message = str(error.get("message") or "")[:200]
    code_text = str(code) if code is not None else None
    return ErrorAnswer(
        f"{label}: {message}" if label else message,
        code_text,
        wait=_retry_delay(typed),
        lasting=code_text in PERMANENT_CODES or _daily_quota_used_up(typed),
        from_provider=True,
    )


_DELAY = re.compile(r"(\d+(?:\.\d+)?)s")


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """Seconds a google.rpc.RetryInfo asks to wait (``"retryDelay": "37s"``), or None."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DELAY.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _daily_quota_used_up(details: list[dict[str, Any]]) -> bool:
    """Does a google.rpc.QuotaFailure name a per-day quota (Gemini's free tier:
    ``GenerateRequestsPerDayPerProjectPerModel-FreeTier``)? It clears at Pacific midnight, not
    after a few seconds' backoff."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            violations = detail.get("violations")
            for violation in violations if isinstance(violations, list) else []:
                if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                    return True
    return False


class JsonTransport:
    """:param name: the provider, for error messages. :param base_url: everything before the
    request path. :param headers: sent with every request (the key goes here).
    :param secrets: strings scrubbed from error messages. :param timeout: seconds per attempt.
    :param not_found_hint: added to a 404 that is not the provider's own error (nothing serves
    that path: a base URL setting missing or repeating a part such as ``/v1``).
    :param sleep: injectable for tests (records delays)."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        secrets: Iterable[str | None] = (),
        timeout: float,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        not_found_hint: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.name = name
        self.not_found_hint = not_found_hint
        self.base = base_url.rstrip("/")
        self._headers = dict(headers)
        self._secrets = tuple(s for s in secrets if s)
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
        """``text`` without any secret (an error message must never carry one)."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def post(self, path: str, body: dict[str, Any], *, attempts: int, backoff: float) -> dict[str, Any]:
        """The decoded JSON answer. :raise ProviderHTTPError: after the last failed attempt."""
        url, last, status = self.base + path, "no attempt made", None
        for attempt in range(max(1, attempts)):
            wait = backoff * (2**attempt)
            try:
                resp = self._session().post(url, json=body, timeout=self.timeout, headers=self._headers)
            except requests.RequestException as exc:
                last, status = f"{type(exc).__name__}: {exc}", None
            else:
                if resp.status_code == 200:
                    data = self._decode(resp, path)
                    embedded = embedded_error(data)
                    if embedded is None:
                        return data
                    status, error = embedded
                    last = f"HTTP 200 with an error in the body: {error.summary}".rstrip()
                else:
                    error = error_summary(resp)
                    last, status = f"HTTP {resp.status_code} {error.summary}".rstrip(), resp.status_code
                    if status == 404 and not error.from_provider and self.not_found_hint:
                        last += f" (nothing serves {url}: {self.not_found_hint})"
                if status not in RETRY_STATUS or error.lasting:
                    break
                asked = retry_after_seconds(resp.headers.get("Retry-After"))
                asked = asked if asked is not None else error.wait
                if asked is not None:
                    wait = max(wait, asked)
            if attempt + 1 < attempts:
                self.retries += 1
                self.sleep(min(wait, self.max_backoff))
        raise ProviderHTTPError(self.scrub(f"{self.name} {path} failed: {last}"), status)

    def _decode(self, resp: requests.Response, path: str) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ProviderHTTPError(f"{self.name} {path} answered 200 with a body that is not a JSON object", 200)
        return data
