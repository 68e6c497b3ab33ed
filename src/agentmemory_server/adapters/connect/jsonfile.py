"""JSON config files: read strictly, change one part, write back in the file's own indentation.

Config files with comments (JSONC) are refused rather than rewritten without them: the error names
the file and ``connect --dry-run`` shows what to add by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmemory_server.adapters.connect.core import ConnectError, Edit

Doc = dict[str, Any]
_INDENT = re.compile(r"^\n?([ \t]+)\S", re.MULTILINE)


def load(path: Path, text: str | None) -> Doc:
    if text is None or not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConnectError(
            f"{path} is not plain JSON ({exc}); add the agentmemory entries by hand "
            "(agentmemory connect ... --dry-run shows them)",
            details={"file": str(path)},
        ) from None
    if not isinstance(doc, dict):
        raise ConnectError(f"{path} does not hold a JSON object", details={"file": str(path)})
    return doc


def dump(doc: Doc, like: str | None) -> str:
    """``doc`` as text indented like ``like`` (the file's current text), 2 spaces by default."""
    found = _INDENT.search(like or "")
    indent: int | str = 2
    if found:
        whitespace = found.group(1)
        indent = whitespace if "\t" in whitespace else len(whitespace)
    return json.dumps(doc, indent=indent, ensure_ascii=False) + "\n"


def edit(path: Path, add: Callable[[Doc], None], remove: Callable[[Doc], None], **kw: Any) -> Edit:
    """An Edit that applies ``add``/``remove`` to the parsed document."""

    def added(text: str | None) -> str:
        doc = load(path, text)
        add(doc)
        return dump(doc, text)

    def removed(text: str) -> str | None:
        doc = load(path, text)
        remove(doc)
        return dump(doc, text)

    return Edit(path, added, removed, **kw)


def set_entry(container_key: str, name: str, value: Any) -> tuple[Callable[[Doc], None], Callable[[Doc], None]]:
    """add/remove for ``doc[container_key][name] = value`` (an MCP server entry)."""

    def add(doc: Doc) -> None:
        section = doc.get(container_key)
        if not isinstance(section, dict):
            section = doc[container_key] = {}
        section[name] = value

    def remove(doc: Doc) -> None:
        section = doc.get(container_key)
        if isinstance(section, dict):
            section.pop(name, None)
            if not section:
                doc.pop(container_key, None)

    return add, remove


def prune(doc: Doc, key: str) -> None:
    if key in doc and not doc[key]:
        doc.pop(key)
