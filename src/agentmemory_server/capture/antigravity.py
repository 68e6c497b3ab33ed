"""Import Google Antigravity conversations as sessions and observations.

Layout under ANTIGRAVITY_DIR (default ``~/.gemini/antigravity``)::

    brain/<conversation-id>/task.md, implementation_plan.md, walkthrough.md, *.md
    brain/<conversation-id>/<name>.md.resolved, <name>.md.resolved.<N>    (saved versions)
    brain/<conversation-id>/.system_generated/logs/*                         (text or JSONL)

Each conversation becomes the session ``antigravity-<id>``; each file becomes observations
(Markdown split at headings, logs split at line/message boundaries). A sync is idempotent: a
file whose SHA-256 did not change is skipped, a changed file replaces the observations it
produced before. Binary, malformed, oversized and out-of-root files are reported and skipped,
never fatal. Nothing outside the root is ever read: symlinks that leave it are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agentmemory_server import errors
from agentmemory_server.capture.observe import store_observation
from agentmemory_server.errors import AppError, NotFound
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.registry import PROJECT, Ctx, params, string, tool
from agentmemory_server.kernel.schema_check import ecma_pattern
from agentmemory_server.kernel.scopes import ANTIGRAVITY as STATE
from agentmemory_server.kernel.util import iso, truncate
from agentmemory_server.memory import crystals, reflect
from agentmemory_server.memory.memories import delete_observations

CHUNK_CHARS = 3500
_CONVERSATION_ID = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"
_ARTIFACT = re.compile(r"^[^/\\]+\.md(\.resolved(\.\d+)?)?$")
_LOG_SUFFIXES = (".txt", ".log", ".md", ".jsonl", ".json", "")
_HEADING = re.compile(r"^(#{1,3})\s+(.+)$", re.MULTILINE)
_ARTIFACT_TYPES = {"task": "task", "implementation_plan": "decision", "walkthrough": "discovery"}


@dataclass
class SyncReport:
    conversations: list[str] = field(default_factory=list)
    ingested: list[str] = field(default_factory=list)
    unchanged: int = 0
    observations: int = 0
    replaced: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": True,
            "conversations": len(self.conversations),
            "sessions": [session_id(c) for c in self.conversations],
            "files": {"ingested": len(self.ingested), "unchanged": self.unchanged, "skipped": len(self.skipped)},
            "ingestedFiles": self.ingested,
            "observations": self.observations,
            "replacedObservations": self.replaced,
            "skipped": self.skipped,
        }


def session_id(conversation: str) -> str:
    return f"antigravity-{conversation}"


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def conversation_files(conv_dir: Path, root: Path, report: SyncReport) -> Iterator[Path]:
    """Artifact and log files of one conversation, refusing anything that leaves the root."""
    candidates = [p for p in sorted(conv_dir.iterdir()) if _ARTIFACT.match(p.name)]
    logs = conv_dir / ".system_generated" / "logs"
    if logs.is_dir() and _inside(logs, root):
        candidates += sorted(p for p in logs.iterdir() if p.suffix.lower() in _LOG_SUFFIXES)
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        if not _inside(path, root):
            report.skipped.append({"path": rel, "reason": "points outside ANTIGRAVITY_DIR"})
        elif path.is_file():
            yield path


# -- turning files into observation texts ------------------------------------------------------


def _chunks(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Split at line boundaries into pieces of at most ``limit`` characters."""
    pieces, current = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            pieces.append(current)
            current = ""
        current += line
    if current.strip():
        pieces.append(current)
    return [p for p in pieces if p.strip()]


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) pieces of a Markdown document, each small enough to be one observation."""
    marks = list(_HEADING.finditer(text))
    bounds = [0] + [m.start() for m in marks] + [len(text)]
    sections = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        body = text[start:end]
        if not body.strip():
            continue
        heading = _HEADING.match(body)
        title = heading.group(2).strip() if heading else ""
        for piece in _chunks(body):
            sections.append((title, piece))
    return sections


def _message_text(message: Any) -> str:
    if isinstance(message, str):
        return message
    if isinstance(message, list):
        return "\n".join(t for t in (_message_text(m) for m in message) if t)
    if isinstance(message, dict):
        for key in ("text", "content", "message", "parts", "body"):
            if key in message:
                return _message_text(message[key])
    return ""


def jsonl_messages(text: str) -> tuple[list[tuple[str, str]], int]:
    """(role, text) per transcript line, and how many lines could not be parsed."""
    messages, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        role = next(
            (
                str(record[k])
                for k in ("role", "type", "speaker", "author")
                if isinstance(record, dict) and isinstance(record.get(k), str)
            ),
            "message",
        )
        body = _message_text(record).strip()
        if body:
            messages.append((role, body))
    return messages, bad


def log_pieces(name: str, text: str) -> tuple[list[tuple[str, str]], int]:
    if name.endswith(".jsonl"):
        messages, bad = jsonl_messages(text)
        lines = [f"{role}: {body}" for role, body in messages]
        return [("transcript", piece) for piece in _chunks("\n".join(lines))], bad
    return [("log", piece) for piece in _chunks(text)], 0


def file_pieces(path: Path, text: str) -> tuple[list[tuple[str, str]], int]:
    if path.parent.name == "logs":
        return log_pieces(path.name, text)
    return markdown_sections(text), 0


# -- sync ---------------------------------------------------------------------------------------------


def _read_text(path: Path, limit: int) -> tuple[bytes | None, str | None, str | None]:
    """(raw bytes, text, reason-skipped)."""
    size = path.stat().st_size
    if size > limit:
        return None, None, f"too large ({size} bytes > ANTIGRAVITY_MAX_FILE_BYTES={limit})"
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        return raw, None, "binary file"
    try:
        return raw, raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw, None, "not valid UTF-8 text"


def _observation(
    conv: str, rel: str, index: int, heading: str, body: str, mtime: datetime, project: str, version: str
) -> dict[str, Any]:
    name = Path(rel).name
    stem = name.split(".md")[0]
    if "/logs/" in rel:
        obs_type = "conversation" if rel.endswith(".jsonl") else "other"
    else:
        obs_type = _ARTIFACT_TYPES.get(stem, "discovery")
    title = f"{name}: {heading}" if heading else name
    event = hashlib.sha256(f"{conv}\x00{rel}\x00{index}\x00{version}".encode()).hexdigest()[:32]
    text = strip_text(body.strip())
    return {
        "id": f"obs_ag_{event[:20]}",
        "sessionId": session_id(conv),
        "hookType": "antigravity",
        "timestamp": iso(mtime + timedelta(milliseconds=index)),
        "project": project,
        "cwd": None,
        "eventId": f"ag_{event}",
        "type": obs_type,
        "title": truncate(" ".join(title.split()), 80),
        "facts": [],
        "narrative": text,
        "concepts": ["antigravity", stem],
        "files": [],
        "importance": 6 if obs_type in ("task", "decision") else 5,
        "confidence": 0.6,
        "source": {"kind": "antigravity", "conversation": conv, "path": rel, "chunk": index},
        "raw": None,
    }


def sync_file(ctx: Ctx, conv: str, path: Path, root: Path, project: str, report: SyncReport) -> None:
    rel = path.relative_to(root).as_posix()
    limit = ctx.rt.settings.antigravity_max_file_bytes
    raw, text, reason = _read_text(path, limit)
    if reason or raw is None or text is None:
        report.skipped.append({"path": rel, "reason": reason or "unreadable"})
        return
    digest = hashlib.sha256(raw).hexdigest()
    state = ctx.rt.db.reader().records.get(STATE, rel)
    if state and state.get("sha256") == digest:
        report.unchanged += 1
        return
    pieces, bad_lines = file_pieces(path, text)
    if bad_lines:
        report.skipped.append({"path": rel, "reason": f"{bad_lines} malformed JSONL line(s) skipped"})
    mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    sid = session_id(conv)
    # The generation makes a file that returns to an earlier content a new event (its old
    # observations were deleted, and deleted events stay duplicates by design).
    generation = (state or {}).get("generation", 0) + 1
    version = f"{digest}:{generation}"
    with ctx.rt.db.transaction("antigravity_sync", agent_id=ctx.rt.settings.agent_id) as tx:
        if state and state.get("observationIds"):
            deleted, _ = delete_observations(ctx, tx, sid, state["observationIds"])
            report.replaced += len(deleted)
        ids = []
        for index, (heading, body) in enumerate(pieces):
            obs = _observation(conv, rel, index, heading, body, mtime, project, version)
            reply = store_observation(ctx, obs, None)
            ids.append(reply.data["observationId"])
        synced = _synced_state(digest, len(raw), sid, generation, ids, ctx.rt.clock.iso())
        tx.records.set(STATE, rel, synced, now=ctx.rt.clock.iso())
        tx.audit_message = f"antigravity sync of {rel}: {len(ids)} observation(s)"
    report.ingested.append(rel)
    report.observations += len(ids)


def _synced_state(digest: str, size: int, sid: str, generation: int, ids: list[str], synced_at: str) -> dict[str, Any]:
    """What is kept of a file synced: its content's hash (an unchanged file is skipped next
    time), its generation and the observations made from it (replaced when it changes)."""
    return {
        "sha256": digest,
        "size": size,
        "sessionId": sid,
        "generation": generation,
        "observationIds": ids,
        "syncedAt": synced_at,
    }


def sync(ctx: Ctx, conversation: str | None, project: str) -> SyncReport:
    root = Path(ctx.rt.settings.antigravity_dir).expanduser().resolve()
    brain = root / "brain"
    report = SyncReport()
    if not brain.is_dir():
        if conversation:
            raise NotFound(f"no Antigravity brain directory at {brain}", code=errors.ANTIGRAVITY_NOT_FOUND)
        return report
    if conversation:
        conv_dirs = [brain / conversation]
        if not conv_dirs[0].is_dir() or not _inside(conv_dirs[0], root):
            raise NotFound(f"conversation {conversation!r} not found under {brain}", code=errors.CONVERSATION_NOT_FOUND)
    else:
        named = ecma_pattern(_CONVERSATION_ID)  # the tool's own pattern, with JSON Schema's '$'
        conv_dirs = [p for p in sorted(brain.iterdir()) if p.is_dir() and named.match(p.name) and _inside(p, root)]
    for conv_dir in conv_dirs:
        report.conversations.append(conv_dir.name)
        for path in conversation_files(conv_dir, root, report):
            try:
                sync_file(ctx, conv_dir.name, path, root, project, report)
            except OSError as exc:
                report.skipped.append(
                    {"path": path.relative_to(root).as_posix(), "reason": f"unreadable: {exc.strerror or exc}"}
                )
            except AppError as exc:  # e.g. the session reached MAX_OBS_PER_SESSION
                report.skipped.append({"path": path.relative_to(root).as_posix(), "reason": exc.message})
    return report


SYNC_ARGS = params(
    conversationId=string(
        "One conversation folder name under brain/ (default: all)", max_length=128, pattern=_CONVERSATION_ID
    ),
    project=PROJECT,
)


@tool(
    "memory_antigravity_sync",
    SYNC_ARGS,
    http=[("POST", "/antigravity/sync")],
    answers_with_records=False,
    right="admin",
)
def memory_antigravity_sync(ctx: Ctx, args: dict) -> dict:
    """Import Google Antigravity conversations (brain/<id>/ artifacts and logs) as sessions;
    unchanged files are skipped."""
    project = args.get("project") or ctx.rt.settings.antigravity_project
    return sync(ctx, args.get("conversationId"), project).as_dict()


@tool(
    "memory_antigravity_sync_all",
    SYNC_ARGS,
    http=[("POST", "/antigravity/sync-all")],
    answers_with_records=True,
    right="admin",
)
def memory_antigravity_sync_all(ctx: Ctx, args: dict) -> dict:
    """Sync Antigravity conversations, then crystallize and reflect every synced session."""
    result = memory_antigravity_sync(ctx, args)
    follow_ups: dict[str, dict[str, Any]] = {}
    for sid in result["sessions"]:
        steps: dict[str, Any] = {}
        for handler in (crystals.memory_crystallize, reflect.memory_reflect):
            name = handler.__name__
            try:
                steps[name] = registry.run(handler, ctx, {"sessionId": sid})
            except Exception as exc:  # noqa: BLE001 - one session's failure must not stop the rest
                steps[name] = {"success": False, "error": getattr(exc, "message", str(exc))}
        follow_ups[sid] = steps
    return {**result, "followUps": follow_ups}
