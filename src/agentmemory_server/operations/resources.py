"""MCP resources and prompts (U§2.3), served over plain HTTP and by the JSON-RPC endpoint.

Resources are read-only JSON views addressed by ``agentmemory://`` URIs; prompts are canned
user messages filled with what the server remembers. Both call the tools they are built from
(imported, through ``registry.run``), so agent scoping, validation and privacy behave exactly as
for a direct tool call. Listing, reading and rendering are tools too, so REST, JSON-RPC and the
stdio proxy all reach them through the registry. The team profile answers 501
``feature_unavailable``: this server has no team feature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from agentmemory_server import errors
from agentmemory_server.capture import observe, sessions
from agentmemory_server.errors import AppError, InvalidInput, NotFound
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.registry import Ctx, obj, params, string, tool
from agentmemory_server.memory import memories, patterns, profiles
from agentmemory_server.models import graph
from agentmemory_server.operations import health
from agentmemory_server.retrieval import recall

JSON_MIME = "application/json"
RECENT_SESSIONS = 5
LATEST_MEMORIES = 10
HANDOFF_OBSERVATIONS = 20


def unavailable(feature: str) -> AppError:
    """What a resource or prompt answers when this server has no such feature."""
    return AppError(f"{feature} is not available on this server", code=errors.FEATURE_UNAVAILABLE, status=501)


# -- resources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    uri: str  # a fixed URI, or a template with {placeholders}
    name: str
    description: str
    read: Callable[[Ctx, dict[str, str]], Any]

    @property
    def templated(self) -> bool:
        return "{" in self.uri

    def match(self, uri: str) -> dict[str, str] | None:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.uri))
        found = re.fullmatch(pattern, uri)
        return None if found is None else {k: decode_segment(v) for k, v in found.groupdict().items()}


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decode_segment(text: str) -> str:
    """Percent-decode one URI segment; malformed escapes or invalid UTF-8 are bad input."""
    if _BAD_ESCAPE.search(text):
        raise InvalidInput(f"malformed percent-encoding in {text!r}", field="uri")
    try:
        value = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise InvalidInput(f"percent-encoding in {text!r} is not valid UTF-8", field="uri") from None
    if not value.strip():
        raise InvalidInput("an empty name in the resource URI", field="uri")
    return value


def _status(ctx: Ctx, _vars: dict[str, str]) -> dict[str, Any]:
    counts = health.record_counts(ctx)  # only the caller's records in isolated agent scope
    return {
        "sessionCount": counts["sessions"],
        "memoryCount": counts["memories"],
        "observationCount": counts["observations"],
        "healthStatus": registry.run(health.health, ctx, {})["status"],
        "version": ctx.rt.version,
    }


def _latest_memories(ctx: Ctx, _vars: dict[str, str]) -> dict[str, Any]:
    page = registry.run(memories.memories_list, ctx, {"latest": True, "limit": LATEST_MEMORIES})
    keep = ("id", "title", "type", "strength", "project", "updatedAt")
    return {"memories": [{k: m.get(k) for k in keep} for m in page["memories"]]}


def _project_recent(ctx: Ctx, vars_: dict[str, str]) -> dict[str, Any]:
    page = registry.run(sessions.memory_sessions, ctx, {"project": vars_["name"], "limit": RECENT_SESSIONS})
    found = page["sessions"]
    return {
        "project": vars_["name"],
        "summaries": [s["summary"] for s in found if s.get("summary")],
        "sessions": [
            {k: s.get(k) for k in ("id", "title", "status", "startedAt", "endedAt", "observationCount", "firstPrompt")}
            for s in found
        ],
    }


def _project_profile(ctx: Ctx, vars_: dict[str, str]) -> Any:
    return registry.run(profiles.memory_profile, ctx, {"project": vars_["name"]})


def _graph_stats(ctx: Ctx, _vars: dict[str, str]) -> Any:
    return registry.run(graph.graph_stats, ctx, {})


def _team_profile(ctx: Ctx, vars_: dict[str, str]) -> Any:
    raise unavailable("team memory")


RESOURCES: tuple[Resource, ...] = (
    Resource("agentmemory://status", "status", "Session and memory counts and the health status.", _status),
    Resource(
        "agentmemory://memories/latest",
        "latest-memories",
        f"The {LATEST_MEMORIES} most recently updated latest-version memories.",
        _latest_memories,
    ),
    Resource("agentmemory://graph/stats", "graph-stats", "Knowledge-graph node and edge counts.", _graph_stats),
    Resource(
        "agentmemory://project/{name}/profile",
        "project-profile",
        "A project's profile: top concepts, files and conventions.",
        _project_profile,
    ),
    Resource(
        "agentmemory://project/{name}/recent",
        "project-recent",
        f"A project's {RECENT_SESSIONS} most recent sessions and their summaries.",
        _project_recent,
    ),
    Resource("agentmemory://team/{id}/profile", "team-profile", "Items shared with a team.", _team_profile),
)


def resource_listing() -> dict[str, list[dict[str, Any]]]:
    """Every resource (upstream lists templates among them) plus MCP-style templates."""
    resources = [{"uri": r.uri, "name": r.name, "description": r.description, "mimeType": JSON_MIME} for r in RESOURCES]
    templates = [
        {"uriTemplate": r.uri, "name": r.name, "description": r.description, "mimeType": JSON_MIME}
        for r in RESOURCES
        if r.templated
    ]
    return {"resources": resources, "resourceTemplates": templates}


def read_resource(ctx: Ctx, uri: str) -> dict[str, Any]:
    for resource in RESOURCES:
        found = resource.match(uri)
        if found is not None:
            data = resource.read(ctx, found)
            text = json.dumps(data, indent=2, ensure_ascii=False)
            return {"contents": [{"uri": uri, "mimeType": JSON_MIME, "text": text}]}
    raise NotFound(f"unknown resource {uri!r}", code=errors.RESOURCE_NOT_FOUND, details={"uri": uri})


@tool("mcp_resources", params(), http=[("GET", "/mcp/resources")], mcp=False)
def mcp_resources(ctx: Ctx, args: dict) -> dict:
    """List MCP resources (agentmemory:// URIs) and resource templates."""
    return resource_listing()


@tool(
    "mcp_resource_read",
    params(["uri"], uri=string("Resource URI", max_length=2048)),
    http=[("POST", "/mcp/resources/read")],
    mcp=False,
    right="read",
)
def mcp_resource_read(ctx: Ctx, args: dict) -> dict:
    """Read an MCP resource: {uri} -> {contents:[{uri, mimeType, text}]}."""
    return read_resource(ctx, args["uri"])


# -- prompts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    name: str
    description: str
    arguments: tuple[tuple[str, str, bool], ...]  # (name, description, required)
    render: Callable[[Ctx, dict[str, str]], str]


def _recall_context(ctx: Ctx, args: dict[str, str]) -> str:
    task = args["task_description"]
    found = registry.run(recall.memory_recall, ctx, {"query": task, "limit": 10, "format": "compact"})
    latest = _latest_memories(ctx, {})["memories"][:5]
    return (
        f"Context from agentmemory for the task: {task}\n\n"
        f"## Matching observations and memories ({found['mode']})\n"
        f"{json.dumps(found['results'], indent=2, ensure_ascii=False)}\n\n"
        f"## Latest memories\n{json.dumps(latest, indent=2, ensure_ascii=False)}\n\n"
        "Use what is relevant; say so when the memory contradicts the task."
    )


def _session_handoff(ctx: Ctx, args: dict[str, str]) -> str:
    sid = args["session_id"]
    session = registry.run(sessions.session_get, ctx, {"sessionId": sid})["session"]
    total = registry.run(observe.memory_observations, ctx, {"sessionId": sid, "limit": 1})["total"]
    tail = registry.run(
        observe.memory_observations,
        ctx,
        {"sessionId": sid, "limit": HANDOFF_OBSERVATIONS, "offset": max(0, total - HANDOFF_OBSERVATIONS)},
    )
    steps = [{k: o.get(k) for k in ("timestamp", "type", "title", "files")} for o in tail["observations"]]
    return (
        f"Hand-off of session {sid}. Continue the work where it stopped.\n\n"
        f"## Session\n{json.dumps(session, indent=2, ensure_ascii=False)}\n\n"
        f"## Last {len(steps)} of {total} observations\n"
        f"{json.dumps(steps, indent=2, ensure_ascii=False)}"
    )


def _detect_patterns(ctx: Ctx, args: dict[str, str]) -> str:
    query = {"project": args["project"]} if args.get("project") else {}
    found = registry.run(patterns.patterns, ctx, query)
    return (
        "Recurring patterns agentmemory found"
        + (f" in {args['project']}" if query else "")
        + ". Point out the ones worth turning into lessons or rules.\n\n"
        + json.dumps(found, indent=2, ensure_ascii=False)
    )


PROMPTS: tuple[Prompt, ...] = (
    Prompt(
        "recall_context",
        "Relevant past observations and the latest memories for a task.",
        (("task_description", "What you are about to work on", True),),
        _recall_context,
    ),
    Prompt(
        "session_handoff",
        "A session's record, summary and last steps, to continue its work.",
        (("session_id", "The session to hand off", True),),
        _session_handoff,
    ),
    Prompt(
        "detect_patterns",
        "Recurring patterns across sessions, optionally for one project.",
        (("project", "Limit to this project", False),),
        _detect_patterns,
    ),
)


def prompt_listing() -> dict[str, list[dict[str, Any]]]:
    return {
        "prompts": [
            {
                "name": p.name,
                "description": p.description,
                "arguments": [{"name": n, "description": d, "required": r} for n, d, r in p.arguments],
            }
            for p in PROMPTS
        ]
    }


def get_prompt(ctx: Ctx, name: str, arguments: Any) -> dict[str, Any]:
    prompt = next((p for p in PROMPTS if p.name == name), None)
    if prompt is None:
        raise NotFound(f"unknown prompt {name!r}", code=errors.PROMPT_NOT_FOUND, details={"name": name})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise InvalidInput("'arguments' must be an object of strings", field="arguments")
    args: dict[str, str] = {}
    for arg_name, _desc, required in prompt.arguments:
        value = arguments.get(arg_name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise InvalidInput(f"missing required argument '{arg_name}'", field=arg_name)
            continue
        if not isinstance(value, str):
            raise InvalidInput(f"argument '{arg_name}' must be a string", field=arg_name)
        args[arg_name] = value.strip()
    return {
        "description": prompt.description,
        "messages": [{"role": "user", "content": {"type": "text", "text": prompt.render(ctx, args)}}],
    }


@tool("mcp_prompts", params(), http=[("GET", "/mcp/prompts")], mcp=False)
def mcp_prompts(ctx: Ctx, args: dict) -> dict:
    """List MCP prompts with their arguments."""
    return prompt_listing()


@tool(
    "mcp_prompt_get",
    params(["name"], name=string("Prompt name", max_length=128), arguments=obj("Prompt arguments (strings)")),
    http=[("POST", "/mcp/prompts/get")],
    mcp=False,
    right="read",
)
def mcp_prompt_get(ctx: Ctx, args: dict) -> dict:
    """Render an MCP prompt: {name, arguments} -> {messages:[{role, content:{type, text}}]}."""
    return get_prompt(ctx, args["name"], args.get("arguments"))
