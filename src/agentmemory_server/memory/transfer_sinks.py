"""Where an export document goes, piece by piece: the sinks ``transfer.write_export`` writes to.

The export is written once, by one writer, as a stream of containers opening and closing and
values going into them; a sink decides what that becomes: Python objects for ``GET /export``
(``TreeSink``, with its size limit), JSON text streamed to a file (``JsonTextSink``), or JSON
Lines, one importable record a line between a header and an end line (``JsonLinesSink``). Kept
apart from ``transfer.py`` because none of them knows what an export holds, only its shape.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, TextIO

from agentmemory_server import errors
from agentmemory_server.errors import AppError
from agentmemory_server.storage import codec


class Sink(Protocol):
    """Where an export goes, piece by piece: containers open and close, values go in them."""

    def open(self, bracket: str, key: str | None = None) -> None: ...
    def close(self, bracket: str) -> None: ...
    def value(self, value: Any, key: str | None = None) -> None: ...


class TreeSink:
    """Builds the export as Python objects (GET /export answers it as one JSON body). With
    ``limit_bytes``, a document growing past it stops with 413 ``export_too_large`` (upstream
    0.9.30's ``{oversized, bytes, limitBytes, stoppedAt}``) before it fills the memory."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        self._stack: list[tuple[Any, str | None]] = []
        self.result: Any = None
        self.limit, self.bytes = limit_bytes, 0

    def open(self, bracket: str, key: str | None = None) -> None:
        self._stack.append(([] if bracket == "[" else {}, key))

    def close(self, bracket: str) -> None:
        container, key = self._stack.pop()
        self._put(container, key)

    def value(self, value: Any, key: str | None = None) -> None:
        if self.limit is not None:
            self.bytes += len(json.dumps(value, separators=(",", ":"), default=str)) + len(key or "") + 4
            if self.bytes > self.limit:
                self._too_large(key)
        self._put(value, key)

    def _too_large(self, key: str | None) -> None:
        where = ".".join(k for k in [*(k for _, k in self._stack), key] if k)
        raise AppError(
            f"the export would be larger than {self.limit} bytes (it stopped at {where}); page it with "
            "maxSessions and offset, raise AGENTMEMORY_MAX_EXPORT_BYTES, or stream it with `agentmemory export`",
            code=errors.EXPORT_TOO_LARGE,
            status=413,
            details={
                "oversized": True,
                "bytes": self.bytes,
                "limitBytes": self.limit,
                "stoppedAt": where,
                "setting": "AGENTMEMORY_MAX_EXPORT_BYTES",
            },
        )

    def _put(self, value: Any, key: str | None) -> None:
        if not self._stack:
            self.result = value
        elif key is None:
            self._stack[-1][0].append(value)
        else:
            self._stack[-1][0][key] = value


class JsonTextSink:
    """Writes the export as JSON text as it is produced, so a big store is never in memory at
    once (the admin CLI's export)."""

    def __init__(self, out: TextIO):
        self.out = out
        self._first = [True]

    def _separate(self, key: str | None) -> None:
        if not self._first[-1]:
            self.out.write(",")
        self._first[-1] = False
        if key is not None:
            self.out.write(json.dumps(key) + ":")

    def open(self, bracket: str, key: str | None = None) -> None:
        self._separate(key)
        self.out.write(bracket)
        self._first.append(True)

    def close(self, bracket: str) -> None:
        self._first.pop()
        self.out.write("]" if bracket == "[" else "}")

    def value(self, value: Any, key: str | None = None) -> None:
        self._separate(key)
        self.out.write(codec.dumps(value))


# The header field saying a JSON Lines export ends with its end line, and that line's one key.
END_MARKER, END_KEY = "endMarker", "end"


class JsonLinesSink:
    """Writes the export as JSON Lines: a header line (``version``, ``service``, ``exportedAt``,
    ``endMarker: true``), then one line per record, each a small export document of its own
    (``{"memories": [m]}``, ``{"observations": {"ses_1": [o]}}``, ``{"kv": {scope: {key:
    value}}}``), then the end line ``{"end": {"lines": N}}`` (N record lines). Any record line
    imports on its own, so a bulk load streams in constant memory (``agentmemory import
    FILE.jsonl``); the end line tells a whole file from one cut off at a line's end."""

    def __init__(self, out: TextIO):
        self.out = out
        self._path: list[tuple[str, str | None]] = []  # open containers below the root
        self._header: dict[str, Any] | None = {}
        self._depth = 0
        self.lines = 0

    def open(self, bracket: str, key: str | None = None) -> None:
        self._depth += 1
        if self._depth > 1:
            self._flush_header()
            self._path.append((bracket, key))

    def close(self, bracket: str) -> None:
        self._depth -= 1
        if self._path and self._depth >= 1:
            self._path.pop()
        if self._depth == 0:  # the document is complete: say so, last
            self._flush_header()
            self.out.write(json.dumps({END_KEY: {"lines": self.lines}}) + "\n")

    def value(self, value: Any, key: str | None = None) -> None:
        if not self._path:  # a scalar of the root: header fields; pagination means nothing here
            if self._header is not None and key is not None:
                self._header[key] = value
            return
        bracket, _ = self._path[-1]
        line: Any = [value] if bracket == "[" else {key: value}
        for (_bracket, name), (parent, _) in zip(
            reversed(self._path), reversed([("{", None), *self._path[:-1]]), strict=True
        ):
            line = {name: line} if parent == "{" else [line]
        self.out.write(codec.dumps(line) + "\n")
        self.lines += 1

    def _flush_header(self) -> None:
        if self._header is not None:
            self.out.write(json.dumps({**self._header, END_MARKER: True}) + "\n")
            self._header = None
