"""Security contract: auth on every route, origins and CORS, secrets out of logs, field limits."""

import json
import re

import pytest
import requests

from agentmemory_server.kernel import registry
from agentmemory_server.adapters.web import create_app
from conftest import hook, post

SECRET = "sekret-token-0123456789abcdef"
# Routes that answer without a token, and why.
OPEN_ROUTES = {
    "/agentmemory/livez": "liveness probe for load balancers and the MCP shim",
}


@pytest.fixture
def secured(make_runtime):
    rt = make_runtime(secret=SECRET)
    return create_app(runtime=rt)


def _routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            path = re.sub(r"<(?:\w+:)?(\w+)>", "x", rule.rule)
            yield method, path, rule.rule


def test_every_route_needs_the_token(secured):
    client = secured.test_client()
    checked = 0
    for method, path, rule in _routes(secured):
        open_route = rule in OPEN_ROUTES or getattr(secured.view_functions.get(rule), "public", False)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET},
                        {"Authorization": f"Basic {SECRET}"}):
            r = client.open(path, method=method, headers=headers, data="{}", content_type="application/json")
            if open_route:
                assert r.status_code != 401, (method, path)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code)
                # /mcp answers in JSON-RPC (what MCP clients parse); every other route in our envelope.
                err = r.json["error"] if path == "/mcp" else r.json
                assert "unauthorized" in json.dumps(err), (path, r.json)
        r = client.open(path, method=method, headers={"Authorization": f"Bearer {SECRET}"}, data="{}",
                        content_type="application/json")
        assert r.status_code != 401, (method, path)
        checked += 1
    assert checked >= 80


def test_public_routes_are_only_the_listed_ones(secured):
    client = secured.test_client()
    public = {path for method, path, _rule in _routes(secured)
              if method == "GET" and client.get(path).status_code != 401}
    assert public <= set(OPEN_ROUTES) | {"/viewer", "/agentmemory/viewer"}


def test_origins_closed_by_default(client):
    r = client.post("/agentmemory/observe", json=hook(), headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json["code"] == "origin_not_allowed"
    r = client.get("/agentmemory/sessions", headers={"Origin": "http://localhost:9999"})
    assert r.status_code == 403  # another local web app (other port) is not trusted either
    r = client.get("/agentmemory/sessions", headers={"Origin": "http://localhost"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    r = client.options("/agentmemory/observe", headers={"Origin": "https://evil.example",
                                                        "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403
    assert client.get("/agentmemory/sessions").status_code == 200  # no Origin: not a browser


def test_allowed_origins_open_cors(make_runtime):
    app = create_app(runtime=make_runtime(viewer_allowed_origins="https://dash.example, https://b.example"))
    client = app.test_client()
    pre = client.options("/agentmemory/observe", headers={"Origin": "https://dash.example",
                                                          "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    r = client.post("/agentmemory/observe", json=hook(), headers={"Origin": "https://dash.example"})
    assert r.status_code == 201 and r.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert client.get("/agentmemory/sessions", headers={"Origin": "https://c.example"}).status_code == 403


def test_dns_rebinding_host_is_refused(client):
    r = client.get("/agentmemory/sessions", headers={"Origin": "http://rebind.example:3111",
                                                     "Host": "rebind.example:3111"})
    assert r.status_code == 403


def _string_and_array_fields(schema, path=""):
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if "string" in kinds:
            yield f"{path}{name}", prop, "maxLength"
        if "array" in kinds:
            yield f"{path}{name}", prop, "maxItems"
            items = prop.get("items") or {}
            if items.get("type") == "string":
                yield f"{path}{name}[]", items, "maxLength"
        if "object" in kinds:
            yield from _string_and_array_fields(prop, f"{path}{name}.")


def test_every_string_and_list_argument_is_bounded():
    unbounded = [f"{tool.name}.{field}" for tool in registry.REGISTRY.all()
                 for field, prop, bound in _string_and_array_fields(tool.schema)
                 if bound not in prop and "enum" not in prop and "const" not in prop]
    assert unbounded == []


def test_an_oversized_field_is_a_named_400(client):
    r = client.post("/agentmemory/remember", json={"content": "x", "title": "t" * 201})
    assert r.status_code == 400 and r.json["details"]["field"] == "title"
    # Stored text (memory content, observation payloads) is cut with a marker instead: never lost.
    r = client.post("/agentmemory/remember", json={"content": "x" * 100_001})
    assert r.status_code == 201 and r.json["truncated"] == {"fields": ["content"], "chars": 100_001 - 65_536}
    r = client.post("/agentmemory/search", json={"query": "q" * 5000})
    assert r.status_code == 400 and r.json["details"]["field"] == "query"


def test_no_secret_in_the_server_log(live_server):
    planted = "ghp_" + "Q" * 36
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_LOG_LEVEL": "debug"})
    auth = {"Authorization": f"Bearer {SECRET}"}
    assert post(server.api("/observe"), hook(data={"tool_output": planted}), headers=auth).status_code == 201
    post(server.api("/observe"), hook(data={"tool_output": planted}), headers={"Authorization": f"Bearer {planted}"})
    requests.get(server.api("/sessions"), headers={"Authorization": f"Bearer {SECRET}x"})
    post(server.api("/observe"), "{broken " + planted, headers=auth)
    requests.get(server.api(f"/memories/{planted}"), headers=auth)
    log = server.log()
    assert SECRET not in log and planted not in log
    assert requests.get(server.api("/health"), headers=auth).json()["status"] in ("healthy", "degraded")
    # The configuration endpoint, if any route echoes settings, never shows the secret either.
    assert SECRET not in json.dumps(requests.get(server.api("/health"), headers=auth).json())
