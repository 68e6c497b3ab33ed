"""Hostile input never produces a 500 and never corrupts stored data."""

import json
import sqlite3

import pytest
import requests

from conftest import ToolCaller, hook, post

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
    # Found by the bad-input sweep: a 500 (the stack overflowed walking the value after parsing),
    # a 503 (1e400 decodes to infinity, which no store can write) and a NaN query parameter that
    # passed every range check.
    ("POST", "/observe", b'{"sessionId": "deep", "data": {"tool_input": ' + b"[" * 500 + b"]" * 500 + b"}}"),
    ("POST", "/working/set", b'{"sessionId": "w", "key": "k", "value": ' + b"[" * 900 + b"]" * 900 + b"}"),
    ("POST", "/observe", b'{"sessionId": "inf", "data": {"tool_input": {"n": 1e400}}}'),
    ("GET", "/lessons?minConfidence=NaN", b""),
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


def test_a_nul_in_the_path_or_query_reaches_the_route_cleaned_on_a_real_server(server):
    """gunicorn hands %00 to the app as it is; the route sees the id without it, as in a body."""
    saved = post(server.api("/remember"), {"content": "nul path", "project": "nul\x00proj"}).json()["memory"]
    got = requests.get(server.api(f"/memories/{saved['id'][:4]}%00{saved['id'][4:]}"), timeout=30)
    assert got.status_code == 200 and got.json()["memory"]["id"] == saved["id"], got.text[:300]
    listed = requests.get(server.api("/memories?project=nul%00proj"), timeout=30).json()["memories"]
    assert [m["id"] for m in listed] == [saved["id"]]


def _raw_exchange(server, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("chunks", [b"zz\r\n{}\r\n0\r\n\r\n", b"11\r\n{\"content\":\"ck\"}\r\n0\r\n\r\n"],
                         ids=["bad size", "size past the data"])
def test_a_malformed_chunked_body_is_a_400_not_a_500(server, chunks):
    head = (b"POST /agentmemory/remember HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    answer = _raw_exchange(server, head + chunks)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400"), answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "http_error" and "malformed" in body["error"], body
    good = _raw_exchange(server, head + b"10\r\n{\"content\":\"ok\"}\r\n0\r\n\r\n")
    assert good.startswith(b"HTTP/1.1 201"), good[:300]  # a well-formed chunked body is stored


_HOST = b"Host: 127.0.0.1\r\n"
PARSER_REFUSALS = [  # (request, gunicorn's status, what the message names)
    (b"GET /agentmemory/livez?" + b"a" * 5000 + b" HTTP/1.1\r\n" + _HOST + b"\r\n", 414,
     "the request line is 5032 bytes, over the limit of 4094"),
    (b"POST /agentmemory/remember HTTP/1.1\r\n" + _HOST + b"Content-Length: abc\r\n\r\n", 400,
     "the Content-Length header is not valid"),
    (b"POST /agentmemory/remember HTTP/1.1\r\n" + _HOST + b"Content-Length: -5\r\n\r\n", 400,
     "the Content-Length header is not valid"),
    (b"GET /agentmemory/livez\xff\xfe HTTP/1.1\r\n" + _HOST + b"\r\n", 400, "Invalid HTTP request line"),
    (b"GET /agentmemory/livez HTTP/1.1\r\n" + _HOST + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
     431, "the request has more than 100 headers"),
    (b"GET /agentmemory/livez HTTP/1.1\r\n" + _HOST + b"X-Big: " + b"v" * 9000 + b"\r\n\r\n", 431,
     "a request header is over 8190 bytes"),
    # gunicorn's one 500 for the request's fault (a trusted proxy's SCRIPT_NAME the path does not
    # start with): a deployment problem, no bug, so no errorId and no traceback either.
    (b"GET /agentmemory/livez HTTP/1.1\r\n" + _HOST + b"SCRIPT_NAME: /elsewhere\r\n\r\n", 500,
     "the request does not fit the server's configuration: Request path '/agentmemory/livez' does not start "
     "with SCRIPT_NAME '/elsewhere'"),
]


@pytest.mark.parametrize("request_bytes,status,named", PARSER_REFUSALS,
                         ids=["line too long", "bad length", "negative length", "not utf-8", "too many headers",
                              "header too long", "script name"])
def test_a_request_the_http_parser_refuses_is_answered_in_the_json_envelope(server, request_bytes, status, named):
    """gunicorn refuses these before the app runs; it answered its own HTML page, which no
    client of this API parses. Now: our envelope, gunicorn's status, the connection closed."""
    answer = _raw_exchange(server, request_bytes)
    head, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *headers = head.decode("latin-1").split("\r\n")
    assert status_line.startswith(f"HTTP/1.1 {status} "), answer[:300]
    assert {"Content-Type: application/json", "Connection: close"} <= set(headers), head
    body = json.loads(payload)
    assert body == {"ok": False, "error": body["error"], "code": "http_error", "status": status}, body
    assert named in body["error"] and (status == 500 or body["error"].startswith("malformed request: ")), body
    assert "Invalid request from ip=127.0.0.1" in server.log()  # a warning line, no traceback (see below)


def test_data_intact_after_the_barrage(server):
    assert requests.get(server.api("/observations"), params={"sessionId": "keep"}).json()["total"] == 1
    assert post(server.api("/search"), {"query": "baseline"}).json()["count"] == 2
    conn = sqlite3.connect(server.db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert "Traceback" not in server.log()


# -- the sweep's findings on both backends (the `client` tests run in the PostgreSQL pass too) --------


def test_nesting_and_infinite_numbers_are_refused_naming_the_field(client):
    deep = client.post("/agentmemory/observe", data=b'{"sessionId": "deep", "data": {"tool_input": ' + b"[" * 500
                       + b"]" * 500 + b"}}", content_type="application/json")
    assert deep.status_code == 400, deep.json
    assert deep.json["details"]["field"] == "data.tool_input.0.0..." and "nested deeper" in deep.json["error"], deep.json
    inf = client.post("/agentmemory/observe", data=b'{"sessionId": "inf", "data": {"tool_input": {"n": 1e400}}}',
                      content_type="application/json")
    assert inf.status_code == 400 and inf.json["details"]["field"] == "data.tool_input.n", inf.json
    for sid in ("deep", "inf"):  # nothing half-written, nothing left for a retry
        assert client.get(f"/agentmemory/observations?sessionId={sid}").json["total"] == 0
    assert client.get("/agentmemory/capture").json["total"] == 0


def test_a_nul_in_the_query_string_or_path_is_dropped_as_in_a_body(client):
    saved = client.post("/agentmemory/remember", json={"content": "zebra facts", "project": "a\x00b"}).json["memory"]
    assert saved["project"] == "ab"
    listed = client.get("/agentmemory/memories?project=a%00b").json["memories"]
    assert [m["id"] for m in listed] == [saved["id"]]
    got = client.get(f"/agentmemory/memories/{saved['id'][:4]}%00{saved['id'][4:]}")
    assert got.status_code == 200 and got.json["memory"]["id"] == saved["id"], got.json


def test_a_nan_query_number_is_refused(client):
    r = client.get("/agentmemory/lessons?minConfidence=NaN")
    assert r.status_code == 400 and r.json["details"]["field"] == "minConfidence", r.json


def test_json_text_inside_a_hook_is_decoded_as_strictly_as_the_body(client):
    """Cursor sends an MCP tool's arguments as JSON text; a NaN, 1e400, a lone surrogate or deep
    nesting there reached the store (a 503, a 500, an observation no listing could answer)."""
    texts = {"nan": '{"a": NaN}', "inf": '{"a": 1e400}', "lone": '{"a": "x\\ud800y"}', "nul": '{"a": "x\\u0000y"}',
             "deep": "[" * 5000 + "]" * 5000}
    for name, text in texts.items():
        body = {"hook_event_name": "afterMCPExecution", "conversation_id": f"emb-{name}", "generation_id": name,
                "tool_name": "t", "tool_input": text, "result_json": text, "workspace_roots": ["/w"]}
        r = client.post("/agentmemory/hooks/cursor", json=body)
        assert r.status_code == 200, (name, r.status_code, r.data[:200])
        listed = client.get(f"/agentmemory/observations?sessionId=emb-{name}")
        assert listed.status_code == 200 and listed.json["total"] == 1, (name, listed.data[:200])
        stored = listed.json["observations"][0]["raw"]["tool_input"]
        if name in ("nan", "inf", "deep"):
            assert isinstance(stored, str) and stored[:8] == text[:8]  # kept as text (a long one clipped)
        else:
            assert stored == {"a": "x?y" if name == "lone" else "xy"}


def test_an_object_argument_given_as_json_text_is_decoded_strictly(client):
    nan = client.post("/agentmemory/actions", json={"title": "t", "metadata": '{"a": NaN}'})
    assert nan.status_code == 400 and nan.json["details"]["field"] == "metadata", nan.json
    lone = client.post("/agentmemory/actions", json={"title": "t", "metadata": '{"a": "x\\ud800y"}'})
    assert lone.status_code == 201 and lone.json["action"]["metadata"] == {"a": "x?y"}, lone.json
    listed = client.get("/agentmemory/actions")
    assert listed.status_code == 200 and [a["title"] for a in listed.json["actions"]] == ["t"], listed.data[:300]


def test_a_lone_surrogate_already_stored_does_not_break_its_listing(rt, client):
    # An in-process call is not cleaned as a request is: a record as a store written before the
    # cleaning (or by a path that misses it) holds it. It is sent as "?", as a request's would
    # have been stored: an escaped lone surrogate is refused by strict JSON parsers.
    ToolCaller(rt)("memory_action_create", title="old \ud800 record")
    r = client.get("/agentmemory/actions")
    assert r.status_code == 200, r.data[:300]
    assert b"\\ud800" not in r.data
    assert json.loads(r.data.decode("utf-8", "strict"))["actions"][0]["title"] == "old ? record"


def test_a_tools_arguments_over_mcp_nest_no_deeper_than_a_rest_body(client):
    """An MCP message is parsed with room for its JSON-RPC envelope; a tool's arguments are held
    to a REST body's limit. Before, an observation sent through MCP could nest 14 levels deeper
    than one sent over REST, and its export then nested too deeply for the import to take."""

    def observe_over_mcp(session: str, levels: int):
        tool_input = "[" * levels + "]" * levels
        raw = ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "agent_observe", '
               f'"arguments": {{"sessionId": "{session}", "data": {{"tool_name": "Bash", "tool_input": {tool_input}}}}}}}}}')
        return client.post("/mcp", data=raw, headers={"Content-Type": "application/json",
                                                       "Accept": "application/json, text/event-stream"})

    refused = observe_over_mcp("too-deep", 104)
    message = refused.json["error"]["message"]
    assert message.startswith("'data.tool_input.") and message.endswith("is nested deeper than 100 levels"), message
    assert client.get("/agentmemory/observations?sessionId=too-deep").json["total"] == 0
    kept = observe_over_mcp("at-the-limit", 98)
    assert kept.status_code == 200 and not kept.json["result"].get("isError"), kept.json
    exported = client.get("/agentmemory/export").json
    r = client.post("/agentmemory/import", json={"exportData": exported, "strategy": "replace"})
    assert r.status_code == 200, r.json
    assert client.get("/agentmemory/observations?sessionId=at-the-limit").json["total"] == 1


@pytest.mark.parametrize("body", [b'{"content": "plain"}', None], ids=["labelled", "compressed"])
def test_a_compressed_body_is_refused_with_its_header_named(client, body):
    import gzip

    data = body or gzip.compress(b'{"content": "compressed"}')
    r = client.post("/agentmemory/remember", data=data, headers={"Content-Type": "application/json",
                                                                 "Content-Encoding": "gzip"})
    assert r.status_code == 415 and r.json["details"]["header"] == "Content-Encoding", r.json
    assert client.get("/agentmemory/memories").json["memories"] == []


def test_mcp_parse_errors_say_what_is_wrong(client):
    cases = {b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"x": NaN}}': "NaN",
             b'{"jsonrpc": "2.0", "id": 1e400, "method": "tools/list"}': "'id' is a number out of range",
             b"[" * 5000 + b"]" * 5000: "nested too deeply", b"\xff": "not valid UTF-8"}
    for raw, says in cases.items():
        r = client.post("/mcp", data=raw, headers={"Content-Type": "application/json",
                                                   "Accept": "application/json, text/event-stream"})
        assert r.status_code == 400 and says in r.json["error"]["message"], (raw[:40], r.json)


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def test_an_observation_kept_at_the_nesting_limit_imports_again(client):
    body = b'{"sessionId": "edge", "data": {"tool_name": "Bash", "tool_input": ' + b"[" * 98 + b"]" * 98 + b"}}"
    assert client.post("/agentmemory/observe", data=body, content_type="application/json").status_code == 201
    exported = client.get("/agentmemory/export").json
    assert _depth({"exportData": exported}) > 100  # the document wraps it deeper than a request may nest
    r = client.post("/agentmemory/import", json={"exportData": exported, "strategy": "replace"})
    assert r.status_code == 200, r.json
    assert client.get("/agentmemory/observations?sessionId=edge").json["total"] == 1
