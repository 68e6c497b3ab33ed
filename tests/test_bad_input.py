"""Hostile input never produces a 500 and never corrupts stored data."""

import json
import sqlite3

import pytest
import requests

from conftest import hook, post

MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import LiveServer

    s = LiveServer(tmp_path_factory.mktemp("bad"), {}, [])
    try:
        assert post(s.api("/observe"), hook("keep", data={"tool_name": "Bash",
                                                          "tool_input": "baseline command"})).status_code == 201
        assert post(s.api("/remember"), {"content": "baseline memory"}).status_code == 201
        yield s
    finally:
        s.stop()


def snapshot(server):
    export = requests.get(server.api("/export")).json()
    export.pop("exportedAt")
    return export


CASES = [
    ("POST", "/observe", b"{not json"),
    ("POST", "/observe", b"[1, 2, 3]"),
    ("POST", "/observe", b'"a string"'),
    ("POST", "/observe", b"\xff\xfe\x00garbage"),
    ("POST", "/observe", b'{"sessionId": NaN, "hookType": "x"}'),
    ("POST", "/observe", b"[" * 100000 + b"]" * 100000),
    ("POST", "/observe", json.dumps({"hookType": "post_tool_use"}).encode()),
    ("POST", "/observe", json.dumps({"sessionId": 42, "hookType": "x"}).encode()),
    ("POST", "/observe", json.dumps({"sessionId": "", "hookType": "x"}).encode()),
    ("POST", "/observe", json.dumps({"sessionId": "s", "hookType": "bad\u0001hook"}).encode()),
    ("POST", "/observe", json.dumps({"sessionId": "a\nb"}).encode()),
    ("POST", "/observe", json.dumps({"sessionId": "x" * 300}).encode()),
    ("POST", "/remember", json.dumps({"content": ["list"]}).encode()),
    ("POST", "/remember", json.dumps({"content": "x", "concepts": {"a": 1}}).encode()),
    ("POST", "/search", json.dumps({"query": "x", "limit": -1}).encode()),
    ("POST", "/search", json.dumps({"query": "x", "limit": 10**30}).encode()),
    ("POST", "/search", json.dumps({"query": "x", "limit": "lots"}).encode()),
    ("GET", "/sessions?limit=-5", b""),
    ("GET", "/sessions?limit=99999999999", b""),
    ("GET", "/sessions?offset=-1", b""),
    ("GET", "/audit?limit=abc", b""),
    ("GET", "/observations", b""),
    ("POST", "/context", json.dumps({"sessionId": "s", "budget": 0}).encode()),
    ("POST", "/forget", json.dumps({"memoryIds": 5}).encode()),
    ("POST", "/import", json.dumps({"exportData": {"version": "0.9.29", "sessions": [1]}}).encode()),
    ("POST", "/import", json.dumps({"exportData": "nope"}).encode()),
    ("DELETE", "/governance/memories", json.dumps({"memoryIds": 5}).encode()),
    ("POST", "/session/start", json.dumps({}).encode()),
    ("POST", "/mcp/call", json.dumps({"name": 5}).encode()),
    ("POST", "/mcp/call", json.dumps({"name": "memory_save", "arguments": [1]}).encode()),
]


@pytest.mark.parametrize("method,path,body", CASES, ids=[f"{m} {p} #{i}" for i, (m, p, _b) in enumerate(CASES)])
def test_bad_input_is_a_named_4xx(server, method, path, body):
    r = requests.request(method, server.api(path), data=body, headers={"Content-Type": "application/json"},
                         timeout=30)
    assert 400 <= r.status_code < 500, r.text[:300]
    err = r.json()
    assert err["ok"] is False and err["status"] == r.status_code and err["error"] and err["code"]


def test_huge_bodies_are_413(server):
    before = snapshot(server)
    big = json.dumps(hook("big", data={"tool_output": "x" * (20 * MB)}))  # the limit is 16 MiB
    r = requests.post(server.api("/observe"), data=big, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large" and r.json()["details"]["setting"] == "AGENTMEMORY_MAX_BODY_BYTES"
    assert snapshot(server) == before


def test_unicode_edge_cases_round_trip(server):
    weird = "emoji 🙂👩‍💻 rtl \u202eevil\u202c zero\u200bwidth combining e\u0301 nul\x00byte cjk 数据库"
    body = hook("uni", data={"tool_name": "Bash", "tool_input": weird, "tool_output": "\ud83d lone"})
    raw = json.dumps(body)  # keeps \u escapes, including the lone surrogate
    r = requests.post(server.api("/observe"), data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    obs = requests.get(server.api("/observations"), params={"sessionId": "uni"}).json()["observations"][0]
    assert "🙂👩‍💻" in obs["raw"]["tool_input"] and "\x00" not in obs["raw"]["tool_input"]
    assert "lone" in obs["raw"]["tool_output"]
    found = post(server.api("/search"), {"query": "数据库 emoji"}).json()["results"]
    assert found and found[0]["sessionId"] == "uni"


@pytest.mark.parametrize("sid", ["../../etc/passwd", "C:\\Windows\\system32", "/abs/path", "%2e%2e%2f", "a/b?c#d",
                                 "mem:obs:x", "'; DROP TABLE kv_store; --"])
def test_path_like_and_injection_ids_are_just_strings(server, sid):
    r = post(server.api("/observe"), hook(sid))
    assert r.status_code == 201
    got = requests.get(server.api("/observations"), params={"sessionId": sid}).json()
    assert got["total"] == 1 and got["observations"][0]["sessionId"] == sid
    r = requests.get(server.api(f"/memories/{requests.utils.quote(sid, safe='')}"))
    assert r.status_code == 404


def test_data_intact_after_the_barrage(server):
    assert requests.get(server.api("/observations"), params={"sessionId": "keep"}).json()["total"] == 1
    assert post(server.api("/search"), {"query": "baseline"}).json()["count"] == 2
    conn = sqlite3.connect(server.db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert "Traceback" not in server.log()
