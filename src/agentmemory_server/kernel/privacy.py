"""Privacy stripping: secrets and <private> blocks never reach the database, a log line or an
error message (``redact_logs``; ``errors.redact_with`` for error envelopes).

Applied to every write path (observations, memories, lessons, slots, imports, LLM output).
Structured values are walked string by string, so the JSON stays valid after stripping, and a
value stored under a secret-looking key ("password", "api_key", "client_secret", ...) is
redacted whole even when it does not look like a known token format.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
REDACTED_SECRET = "[REDACTED_SECRET]"

_PRIVATE_BLOCK = re.compile(r"<private>.*?</private>", re.IGNORECASE | re.DOTALL)
# A PEM private key up to its END line, or to the end of the text when the END is missing.
_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# scheme://user:password@host -> scheme://[REDACTED_SECRET]@host
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s:@'\"]+:[^/\s@'\"]+@")

# (triggers, pattern): a pattern runs only when one of its lower-case trigger substrings occurs
# in the lower-cased text. One scan finds every trigger (overlapping ones too) and most text
# holds no secret, so stripping stays cheap on the observe and bulk import paths.
_TOKEN_RULES: list[tuple[tuple[str, ...], str]] = [
    # keyword = value assignments (env files, CLI flags, JSON text); the keyword goes too
    (
        ("key", "secret", "token", "passw", "credential", "auth"),
        r"(?i:api[_-]?key|secret|token|password|passwd|credential|auth)[\"']?\s*[=:]\s*[\"']?"
        r"[^\s\"'`<>,;&)]{20,}[\"']?",
    ),
    (("bearer",), r"\b(?i:bearer)\s+[A-Za-z0-9._\-+/=]{20,}"),
    # sk-, sk-proj-, sk-ant-, pk-, rk-, ak- keys
    (("k-",), r"\b(?:sk|pk|rk|ak)-[A-Za-z0-9][A-Za-z0-9_\-]{19,}"),
    (("live_", "test_"), r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    (("gh", "github_pat_"), r"\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{22,}"),
    (("xox",), r"\bxox[abprs]-[A-Za-z0-9\-]+"),
    (("akia", "asia"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (("aiza",), r"\bAIza[A-Za-z0-9_\-]{35}"),
    (("eyj",), r"\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"),
    (("glpat-",), r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    (("npm_", "dop_v1_", "hf_"), r"\bnpm_[A-Za-z0-9]{36}|\bdop_v1_[A-Za-z0-9]{64}|\bhf_[A-Za-z0-9]{30,}"),
]
_TOKENS = [(frozenset(triggers), re.compile(pattern)) for triggers, pattern in _TOKEN_RULES]
# Characters at least one of which a rule's match holds (rules by position in _TOKEN_RULES): the
# keyword rule needs its "=" or ":", and most text naming a token or auth holds neither.
_NEEDS: dict[int, tuple[str, ...]] = {0: ("=", ":")}
# Every trigger, each looked for on its own: a substring test per trigger is several times
# cheaper than one regular expression trying them all at every position, and finds the same set
# (overlapping ones too: "key" does not hide an "eyj" starting inside it).
_TRIGGERS = tuple(sorted({t for ts, _ in _TOKEN_RULES for t in ts}))

# Keys whose string value is a secret whatever it looks like (compared lower-case, without
# separators): exact names, or names ending in one of the suffixes.
_SECRET_KEYS = {
    "apikey",
    "secret",
    "token",
    "password",
    "passwd",
    "pwd",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "privatekey",
    "accesskey",
    "secretkey",
    "clientsecret",
    "accesstoken",
    "refreshtoken",
    "sessiontoken",
    "bearer",
    "xapikey",
    "hftoken",
}
_SECRET_KEY_SUFFIXES = ("password", "secret", "apikey", "token", "privatekey", "accesskey")
_KEY_SEPARATORS = re.compile(r"[^a-z0-9]")


def strip_text(text: str) -> str:
    """Redact <private> blocks and every known secret form inside one string."""
    if not text:
        return text
    if "<" in text:
        text = _PRIVATE_BLOCK.sub(REDACTED, text)
    if "PRIVATE KEY-----" in text:
        text = _PEM_KEY.sub(REDACTED_SECRET, text)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED_SECRET + "@", text)
    lowered = text.lower()
    found = {trigger for trigger in _TRIGGERS if trigger in lowered}
    if found:
        for rule, (triggers, pattern) in enumerate(_TOKENS):
            needs = _NEEDS.get(rule)
            if triggers.isdisjoint(found) or (needs and not any(c in text for c in needs)):
                continue
            text = pattern.sub(REDACTED_SECRET, text)
    return text


def is_secret_key(key: str) -> bool:
    name = _KEY_SEPARATORS.sub("", key.lower())
    if name in _SECRET_KEYS:
        return True
    return name.endswith(_SECRET_KEY_SUFFIXES)


def strip_private_data(value: Any) -> Any:
    """Return a copy of ``value`` (any decoded JSON) with secrets redacted."""
    if isinstance(value, str):
        return strip_text(value)
    if isinstance(value, list):
        return [strip_private_data(v) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            # Short values under such keys are placeholders ("none", "true"), not secrets.
            if isinstance(item, str) and len(item) >= 6 and is_secret_key(str(key)):
                out[key] = REDACTED_SECRET
            else:
                out[key] = strip_private_data(item)
        return out
    return value


# -- logs -----------------------------------------------------------------------------------------------

MIN_LITERAL = 8  # shorter configured values are not worth masking (and would mask common words)


def redact_log_text(text: str, literals: Iterable[str] = ()) -> str:
    """A log line with the configured secrets (``literals``) and every known secret form removed."""
    for literal in literals:
        if literal in text:
            text = text.replace(literal, REDACTED_SECRET)
    return strip_text(text)


def redact_logs(literals: Iterable[str | None] = ()) -> None:
    """From now on, in this process and the processes it forks, every log record is redacted when
    it is created, whichever logger or handler it goes through (ours, gunicorn's, werkzeug's,
    huggingface_hub's): its message, its traceback and its stack. ``literals`` are configured
    secrets that may look like nothing in particular (the bearer token, API keys): they are
    masked wherever they appear. Calling it again adds literals."""
    wanted = {value for value in literals if value and len(value) >= MIN_LITERAL}
    current = logging.getLogRecordFactory()
    known: set[str] | None = getattr(current, "redacted_literals", None)
    if known is not None:
        known |= wanted
        return
    make_record = current

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _redact_record(record, redacting_factory.redacted_literals)  # type: ignore[attr-defined]
        return record

    redacting_factory.redacted_literals = wanted  # type: ignore[attr-defined]
    redacting_factory.previous = make_record  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


def stop_redacting_logs() -> None:
    """Undo ``redact_logs`` (tests)."""
    current = logging.getLogRecordFactory()
    previous = getattr(current, "previous", None)
    if previous is not None:
        logging.setLogRecordFactory(previous)


def _redact_record(record: logging.LogRecord, literals: set[str]) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed call still logs, redacted
        message = f"{record.msg} {record.args}"
    record.msg, record.args = redact_log_text(message, literals), ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        formatted = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact_log_text(formatted, literals)
    if record.stack_info:
        record.stack_info = redact_log_text(record.stack_info, literals)
