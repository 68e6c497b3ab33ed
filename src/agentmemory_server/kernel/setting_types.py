"""The building blocks of the settings table: one ``Setting`` and the parsers of its values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    env: tuple[str, ...]
    default: Any
    type: Callable[[str], Any]
    help: str
    secret: bool = False


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    parse.__name__ = "|".join(allowed)
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise ValueError(f"expected a number > 0, got {text!r}")
    return value


def _tri_state(text: str) -> str:
    """auto | true | false (upstream: 1/0 and yes/no too; auto decides at run time)."""
    lowered = text.strip().lower()
    if lowered == "auto":
        return "auto"
    return "true" if _bool(lowered) else "false"


_tri_state.__name__ = "auto|true|false"


def _optional_int(text: str) -> int | None:
    return None if not text.strip() else _non_negative_int(text)


UNLIMITED = "unlimited"


def _token_budget(text: str) -> int | None:
    """A token budget: an integer >= 0 (0: no tokens at all), or ``unlimited`` (None)."""
    if text.strip().lower() == UNLIMITED:
        return None
    try:
        return _non_negative_int(text)
    except ValueError:
        raise ValueError(f"expected a number of tokens >= 0 or {UNLIMITED!r}, got {text!r}") from None


_token_budget.__name__ = "tokens|unlimited"


# The URL schemes the PostgreSQL backend answers to (storage.POSTGRES_SCHEMES holds the same: storage
# cannot import the kernel, and the settings must not import storage, which takes a fifth of a second).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _optional_str(text: str) -> str | None:
    # Hook configs often carry unexpanded "${VAR}" placeholders; treat them as unset.
    text = text.strip()
    if not text or (text.startswith("${") and text.endswith("}")):
        return None
    return text


def postgres_url(url: str) -> str | None:
    """``url`` with its scheme in lower case when it names PostgreSQL, else None. A URL's scheme
    is case-insensitive (RFC 3986), but libpq accepts only the lower-case spelling."""
    scheme, sep, rest = url.partition("://")
    normal = scheme.lower() + sep
    return normal + rest if sep and normal in POSTGRES_SCHEMES else None


def _database_url(text: str) -> str | None:
    """A PostgreSQL URL, or unset. Checked here so that a mistyped one stops the server with this
    message rather than with a traceback from the storage layer; only the scheme is quoted, since
    the URL may hold a password."""
    url = _optional_str(text)
    normal = postgres_url(url) if url else None
    if url and normal is None:
        found = f"a {url.split('://', 1)[0]!r} URL" if "://" in url else "no URL"
        raise ValueError(
            f"expected postgresql://user:password@host/db, got {found} (a SQLite file: set AGENTMEMORY_DB)"
        )
    return normal


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_url(text: str) -> str:
    """A Redis URL, its scheme in lower case. Checked here so that a mistyped one stops the server
    (or a CLI command) with this message rather than a traceback from redis-py when the Redis
    backends open; only the scheme is quoted, since the URL may hold a password."""
    url = text.strip()
    scheme, sep, rest = url.partition("://")
    normal = scheme.lower() + sep
    if not sep or normal not in REDIS_SCHEMES:
        found = f"a {scheme!r} URL" if sep else "no URL"
        raise ValueError(f"expected redis://host:port/db (or rediss://, unix://), got {found}")
    return normal + rest
