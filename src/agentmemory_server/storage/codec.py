"""The JSON text every backend stores: compact, UTF-8, no NaN."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON for storage. Falls back to ASCII escapes when a string holds a lone
    surrogate, which UTF-8 (and therefore SQLite) cannot carry."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def loads(text: str) -> Any:
    return json.loads(text)
