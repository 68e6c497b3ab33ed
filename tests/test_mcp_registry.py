"""One registry behind every MCP surface: parity of the lists, schemas, coercion and errors."""

from __future__ import annotations

import json
import re

import jsonschema
import mcp_types
import pytest
from mcp_types.methods import validate_server_result

from agentmemory_server.adapters import mcp_http as mcp_protocol
from agentmemory_server.kernel import registry
from agentmemory_server.adapters.web import create_app
from conftest import ROOT
from mcp_support import sample_value

# SPEC §7: the 31 tools of the original design, the two the upstream shim treats as core, and the
# working-memory tools.
SPEC_TOOLS = """
memory_recall memory_save memory_sessions memory_sessions_list memory_smart_search memory_timeline
memory_observations memory_profile memory_lessons memory_lesson_save memory_lesson_recall
memory_lesson_search memory_consolidate memory_reflect memory_diagnose memory_forget memory_export
agent_observe agent_remember memory_antigravity_sync memory_antigravity_sync_all memory_slot_list
memory_slot_get memory_slot_create memory_slot_append memory_slot_replace memory_slot_delete
memory_action_create memory_action_update memory_frontier memory_crystallize
memory_audit memory_governance_delete
memory_working_set memory_working_get memory_working_delete memory_working_task
memory_working_scratchpad memory_working_checkpoint memory_working_stats
""".split()


def mcp_names(which: str = "all") -> list[str]:
    return [t.name for t in registry.REGISTRY.mcp_tools(which)]


def test_spec_tool_list_has_40_distinct_names():
    assert len(SPEC_TOOLS) == len(set(SPEC_TOOLS)) == 40


def test_every_spec_section_7_tool_is_registered():
    missing = [name for name in SPEC_TOOLS if name not in mcp_names()]
    assert not missing, f"SPEC §7 tools missing from the registry: {', '.join(missing)}"


def _rpc(client, method, params=None, headers=None):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    r = client.post("/mcp", json=body, headers=headers or {})
    return r.get_json()


def test_rest_mcp_http_jsonrpc_and_readme_lists_are_the_same(client):
    expected = mcp_names()
    assert [t["name"] for t in client.get("/agentmemory/mcp/tools").get_json()["tools"]] == expected
    assert [t["name"] for t in _rpc(client, "tools/list")["result"]["tools"]] == expected
    readme = (ROOT / "README.md").read_text().split("<!-- BEGIN tools -->")[1].split("<!-- END tools -->")[0]
    assert re.findall(r"^\| `([\w.-]+)` \|", readme, re.M) == expected


@pytest.mark.parametrize("name", mcp_names())
def test_every_tool_has_a_description_and_a_valid_schema(name):
    tool = registry.REGISTRY.get(name)
    assert len(tool.description) >= 15 and not tool.description.startswith(name)
    jsonschema.Draft202012Validator.check_schema(tool.schema)
    assert tool.schema["type"] == "object"
    assert set(tool.schema.get("required", [])) <= set(tool.schema.get("properties", {}))
    assert registry.MCP_TOOL_NAME.match(name)
    json.dumps(tool.schema)  # plain JSON, nothing Python-only
    mcp_types.Tool.model_validate({"name": name, "description": tool.description, "inputSchema": tool.schema})


@pytest.mark.parametrize("version", mcp_protocol.SUPPORTED_VERSIONS)
def test_tool_list_is_valid_for_every_protocol_version(rt, version):
    call = mcp_protocol.Call(rt, "tools/list", {}, version, version in mcp_protocol.MODERN_VERSIONS)
    validate_server_result("tools/list", version, mcp_protocol.dispatch(call))


def test_tool_names_are_checked_at_registration():
    with pytest.raises(ValueError, match="not a valid MCP tool name"):
        registry.Registry().add(registry.Tool("bad name!", "A tool with a space.", registry.params(),
                                              lambda ctx, args: None))


def test_agentmemory_tools_core_limits_every_list(tmp_path):
    app = create_app({"AGENTMEMORY_DATA_DIR": str(tmp_path), "AGENTMEMORY_TOOLS": "core", "AGENTMEMORY_AUTH": "off",
                      "AGENTMEMORY_BACKGROUND_JOBS": "false"})
    try:
        client = app.test_client()
        core = mcp_names("core")
        assert core and set(core) < set(mcp_names())
        assert all(registry.REGISTRY.get(n).core for n in core)
        assert [t["name"] for t in client.get("/agentmemory/mcp/tools").get_json()["tools"]] == core
        assert [t["name"] for t in _rpc(client, "tools/list")["result"]["tools"]] == core
        # The setting trims what is advertised; a hidden tool is still callable by name.
        hidden = next(n for n in mcp_names() if n not in core)
        r = client.post("/agentmemory/mcp/call", json={"name": hidden, "arguments": {}})
        assert r.status_code == 200 and "content" in r.get_json()
    finally:
        app.extensions["agentmemory"].close()


# -- argument coercion ------------------------------------------------------------------------------

def _array_properties():
    for tool in registry.REGISTRY.mcp_tools("all"):
        for prop, schema in tool.schema.get("properties", {}).items():
            if schema.get("type") == "array" and schema.get("items", {}).get("type") == "string":
                yield tool.name, prop


@pytest.mark.parametrize("name,prop", list(_array_properties()))
def test_every_list_argument_accepts_arrays_csv_and_json_strings(name, prop):
    tool = registry.REGISTRY.get(name)
    props = tool.schema["properties"]
    base = {k: sample_value(props[k]) for k in tool.schema.get("required", [])}
    for given in (["a", "b"], "a, b", " a,b ,", '["a", "b"]'):
        prepared = registry.prepare_args(tool, {**base, prop: given})
        assert prepared[prop] == ["a", "b"], (name, prop, given)


def test_loose_scalars_from_mcp_clients_are_coerced(call):
    saved = call("memory_save", content="coercion check", concepts='["x", "y"]', ttlDays="3")
    assert saved["memory"]["concepts"] == ["x", "y"] and "forgetAfter" in saved["memory"]
    with pytest.raises(registry.InvalidInput, match="'sessionId' must be a string"):
        call("memory_observations", sessionId=12345)  # ids are never guessed from numbers
    assert call("memory_sessions", limit="2", offset=0.0)["limit"] == 2


def test_list_arguments_through_mcp_call(client):
    ids = []
    for text in ("first memory for csv delete", "second unrelated note about csv deletes"):
        r = client.post("/agentmemory/mcp/call", json={"name": "memory_save", "arguments": {
            "content": text, "concepts": "alpha, beta", "files": ["a.py", "b.py"]}})
        memory = json.loads(r.get_json()["content"][0]["text"])["memory"]
        assert memory["concepts"] == ["alpha", "beta"] and memory["files"] == ["a.py", "b.py"]
        ids.append(memory["id"])
    r = _rpc(client, "tools/call", {"name": "memory_governance_delete",
                                    "arguments": {"memoryIds": ",".join(ids), "reason": "test"}})
    assert json.loads(r["result"]["content"][0]["text"])["deletedIds"] == ids


# -- schema errors are clean tool errors --------------------------------------------------------------

def _required_tools():
    return [t.name for t in registry.REGISTRY.mcp_tools("all") if t.schema.get("required")]


@pytest.mark.parametrize("name", _required_tools())
@pytest.mark.parametrize("surface", ["http", "jsonrpc"])
def test_missing_required_argument_is_an_iserror_naming_the_field(client, name, surface):
    first = registry.REGISTRY.get(name).schema["required"][0]
    if surface == "http":
        r = client.post("/agentmemory/mcp/call", json={"name": name, "arguments": {}})
        assert r.status_code == 200
        result = r.get_json()
    else:
        result = _rpc(client, "tools/call", {"name": name, "arguments": {}})["result"]
    assert result["isError"] is True
    error = json.loads(result["content"][0]["text"])
    assert error["code"] == "invalid_input" and error["status"] == 400
    assert error["details"]["field"] == first and first in error["error"]


def _integer_properties():
    for tool in registry.REGISTRY.mcp_tools("all"):
        for prop, schema in tool.schema.get("properties", {}).items():
            if schema.get("type") == "integer":
                yield tool.name, prop


@pytest.mark.parametrize("name,prop", list(_integer_properties()))
def test_wrongly_typed_argument_is_an_iserror_naming_the_field(call, name, prop):
    tool = registry.REGISTRY.get(name)
    props = tool.schema["properties"]
    args = {k: sample_value(props[k]) for k in tool.schema.get("required", [])}
    args[prop] = "not-a-number"
    result = mcp_protocol.call_tool(call.rt, name, args, "test")
    error = json.loads(result["content"][0]["text"])
    assert result["isError"] and error["code"] == "invalid_input", error
    assert error["details"]["field"] == prop and error["error"] == f"'{prop}' must be an integer"


def test_unknown_tool_and_bad_envelopes_are_http_errors(client):
    r = client.post("/agentmemory/mcp/call", json={"name": "no_such_tool", "arguments": {}})
    assert r.status_code == 404 and r.get_json()["code"] == "unknown_tool"
    r = client.post("/agentmemory/mcp/call", json={"arguments": {}})
    assert r.status_code == 400 and r.get_json()["details"]["field"] == "name"
    r = client.post("/agentmemory/mcp/call", json={"name": "memory_recall", "arguments": ["query"]})
    assert r.status_code == 400 and r.get_json()["details"]["field"] == "arguments"
    r = client.post("/agentmemory/mcp/call", json={"name": "livez", "arguments": {}})
    assert r.status_code == 400 and r.get_json()["code"] == "unknown_tool"

