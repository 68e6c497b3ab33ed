"""The fast argument check (kernel/schema_check.py) never accepts what jsonschema refuses, and
takes the usual calls without asking jsonschema; a refused call still gets jsonschema's 400."""

from __future__ import annotations

import random
from typing import Any

import pytest

from agentmemory_server import wiring  # noqa: F401 - registers every tool
from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.registry import REGISTRY, Ctx
from agentmemory_server.kernel.schema_check import SchemaValidator, compile_acceptor, ecma_pattern

SAMPLES = [
    None, True, False, 0, 1, -1, 3, 10_000_001, 2**70, 3.0, 2.5, -0.5, float("nan"), float("inf"),
    "", "a", "abc", "abc\n", "x" * 12 + "\n", "x" * 70, "x" * 300, "x" * 5000, "bad\x01id", "\x7f", "ok-id_1.2:3", "observation",
    "post_tool_use", "recent", "*", [], ["a"], ["a", "b"], [""], [1, 2], ["x" * 1100], [["a"]], [None],
    ["a"] * 250, {}, {"k": "v"}, {"content": "x"},
]


def _values_for(prop: dict, rng: random.Random) -> list[Any]:
    picks = rng.sample(SAMPLES, 12)
    extra = [prop["default"]] if "default" in prop else []
    extra += prop.get("enum", [])[:3]
    return picks + extra


def _argument_sets(schema: dict, rng: random.Random) -> list[dict[str, Any]]:
    props = schema.get("properties", {})
    sets: list[dict[str, Any]] = [{}]
    for _ in range(40):
        args = {name: rng.choice(_values_for(prop, rng)) for name, prop in props.items() if rng.random() < 0.6}
        sets.append(args)
    return sets


def test_the_fast_check_never_accepts_what_jsonschema_refuses():
    rng = random.Random(1234)
    checked = accepted = 0
    for tool in REGISTRY._tools.values():
        assert tool.accepts is not None, tool.name
        for args in _argument_sets(tool.schema, rng):
            checked += 1
            if tool.accepts(args):
                accepted += 1
                errors = list(tool.validator.iter_errors(args))
                assert not errors, (tool.name, args, errors[0].message)
    assert checked > 3000 and accepted > 100  # both kinds of argument were met


@pytest.mark.parametrize(
    "schema, value, expected",
    [
        ({"type": "integer", "minimum": 1}, 0, False),
        ({"type": "integer", "minimum": 1}, True, False),
        ({"type": "integer", "maximum": 5}, 5, True),
        ({"type": "string", "maxLength": 3}, "abcd", False),
        ({"type": "string", "minLength": 1}, "", False),
        ({"type": "string", "pattern": r"^[a-z]+$"}, "abc1", False),
        ({"type": "string", "enum": ["a", "b"]}, "c", False),
        ({"type": "array", "items": {"type": "string"}, "maxItems": 2}, ["a", "b", "c"], False),
        ({"type": "array", "items": {"type": "string"}}, ["a", 1], False),
        ({"type": "object", "required": ["x"], "properties": {"x": {"type": "string"}}}, {}, False),
        ({"type": "object", "properties": {"x": {"type": "string"}}}, {"x": "y", "other": 1}, True),
        ({"type": "object", "additionalProperties": False}, {}, False),  # unknown keyword: ask jsonschema
        ({"description": "anything"}, {"deep": [1, None]}, True),
    ],
)
def test_the_fast_check_on_each_keyword(schema, value, expected):
    assert compile_acceptor(schema)(value) is expected


def test_observe_takes_the_fast_path_and_a_bad_call_still_names_its_field():
    tool = REGISTRY.get("agent_observe")
    good = {"sessionId": "s1", "hookType": "post_tool_use", "project": "p", "cwd": "/w",
            "timestamp": "2026-11-01T10:00:00Z", "data": {"tool_name": "Bash", "tool_output": "ok"}}
    assert tool.accepts(good)
    for bad, field, message in [
        ({**good, "sessionId": "bad\x01"}, "sessionId", "'sessionId' has an invalid format"),
        ({**good, "eventId": "short"}, "eventId", "'eventId' has an invalid format"),
        ({**good, "files": ["a", 3]}, "files.1", "'files.1' must be a string"),
        ({k: v for k, v in good.items() if k != "sessionId"}, "sessionId", "missing required field 'sessionId'"),
    ]:
        assert not tool.accepts(bad)
        with pytest.raises(InvalidInput) as raised:
            registry.prepare_args(tool, bad)
        assert raised.value.message == message
        assert raised.value.details.get("field") == field


# -- a pattern's '$' means the very end, as in ECMA-262 (JSON Schema's regex dialect) -----------------

def test_a_patterns_dollar_is_the_very_end_of_the_string_in_both_checks():
    """Python's '$' also matches before a final newline: "abc\\n" passed ``^[a-z]+$`` in both
    the fast check and jsonschema. Now neither takes it; a '$' escaped or in a class is a '$'."""
    schema = {"type": "string", "pattern": r"^[a-z]+$"}
    assert compile_acceptor(schema)("abc") and list(SchemaValidator(schema).iter_errors("abc")) == []
    assert not compile_acceptor(schema)("abc\n")
    assert [e.validator for e in SchemaValidator(schema).iter_errors("abc\n")] == ["pattern"]
    assert ecma_pattern(r"^[$]x\$$").search("$x$") and not ecma_pattern(r"^[$]x\$$").search("$x$\n")


OBSERVE = {"sessionId": "s1", "hookType": "post_tool_use", "project": "p", "cwd": "/w",
           "timestamp": "2026-11-01T10:00:00Z", "data": {"tool_name": "Bash", "tool_output": "ok"}}
WORKING = {"project": "p", "sessionId": "s1", "key": "k", "value": 1}
# (tool, REST path, valid arguments, the field given an id that ends in one newline)
NEWLINE_IDS = [
    ("agent_observe", "/observe", OBSERVE, "sessionId"),
    ("agent_observe", "/observe", {**OBSERVE, "eventId": "event-0001"}, "eventId"),
    ("memory_working_set", "/working/set", WORKING, "project"),
    ("memory_working_set", "/working/set", WORKING, "sessionId"),
    ("memory_working_set", "/working/set", WORKING, "key"),
]


@pytest.mark.parametrize("name, path, good, field", NEWLINE_IDS, ids=[f"{n}-{f}" for n, _p, _g, f in NEWLINE_IDS])
def test_an_id_ending_in_a_newline_is_refused_naming_its_field_over_mcp_and_rest(rt, client, name, path, good, field):
    bad = {**good, field: good[field] + "\n"}
    with pytest.raises(InvalidInput) as raised:
        registry.call(Ctx(rt, source="mcp"), name, bad)
    assert raised.value.message == f"'{field}' has an invalid format"
    assert raised.value.details.get("field") == field
    answer = client.post(f"/agentmemory{path}", json=bad)
    assert answer.status_code == 400, answer.json
    assert answer.json["code"] == "invalid_input" and answer.json["details"]["field"] == field, answer.json
    assert client.post(f"/agentmemory{path}", json=good).status_code in (200, 201)  # the id itself is fine


def test_the_python_side_id_checks_refuse_a_final_newline_too():
    """The same '$' in regexes Python alone runs: a token's principal and an image's id."""
    from agentmemory_server.kernel import principals
    from agentmemory_server.storage import blobs

    assert principals.token_record("bob", "agent", [], ["read"], "2026-01-01T00:00:00Z")
    with pytest.raises(InvalidInput):
        principals.token_record("bob\n", "agent", [], ["read"], "2026-01-01T00:00:00Z")
    assert blobs.is_blob_id("a" * 64) and not blobs.is_blob_id("a" * 64 + "\n")
