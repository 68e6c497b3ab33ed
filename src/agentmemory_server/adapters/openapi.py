"""OpenAPI 3.1 document of every HTTP route, generated from the routes themselves.

Tool routes are described from their registry entry (JSON Schema -> query parameters or JSON
body); adapter routes in app.py (MCP endpoints, the WebSocket, the viewer, this document) by
an ``openapi`` dict their view function carries. The app's own URL map is the list of
operations, so a route cannot exist without being documented (a test checks it too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from agentmemory_server.kernel import registry

ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "415", "503")
# Writes may also meet the rate limit (429 rate_limited, with Retry-After) and a full disk (507).
WRITE_ERROR_STATUSES = ("429", "507")
_PATH_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")

ERROR_SCHEMA = {
    "type": "object",
    "required": ["ok", "error", "code", "status"],
    "properties": {
        "ok": {"const": False},
        "error": {"type": "string", "description": "Human-readable message"},
        "code": {"type": "string", "description": "Stable snake_case code clients may branch on"},
        "status": {"type": "integer"},
        "details": {"type": "object", "description": "e.g. {field} for invalid input"},
    },
}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


# Answered by gunicorn itself, before the app sees the request (no JSON body).
SERVER_LIMITS = {
    "414": "Request line longer than 4094 bytes (the HTTP server's limit)",
    "431": "Request header fields too large (the HTTP server's limit)",
}


def _responses(
    success: Iterable[int], body: dict | None = None, error_body: dict | None = None, *, write: bool = False
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted(set(success)):
        responses[str(status)] = {"description": "Success", "content": _json(body or {"type": "object"})}
    for error_status in ERROR_STATUSES + (WRITE_ERROR_STATUSES if write else ()):
        responses.setdefault(
            error_status,
            {"description": "Error", "content": _json(error_body or {"$ref": "#/components/schemas/Error"})},
        )
    for limit_status, text in SERVER_LIMITS.items():
        responses.setdefault(limit_status, {"description": text})
    return responses


def _query_parameters(schema: dict, skip: set[str]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        if name in skip:
            continue
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if prop.get("description"):
            param["description"] = prop["description"]
        if prop.get("type") == "array":
            param.update(style="form", explode=True)
        params.append(param)
    return params


def _without(schema: dict, names: set[str]) -> dict:
    if not names:
        return schema
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in names}
    out = {**schema, "properties": props}
    required = [r for r in schema.get("required", []) if r not in names]
    if required:
        out["required"] = required
    else:
        out.pop("required", None)
    return out


def tool_operation(tool: registry.Tool, route: registry.Route) -> dict[str, Any]:
    path_names = set(_PATH_PARAM.findall(route.path))
    op: dict[str, Any] = {
        "operationId": f"{tool.name}_{route.method.lower()}",
        "summary": tool.description.split(". ")[0][:120],
        "description": tool.description,
        "tags": ["mcp-tool" if tool.mcp else "rest"],
        "parameters": [
            {
                "name": n,
                "in": "path",
                "required": True,
                "schema": tool.schema.get("properties", {}).get(n, {"type": "string"}),
            }
            for n in sorted(path_names)
        ],
    }
    if route.method == "GET":
        op["parameters"] += _query_parameters(tool.schema, path_names)
    else:
        body = _without(tool.schema, path_names)
        op["requestBody"] = {"required": bool(body.get("required")), "content": _json(body)}
    success = {route.status, 200} | ({201} if route.method == "POST" else set())
    op["responses"] = _responses(success, write=route.method != "GET")
    for media_type in tool.content:  # the same answer in another form (an image, an HTML page)
        schema = {"type": "string", "format": "binary"} if media_type.startswith("image/") else {"type": "string"}
        op["responses"][str(route.status)]["content"][media_type] = {"schema": schema}
    return op


def adapter_operation(endpoint: str, method: str, doc: dict[str, Any], summary: str) -> dict[str, Any]:
    name = re.sub(r"\W+", "_", endpoint).strip("_")
    op: dict[str, Any] = {"operationId": f"{name}_{method.lower()}", "summary": summary, "tags": ["adapter"]}
    if doc.get("request") is not None and method != "GET":
        op["requestBody"] = {"required": True, "content": _json(doc["request"])}
    if doc.get("query"):
        op["parameters"] = _query_parameters(doc["query"], set())
    if doc.get("html"):
        op["responses"] = {
            "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
        }
    else:
        op["responses"] = _responses(
            doc.get("success", (200,)), doc.get("response"), doc.get("error"), write=method != "GET"
        )
    for status, text in doc.get("extra", {}).items():
        op["responses"][str(status)] = {"description": text}
    return op


def build(url_map: Any, view_functions: dict[str, Any], version: str) -> dict[str, Any]:
    """The document for a Flask app's URL map (passed in: this module does not import Flask)."""
    tools = {t.name: t for t in registry.REGISTRY.all()}
    paths: dict[str, dict[str, Any]] = {}
    for rule in url_map.iter_rules():
        path = _PATH_PARAM.sub(r"{\1}", rule.rule)
        tool_name = rule.endpoint.split(":")[0]
        for method in sorted(m for m in rule.methods if m not in ("HEAD", "OPTIONS")):
            if tool_name in tools:
                route = next(
                    r for r in tools[tool_name].routes if r.method == method and "/agentmemory" + r.path == rule.rule
                )
                op = tool_operation(tools[tool_name], route)
            else:
                view = view_functions[rule.endpoint]
                doc = getattr(view, "openapi", {})
                summary = " ".join((view.__doc__ or rule.endpoint).strip().split("\n\n")[0].split())
                op = adapter_operation(rule.endpoint, method, doc.get(method, doc), summary)
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentmemory-python",
            "version": version,
            "description": "Self-hosted memory server for AI coding agents. Every route except "
            "GET /agentmemory/livez needs `Authorization: Bearer <secret>` when "
            "AGENTMEMORY_SECRET is set.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
