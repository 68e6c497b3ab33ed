"""Small pure helpers shared by the domain modules: ids, time, text, similarity."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agentmemory_server.errors import AppError

# -- ids ----------------------------------------------------------------------------------------

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


def new_id(prefix: str) -> str:
    """``<prefix>_<ms timestamp base36>_<12 hex>``: sortable by creation time, unique."""
    return f"{prefix}_{_base36(int(time.time() * 1000))}_{uuid.uuid4().hex[:12]}"


def fingerprint_id(prefix: str, text: str) -> str:
    """Content-derived id: ``<prefix>_<16 hex of sha256(lower(trim(text)))>``."""
    return f"{prefix}_{hashlib.sha256(text.strip().lower().encode('utf-8')).hexdigest()[:16]}"


# -- time ---------------------------------------------------------------------------------------


class Clock:
    """Wall clock, injectable so tests can move time (lesson decay, TTLs)."""

    def __init__(self, fixed: Callable[[], float] | None = None):
        self._source = fixed or time.time

    def time(self) -> float:
        return self._source()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._source(), tz=UTC)

    def iso(self) -> str:
        return iso(self.now())


def iso(dt: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a Z, like upstream's Date.toISOString()."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime | None:
    """Parse an ISO-8601 timestamp (Z or offset; date only allowed); None if it is not one."""
    if not isinstance(text, str) or not text:
        return None
    candidate = text.strip()
    if candidate.endswith("Z") or candidate.endswith("z"):
        candidate = candidate[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def normalise_time(text: str | None, clock: Clock) -> str:
    """A client timestamp in our canonical form; the server time when absent or unparseable."""
    dt = parse_time(text) if text else None
    return iso(dt) if dt else clock.iso()


# -- text ---------------------------------------------------------------------------------------


def truncate(text: str, limit: int) -> str:
    """Keep at most ``limit`` characters; a cut keeps limit-1 and appends an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    if cut and "\ud800" <= cut[-1] <= "\udbff":
        cut = cut[:-1]
    return cut + "…"


def cut_with_marker(text: str, limit: int, marker: str) -> str:
    """``text`` cut so that it ends with ``marker`` and is at most ``limit`` characters."""
    return marker[:limit] if limit <= len(marker) else text[: limit - len(marker)] + marker


def cut_text(text: str, limit: int, already: int = 0) -> tuple[str, int]:
    """``text`` within ``limit`` characters, ending with a marker saying how much was cut (and
    which setting to raise); returns the text and the number of characters removed. ``already``:
    characters removed from the end of ``text`` before (counted in the marker too)."""
    if len(text) <= limit:
        return text, 0
    cut = len(text) - limit + already
    marker = f"\n[...truncated {cut} characters: AGENTMEMORY_MAX_FIELD_CHARS]"
    return cut_with_marker(text, limit, marker), cut


def stringify(value: Any) -> str:
    """Text form of a hook field: strings as they are, everything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        return str(value)


# The fields of a tool's output object that hold its text (Bash's stdout and stderr, an MCP
# tool's result, a search's matched lines, what Gemini CLI's tools hand their model), in the
# order they are read.
TOOL_TEXT_KEYS = ("stdout", "stderr", "output", "content", "llmContent", "result", "text", "error", "message")


def tool_output_text(output: Any, *, as_json: bool = True) -> str:
    """The text of a tool's output: a string, the text fields of an object (a read file's
    content, under ``file``; MCP's and a subagent's content blocks, ``[{type, text}]``), the lines
    of a list. An object with none of them is its compact JSON, or "" with ``as_json=False`` (an
    edit's answer echoes the whole file: nothing to read there)."""
    if isinstance(output, dict):
        parts = [output.get(k) for k in TOOL_TEXT_KEYS]
        parts = [tool_output_text(p, as_json=False) if isinstance(p, list) else p for p in parts]
        text = "\n".join(str(p) for p in parts if isinstance(p, str) and p)
        if not text and isinstance(output.get("file"), dict):  # Claude Code's Read: {type, file: {content}}
            file = output["file"]
            text = file["content"] if isinstance(file.get("content"), str) else ""
        return text or (stringify(output) if as_json else "")
    if isinstance(output, list):
        return "\n".join(tool_output_text(o, as_json=as_json) for o in output)
    return stringify(output)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 3)


def clean_text(value: str) -> str:
    """Replace lone surrogates (which UTF-8 cannot carry) and NUL bytes."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


# How deep a request's JSON may nest. The JSON parser itself goes to about 1,000 levels, but the
# code that walks a value afterwards (this cleaning, the capture filters, the storage encoders)
# recurses too, and a few hundred levels already overflowed Python's stack there (a 500). No real
# hook payload or tool argument comes near 100.
MAX_JSON_DEPTH = 100
# The levels an export document (and the JSON-RPC envelope of a tool call) wraps around a stored
# value: an observation kept at the limit must still import again.
WRAPPING_DEPTH = 16


class UnstorableJson(ValueError):
    """A decoded JSON value we cannot keep: nested deeper than ``MAX_JSON_DEPTH``, or a number
    JSON cannot write back (``1e400`` decodes to infinity). ``path`` is where, as keys and indexes
    from the top."""

    def __init__(self, problem: str, path: tuple[str | int, ...] = ()):
        super().__init__(problem)
        self.problem = problem
        self.path = path

    @property
    def field(self) -> str:
        """The path as ``data.tool_input.n``; a long one (the nesting case) keeps its first steps."""
        if len(self.path) <= 8:
            return ".".join(str(p) for p in self.path)
        return ".".join(str(p) for p in self.path[:4]) + "..."


def clean_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Apply ``clean_text`` to every string (keys too) of a decoded JSON value; raise
    ``UnstorableJson`` for one nested too deeply or holding a number out of JSON's range."""
    try:
        return _clean(value, 0, max_depth)
    except UnstorableJson as exc:
        # the walk stays plain comprehensions; where the problem is gets found by one more walk
        raise UnstorableJson(exc.problem, _problem_path(value, 0, max_depth) or ()) from None


def _clean(value: Any, depth: int, max_depth: int) -> Any:
    # Every hook event's body passes here: each check is made only where it can fail (the depth
    # on a list or an object, finiteness on a float), so a string costs one isinstance.
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        if depth >= max_depth:
            raise UnstorableJson(_problem(value, depth, max_depth))
        return [_clean(v, depth + 1, max_depth) for v in value]
    if isinstance(value, dict):
        if depth >= max_depth:
            raise UnstorableJson(_problem(value, depth, max_depth))
        return {clean_text(str(k)): _clean(v, depth + 1, max_depth) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise UnstorableJson(_problem(value, depth, max_depth))
    return value


def _problem(value: Any, depth: int, max_depth: int) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "is a number out of range (it overflows to infinity)"
    if isinstance(value, (list, dict)) and depth >= max_depth:
        return f"is nested deeper than {max_depth} levels"
    return ""


def _problem_path(value: Any, depth: int, max_depth: int) -> tuple[str | int, ...] | None:
    """The keys and indexes to the first unstorable part of ``value``, or None."""
    if _problem(value, depth, max_depth):
        return ()
    items = enumerate(value) if isinstance(value, list) else value.items() if isinstance(value, dict) else ()
    for key, item in items:
        found = _problem_path(item, depth + 1, max_depth)
        if found is not None:
            return (key, *found)
    return None


def reject_json_constant(name: str) -> Any:
    """``json.loads``'s ``parse_constant``: NaN and Infinity are not JSON, whatever Python allows."""
    raise ValueError(f"{name} is not valid JSON")


def loads_clean(text: str) -> Any:
    """JSON text found inside a request (a tool's arguments sent as a string, an object-typed
    argument given as text) decoded as strictly as the body was: no NaN/Infinity, bounded
    nesting, NULs and lone surrogates cleaned. Raises ``ValueError`` (``UnstorableJson`` among
    them) when the text cannot be kept as a value, so callers keep it as text or refuse it."""
    try:
        value = json.loads(text, parse_constant=reject_json_constant)
    except RecursionError:
        raise UnstorableJson("is nested too deeply") from None
    return clean_json(value)


def as_list(value: Any) -> list:
    """A list from a list, a comma-separated string, a single value or None."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [value]


def page_info(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    """The paging fields of a listing: total, offset, limit and whether more rows follow."""
    return {"total": total, "offset": offset, "limit": limit, "hasMore": offset + len(items) < total}


class WorkerFailures:
    """How a background worker logs a failed round. A known condition (an ``AppError``: disk
    full, read-only storage, a damaged database) repeats every round until someone acts, so it
    is one warning line per ``every`` seconds; anything else is a bug and keeps its traceback."""

    def __init__(self, logger: logging.Logger, what: str, every: float = 60.0):
        self.log, self.what, self.every = logger, what, every
        self._last = float("-inf")
        self._quiet = 0

    def failed(self, exc: BaseException) -> None:
        if not isinstance(exc, AppError):
            self.log.exception("%s failed", self.what, exc_info=exc)
            return
        now = time.monotonic()
        if now - self._last < self.every:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last message)" if self._quiet else ""
        self.log.warning("%s: %s%s", self.what, exc.message, more)
        self._last, self._quiet = now, 0


def process_alive(pid: int) -> bool:
    """Is there a process ``pid`` (ours or another user's)? Not for 0 or negative ids, which
    ``kill`` reads as process groups."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
