"""Config files that are not JSON: a marked block in TOML (Codex), an entry in YAML (Goose), and
files agentmemory owns outright (Cline hook scripts, the OpenCode plugin, a Continue block).

Text is never re-serialised: the block is added as text and the result parsed to check it means
the original plus agentmemory's entry and nothing else; anything else is refused with the file's
name, before anything is written.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from agentmemory_server import errors
from agentmemory_server.adapters.connect.core import ConnectError, Edit

BEGIN = "# >>> agentmemory: written by `agentmemory connect`, removed by `agentmemory disconnect`"
END = "# <<< agentmemory"
OWNED_MARK = "agentmemory connect"  # every file agentmemory owns says so in a comment


class ConflictError(ConnectError):
    status = 409
    code = errors.CLIENT_CONFIG_CONFLICT


def without_block(text: str) -> str:
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(BEGIN))
        end = next(i for i in range(start, len(lines)) if lines[i].startswith(END))
    except StopIteration:
        return text
    if start > 0 and not lines[start - 1].strip():
        start -= 1
    return "".join(lines[:start] + lines[end + 1 :])


def _appended(text: str, body: str) -> str:
    base = text.rstrip("\n")
    block = f"{BEGIN}\n{body}{END}\n"
    return f"{base}\n\n{block}" if base else block


def toml_block(path: Path, table: str, body: str) -> Edit:
    """A ``[table]`` (with its sub-tables) appended to a TOML file inside marker comments."""
    dotted = table.split(".")

    def lookup(doc: dict[str, Any]) -> Any:
        for part in dotted:
            doc = doc.get(part) if isinstance(doc, dict) else None  # type: ignore[assignment]
        return doc

    def parse(text: str) -> dict[str, Any]:
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConnectError(
                f"{path} is not valid TOML ({exc}); nothing was written", details={"file": str(path)}
            ) from None

    def add(text: str | None) -> str:
        rest = without_block(text or "")
        if lookup(parse(rest)) is not None:
            raise ConflictError(f"{path} already defines [{table}] outside agentmemory's block; remove it first")
        new = _appended(rest, body)
        if lookup(parse(new)) is None:
            raise ConnectError(f"could not add [{table}] to {path}")
        return new

    def remove(text: str) -> str | None:
        rest = without_block(text)
        return rest if rest.strip() else None

    return Edit(path, add, remove)


def yaml_entry(path: Path, section: str, name: str, lines: list[str]) -> Edit:
    """``section: {name: ...}`` in a YAML file: the entry's lines (written for 2-space indentation
    under ``name``) are inserted as text, then the file is parsed to check the result."""

    def parse(text: str) -> dict[str, Any]:
        try:
            doc = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as exc:
            raise ConnectError(f"{path} is not valid YAML ({exc}); nothing was written") from None
        if not isinstance(doc, dict):
            raise ConnectError(f"{path} does not hold a YAML mapping; nothing was written")
        return doc

    def add(text: str | None) -> str:
        rest = without_block(text or "")
        original = parse(rest)
        if isinstance(original.get(section), dict) and name in original[section]:
            raise ConflictError(f"{path} already has {section}.{name} outside agentmemory's block; remove it first")
        entry = [f"  {name}:\n", *(f"    {line}\n" for line in lines)]
        new = _insert(rest, section, entry)
        expected = dict(original)
        expected[section] = {**(original.get(section) or {}), name: parse("x:\n" + "".join(entry))["x"][name]}
        if parse(new) != expected:
            raise ConnectError(f"could not add {section}.{name} to {path} safely; add it by hand (see --dry-run)")
        return new

    def remove(text: str) -> str | None:
        rest = without_block(text)
        doc = parse(rest) if rest.strip() else {}
        if isinstance(doc.get(section), dict) and name in doc[section]:  # markers lost (the agent rewrote it)
            del doc[section][name]
            rest = yaml.safe_dump(doc, sort_keys=False)
        return rest if rest.strip() else None

    return Edit(path, add, remove)


def _insert(text: str, section: str, entry: list[str]) -> str:
    block = [BEGIN + "\n", *entry, END + "\n"]
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.rstrip() == f"{section}:" or line.startswith(f"{section}: #"):
            return "".join(lines[: i + 1] + block + lines[i + 1 :])
    base = text.rstrip("\n")
    return (base + "\n\n" if base else "") + "".join([block[0], f"{section}:\n", *block[1:]])


def owned(path: Path, content: str, mode: int | None = None) -> Edit:
    """A file agentmemory writes whole (``content`` must mention ``agentmemory connect``)."""
    assert OWNED_MARK in content

    def add(text: str | None) -> str:
        if text is not None and OWNED_MARK not in text:
            raise ConflictError(f"{path} exists and is not agentmemory's; not overwriting it")
        return content

    def remove(text: str) -> str | None:
        return None if OWNED_MARK in text else text

    return Edit(path, add, remove, mode=mode)
