"""MCP resources and prompts (U§2.3), served over plain HTTP and by the JSON-RPC endpoint.

Resources are read-only JSON views addressed by ``agentmemory://`` URIs; prompts are canned
user messages filled with what the server remembers. Both are built from the registry's tools,
so agent scoping, validation and privacy behave exactly as for a direct tool call. A resource
or prompt backed by a feature that another module provides (profile, graph, team, patterns)
looks that feature up by its REST route and answers a clear ``feature_unavailable`` error
until the module is installed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from agentmemory_server.errors import AppError, InvalidInput, NotFound
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.registry import Ctx, obj, params, string, tool

JSON_MIME = "application/json"
RECENT_SESSIONS = 5
LATEST_MEMORIES = 10
HANDOFF_OBSERVATIONS = 20


def run_tool(ctx: Ctx, name: str, args: dict[str, Any]) -> Any:
    data, _status = registry.unwrap(registry.call(ctx, name, args))
    return data


def run_route(ctx: Ctx, method: str, path: str, args: dict[str, Any], feature: str) -> Any:
    """Call whichever tool serves ``method path``; 501 when no installed module provides it."""
    found = registry.REGISTRY.for_route(method, path)
    if found is None:
        raise AppError(
            f"{feature} is not available on this server (no tool serves {method} /agentmemory{path})",
            code="feature_unavailable",
            status=501,
        )
    return run_tool(ctx, found.name, args)


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
    store = ctx.rt.db.reader()
    health = run_tool(ctx, "health", {})
    return {
        "sessionCount": store.records.count("mem:sessions"),
        "memoryCount": store.records.count("mem:memories"),
        "observationCount": health.get("counts", {}).get("observations", 0),
        "healthStatus": health.get("status"),
        "version": ctx.rt.version,
    }


def _latest_memories(ctx: Ctx, _vars: dict[str, str]) -> dict[str, Any]:
    page = run_tool(ctx, "memories_list", {"latest": True, "limit": LATEST_MEMORIES})
    keep = ("id", "title", "type", "strength", "project", "updatedAt")
    return {"memories": [{k: m.get(k) for k in keep} for m in page["memories"]]}


def _project_recent(ctx: Ctx, vars_: dict[str, str]) -> dict[str, Any]:
    page = run_tool(ctx, "memory_sessions", {"project": vars_["name"], "limit": RECENT_SESSIONS})
    sessions = page["sessions"]
    return {
        "project": vars_["name"],
        "summaries": [s["summary"] for s in sessions if s.get("summary")],
        "sessions": [
            {k: s.get(k) for k in ("id", "title", "status", "startedAt", "endedAt", "observationCount", "firstPrompt")}
            for s in sessions
        ],
    }


def _project_profile(ctx: Ctx, vars_: dict[str, str]) -> Any:
    return run_route(ctx, "GET", "/profile", {"project": vars_["name"]}, "the project profile")


def _graph_stats(ctx: Ctx, _vars: dict[str, str]) -> Any:
    return run_route(ctx, "GET", "/graph/stats", {}, "the knowledge graph")


def _team_profile(ctx: Ctx, vars_: dict[str, str]) -> Any:
    return run_route(ctx, "GET", "/team/profile", {"teamId": vars_["id"]}, "team memory")


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
    raise NotFound(f"unknown resource {uri!r}", code="resource_not_found", details={"uri": uri})


@tool("mcp_resources", params(), http=[("GET", "/mcp/resources")], mcp=False)
def mcp_resources(ctx: Ctx, args: dict) -> dict:
    """List MCP resources (agentmemory:// URIs) and resource templates."""
    return resource_listing()


@tool(
    "mcp_resource_read",
    params(["uri"], uri=string("Resource URI", max_length=2048)),
    http=[("POST", "/mcp/resources/read")],
    mcp=False,
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
    found = run_tool(ctx, "memory_recall", {"query": task, "limit": 10, "format": "compact"})
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
    session = run_tool(ctx, "session_get", {"sessionId": sid})["session"]
    total = run_tool(ctx, "memory_observations", {"sessionId": sid, "limit": 1})["total"]
    tail = run_tool(
        ctx,
        "memory_observations",
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
    found = run_route(ctx, "POST", "/patterns", query, "pattern detection")
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
        raise NotFound(f"unknown prompt {name!r}", code="prompt_not_found", details={"name": name})
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
)
def mcp_prompt_get(ctx: Ctx, args: dict) -> dict:
    """Render an MCP prompt: {name, arguments} -> {messages:[{role, content:{type, text}}]}."""
    return get_prompt(ctx, args["name"], args.get("arguments"))
