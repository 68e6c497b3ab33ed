"""JSON Schema fragments of the answers the model steps ask for (``llm.Task``'s schema).

Apart from llm_steps.py because the compression (llm_compress.py) builds its answer's schema
from them too.
"""

from __future__ import annotations

from typing import Any


def string_list(max_items: int, max_length: int, min_length: int = 1) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": max_items,
        "items": {"type": "string", "minLength": min_length, "maxLength": max_length},
    }


def text_field(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def object_field(required: list[str], **properties: dict) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}
