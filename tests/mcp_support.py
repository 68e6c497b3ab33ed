"""Helpers for the MCP tests: argument generation from JSON Schemas, a seeded data set, a
line-delimited JSON-RPC client for stdio servers, and the npm package cache the Node-based
tests use (upstream's MCP shim and hook scripts, the MCP Inspector CLI)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest

from conftest import ROOT, hook, post

# -- arguments from schemas --------------------------------------------------------------------------

# A tool failing on generated arguments is acceptable only as "this id does not exist".
EXPECTED_ERROR_STATUSES = {404}
DESTRUCTIVE_WORDS = ("forget", "delete", "clear", "evict")


def seed(post_json: Callable[[str, dict], tuple[int, Any]]) -> dict[str, Any]:
    """Create a session with an observation and a memory; return argument values naming them.

    ``post_json(path, body) -> (status, json)`` posts to ``/agentmemory{path}``. Keys of the
    result are argument names: a generated call uses a seed whenever the tool's schema has that
    property, so ids that must exist do exist.
    """
    status, body = post_json("/observe", hook("mcp-seed", data={
        "tool_name": "Edit", "tool_input": {"file_path": "src/auth.py"}, "tool_output": "fixed the pytest fixture"}))
    assert status == 201, body
    obs_id = body["observationId"]
    status, body = post_json("/remember", {"content": "pytest fixtures live in conftest.py", "project": "demo",
                                           "sessionId": "mcp-seed"})
    assert status == 201, body
    memory_id = body["memory"]["id"]
    return {"sessionId": "mcp-seed", "session_id": "mcp-seed", "memoryId": memory_id, "memoryIds": [memory_id],
            "observationIds": [obs_id], "project": "demo", "query": "pytest fixture",
            "content": "seeded content about pytest fixtures", "task_description": "fix pytest",
            "anchor": "2026-11-01T10:00:00.000Z", "text": "more notes",
            # Arguments some operations need although the schema cannot say so (working memory).
            "key": "mcp-seed-key", "value": "seed value", "taskId": "mcp-seed-task",
            "description": "seeded description"}


def live_poster(server: Any, headers: dict[str, str] | None = None) -> Callable[[str, dict], tuple[int, Any]]:
    def post_json(path: str, body: dict) -> tuple[int, Any]:
        r = post(server.api(path), body, headers=headers or {})
        return r.status_code, r.json()

    return post_json


def client_poster(client: Any) -> Callable[[str, dict], tuple[int, Any]]:
    def post_json(path: str, body: dict) -> tuple[int, Any]:
        r = client.post(f"/agentmemory{path}", json=body)
        return r.status_code, r.get_json()

    return post_json


def check_result(name: str, text: str, problems: list[str]) -> None:
    """Record a problem unless ``text`` is a success or an expected not-found error."""
    error = tool_error(text)
    if error is not None and error.get("status") not in EXPECTED_ERROR_STATUSES:
        problems.append(f"{name}: {error.get('status')} {error.get('code')}: {error.get('error')}")


def _main_type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind


def sample_value(schema: dict[str, Any]) -> Any:
    """A small value that satisfies ``schema`` (enums, bounds, patterns and array sizes)."""
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = _main_type(schema)
    if kind == "integer":
        return max(schema.get("minimum", 1), min(1, schema.get("maximum", 1)))
    if kind == "number":
        return max(schema.get("minimum", 0.5), min(0.5, schema.get("maximum", 0.5)))
    if kind == "boolean":
        return False
    if kind == "array":
        return [sample_value(schema.get("items", {})) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "object":
        return {}
    for candidate in ("sample-value-1", "sample_value_0001", "x" * max(1, schema.get("minLength", 1))):
        if not list(jsonschema.Draft202012Validator(schema).iter_errors(candidate)):
            return candidate
    return "sample"


def sample_args(schema: dict[str, Any], seeds: dict[str, Any]) -> dict[str, Any]:
    """Required properties plus every property with a seeded value."""
    props = schema.get("properties", {})
    args = {name: seeds[name] for name in props if name in seeds}
    for name in schema.get("required", []):
        if name not in args:
            args[name] = sample_value(props.get(name, {}))
    return args


def call_order(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools that delete data run last so the seeds exist for everything else."""
    return sorted(tools, key=lambda t: any(w in t["name"] for w in DESTRUCTIVE_WORDS))


def tool_error(text: str) -> dict[str, Any] | None:
    """The error envelope carried by a tool result's text, or None for a success."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.get("ok") is False and "code" in body else None


# -- a line-delimited JSON-RPC peer over a child's stdio -------------------------------------------------


class StdioPeer:
    """Talk newline-delimited JSON-RPC to a child process; stderr is collected for assertions."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._next_id = 0
        self._readers = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self._send({"jsonrpc": "2.0", "method": method, **({"params": params} if params else {})})

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict:
        self._next_id += 1
        rid = self._next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no answer to {method} within {timeout}s; stderr: "
                                     f"{''.join(self.stderr)[-2000:]}") from None
            message = json.loads(line)
            if message.get("id") == rid:
                return message

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream and not stream.closed:
                stream.close()


# -- npm packages ---------------------------------------------------------------------------------------------

NODE_PACKAGES = (ROOT / "tests" / "node-packages.txt").read_text().split()


def node_cache_dir() -> Path:
    """Where tests/run.sh installs the npm packages (outside the repository)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentmemory-python" / "node"
    return Path(os.environ.get("AGENTMEMORY_TEST_NODE_CACHE") or default)


def node_modules() -> Path:
    """The installed npm packages; installs them when missing. Without node/npm the test fails."""
    missing = [name for name in ("node", "npm") if shutil.which(name) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install Node.js 18 or newer with npm (for example "
                    "`apt-get install nodejs npm`); the upstream shim, hook-script, Inspector and OpenCode tests "
                    "run them")
    cache = node_cache_dir()
    marker = cache / "node_modules" / ".agentmemory-packages"
    if not marker.exists() or marker.read_text().split() != NODE_PACKAGES:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix",
                        str(cache), *NODE_PACKAGES], check=True, timeout=600, stdout=subprocess.DEVNULL)
        marker.write_text("\n".join(NODE_PACKAGES) + "\n")
    return cache / "node_modules"
