"""Summaries, reflect, crystallize and consolidate without any LLM: deterministic and useful."""

import json
from pathlib import Path

import pytest

from conftest import hook
from agentmemory_server.errors import InvalidInput, NotFound
from agentmemory_server.kernel.hook_types import KNOWN_HOOK_TYPES
from agentmemory_server.kernel.wording import one_line
from agentmemory_server.kernel.model_steps import MODEL_STEPS, model_step, run_model_steps
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.util import truncate
from agentmemory_server.memory import consolidate, crystals, summaries


def bash(session, command, output, hook_type="post_tool_use", ts="2026-11-01T10:00:00Z", project="shop"):
    key = "error" if hook_type == "post_tool_failure" else "tool_output"
    return hook(session, hook_type, project=project, timestamp=ts,
                data={"tool_name": "Bash", "tool_input": {"command": command}, key: output})


def edit(session, path, ts, project="shop"):
    return hook(session, "post_tool_use", project=project, timestamp=ts,
                data={"tool_name": "Edit", "tool_input": {"file_path": path, "old_string": "a", "new_string": "b"},
                      "tool_output": "ok"})


def record_work_session(client, sid="work", project="shop"):
    events = [
        hook(sid, "prompt_submit", project=project, timestamp="2026-11-01T10:00:00Z",
             data={"prompt": "fix the login lockout bug. TODO: add a regression test for the lockout"}),
        bash(sid, "pytest -q", "2 failed, 10 passed", ts="2026-11-01T10:01:00Z", project=project),
        edit(sid, "src/auth.py", "2026-11-01T10:05:00Z", project=project),
        bash(sid, "pytest -q", "12 passed in 0.5s", ts="2026-11-01T10:06:00Z", project=project),
        bash(sid, "npm run lint", "eslint: command not found", hook_type="post_tool_failure",
             ts="2026-11-01T10:07:00Z", project=project),
        {"sessionId": sid, "hookType": "observation", "project": project, "timestamp": "2026-11-01T10:08:00Z",
         "content": "lesson: always reset the rate limiter between tests", "type": "decision"},
        hook(sid, "post_tool_use", project=project, timestamp="2026-11-01T10:09:00Z",
             data={"tool_name": "Read", "tool_input": {"file_path": "README.md"}, "tool_output": "# Shop"}),
    ]
    client.post("/agentmemory/session/start", json={"sessionId": sid, "project": project, "cwd": "/w"})
    for event in events:
        assert client.post("/agentmemory/observe", json=event).status_code == 201


def test_summary_written_on_session_end(client):
    record_work_session(client)
    assert client.post("/agentmemory/session/end", json={"sessionId": "work"}).status_code == 200
    session = client.get("/agentmemory/sessions").json["sessions"][0]
    summary = session["summary"]
    assert summary["title"].startswith("fix the login lockout bug") and summary["observationCount"] == 7
    assert summary["filesModified"] == ["src/auth.py"] and summary["method"] == "synthetic"
    assert "7 observations over 9 min" in summary["narrative"] and "Changed 1 file: src/auth.py" in summary["narrative"]
    assert "2 failures; last: npm run lint: eslint: command not found" in summary["narrative"]
    assert summary["keyDecisions"] == ["lesson: always reset the rate limiter between tests"]
    assert "pytest" in summary["concepts"] and "bash" not in summary["concepts"]
    text = client.post("/agentmemory/context", json={"sessionId": "next", "project": "shop"}).json["context"]
    assert "## fix the login lockout bug" in text and "Files: src/auth.py" in text


def test_the_summary_counts_each_kind_of_observation_in_plain_english(client):
    for i, (kind, text) in enumerate([("discovery", "the cache is keyed by user"), ("discovery", "tokens expire"),
                                      ("decision", "keep the old API"), ("decision", "drop the v1 route")]):
        event = {"sessionId": "kinds", "hookType": "observation", "project": "shop", "content": text, "type": kind,
                 "timestamp": f"2026-11-01T10:0{i}:00Z"}
        assert client.post("/agentmemory/observe", json=event).status_code == 201
    r = client.post("/agentmemory/summarize", json={"sessionId": "kinds"})
    assert "4 observations over 3 min: 2 discoveries, 2 decisions." in r.json["summary"]["narrative"]


def test_the_summary_says_what_its_count_holds_beside_the_work(client):
    # a session's start and end, a tool call announced and then done, and an event that carried
    # nothing but the note capture wrote for it (Cline's TaskComplete), all within a minute
    cline = {"clineVersion": "3.40.0", "taskId": "cl-9", "workspaceRoots": ["/home/u/cli"], "timestamp": "1764583200000"}
    tool = {"toolName": "execute_command", "parameters": {"command": "npm test"}}
    events = [{"hookName": "TaskStart", "taskStart": {"taskMetadata": {"taskId": "cl-9"}}},
              {"hookName": "UserPromptSubmit", "userPromptSubmit": {"prompt": "Fix the flaky session test"}},
              {"hookName": "PreToolUse", "preToolUse": tool},
              {"hookName": "PostToolUse", "postToolUse": {**tool, "result": "12 passing", "success": True}},
              {"hookName": "TaskComplete", "taskComplete": {"taskMetadata": {"taskId": "cl-9"}}}]
    for n, event in enumerate(events):
        reply = client.post("/agentmemory/hooks/cline", json={**cline, **event, "timestamp": str(1764583200000 + n)})
        assert reply.status_code == 200, reply.json
    summary = client.post("/agentmemory/summarize", json={"sessionId": "cl-9"}).json["summary"]
    narrative = summary["narrative"]
    assert narrative.startswith("5 observations in under a minute: 1 prompt, 1 command, 1 subagent event "
                                "(plus 1 session event and 1 announced tool call)."), narrative
    assert "Notable: npm test: 12 passing." in narrative and "TaskComplete" not in narrative, narrative
    assert "(s)" not in narrative
    # the hook types that head titles ("session_start: ...", "task_completed: ...") are not concepts
    assert not set(summary["concepts"]) & {"session_start", "task_completed", "prompt_submit", "stop"}, summary


def test_what_the_agent_said_is_not_counted_as_what_it_was_asked(client):
    # Cursor reports the agent's replies and thoughts; the summary tells them from the prompt
    base = {"conversation_id": "cur-1", "workspace_roots": ["/work/shop"]}
    events = [{"hook_event_name": "sessionStart"}]
    events += [{"hook_event_name": "afterAgentResponse", "generation_id": f"g{i}",
                "text": f"I read the auth module, part {i}"} for i in range(3)]
    events += [{"hook_event_name": "beforeSubmitPrompt", "generation_id": "g9", "prompt": "Fix the login redirect"},
               {"hook_event_name": "afterAgentThought", "generation_id": "g9", "text": "the cookie path is wrong"},
               {"hook_event_name": "stop", "generation_id": "g9", "status": "completed"}]
    for event in events:
        assert client.post("/agentmemory/hooks/cursor", json={**base, **event}).status_code == 200
    narrative = client.post("/agentmemory/summarize", json={"sessionId": "cur-1"}).json["summary"]["narrative"]
    assert "4 agent messages" in narrative and "1 prompt" in narrative, narrative
    assert 'Asked: "Fix the login redirect".' in narrative, narrative
    assert "assistant_response" not in narrative.split("Notable")[0]


def test_a_line_about_an_event_titled_by_its_message_does_not_repeat_it(client):
    message = "Fixed the flaky parser test by pinning the fixture's seed and pushed the branch"
    event = {"session_id": "cc-stop", "cwd": "/work/shop", "hook_event_name": "Stop", "last_assistant_message": message}
    assert client.post("/agentmemory/hooks/claude-code", json=event).status_code == 200
    [stop] = client.get("/agentmemory/observations", query_string={"sessionId": "cc-stop"}).json["observations"]
    assert stop["title"] == truncate(f"stop: {message}", 80)
    assert summaries.describe(stop, 400).count("pinning") == 1


def test_a_claude_code_session_is_summarised_in_words_not_json(client):
    # Claude Code answers tool calls with objects: Bash {stdout, stderr, interrupted}, Edit
    # {filePath, oldString, newString, originalFile, ...}; the summary reads what they say
    base = {"session_id": "cc-cart", "cwd": "/work/shop"}
    events = [
        {"hook_event_name": "UserPromptSubmit", "prompt": "The cart total is off by a cent"},
        {"hook_event_name": "PostToolUse", "tool_name": "Edit", "tool_use_id": "t1",
         "tool_input": {"file_path": "src/cart.py", "old_string": "round(x, 2)", "new_string": "quantize(x)"},
         "tool_response": {"filePath": "src/cart.py", "oldString": "round(x, 2)", "newString": "quantize(x)",
                           "originalFile": "def total(x):\n    return round(x, 2)\n", "structuredPatch": []}},
        {"hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_use_id": "t2",
         "tool_input": {"command": "pytest tests/test_cart.py -q"},
         "tool_response": {"stdout": "..\n2 passed", "stderr": "", "interrupted": False, "isImage": False}},
    ]
    for event in events:
        assert client.post("/agentmemory/hooks/claude-code", json={**base, **event}).status_code == 200
    narrative = client.post("/agentmemory/summarize", json={"sessionId": "cc-cart"}).json["summary"]["narrative"]
    assert "Edit src/cart.py: replace 1 line" in narrative and "pytest tests/test_cart.py -q: .. 2 passed" in narrative
    assert "{" not in narrative, narrative


@pytest.mark.parametrize("label,narrative,line", [
    ("Read a.py", "Read a.py: def total(items):", "Read a.py: def total(items):"),
    ("stop: Fixed the flaky parser test by pinning…", "Fixed the flaky parser test by pinning the seed",
     "stop: Fixed the flaky parser test by pinning the seed"),
    ("Fix the cart total", "Fix the cart total", "Fix the cart total"),
    ("pytest -q", "2 passed", "pytest -q: 2 passed"),
    ("Edit a.py: replace 1 line", "", "Edit a.py: replace 1 line"),
    ("session_start", "SessionStart (startup)", "session_start: SessionStart (startup)"),
    # a narrative that only restates its title, as capture writes one for a tool that said nothing
    ("Bash: cargo test", "Ran `cargo test`", "Bash: cargo test"),
    ("Patch src/users.rs: update", "Patched update src/users.rs", "Patch src/users.rs: update"),
    ("Bash: make", "Killed", "Bash: make: Killed"),  # a word of its own is news
    ("Bash: npm test", "Ran `npm test` (exit 1)", "Bash: npm test: Ran `npm test` (exit 1)"),
    ("Bash: npm test -> failed: exited with code 1", "Ran `npm test`. Output: exited with code 1",
     "Bash: npm test -> failed: exited with code 1"),
    ("Edit a.ts: 1 edit, 1 line replaced", "Edited a.ts in 1 place (1 line replaced)", "Edit a.ts: 1 edit, 1 line replaced"),
    # a narrative that opens by restating its title keeps only what follows
    ("Edit /home/u/shop/src/retry.ts: replace 1 line", "Edited /home/u/shop/src/retry.ts: `3` -> `5`",
     "Edit /home/u/shop/src/retry.ts: replace 1 line: `3` -> `5`"),
    ("Bash: npm test", "Ran `npm test`. Output: all 42 tests passed", "Bash: npm test: all 42 tests passed"),
    ("Bash: make", "Killed. Output: make: *** [all] Error 137", "Bash: make: Killed. Output: make: *** [all] Error 137"),
    ("Bash: ls", "Ran `ls`. Output: Output: a.txt", "Bash: ls: a.txt"),
])
def test_one_line_says_each_thing_once(label, narrative, line):
    assert one_line(label, narrative) == line


CLIENT_FIXTURES = Path(__file__).parent / "fixtures" / "clients"


@pytest.mark.parametrize("agent", sorted(p.stem for p in CLIENT_FIXTURES.glob("*.json")))
def test_every_agents_session_is_summarised_by_its_work(client, agent):
    # each agent's documented events, through its hook route: the summary counts and names the
    # work, not the session's course (starts, turn ends, compactions) nor tool calls about to run
    cases = json.loads((CLIENT_FIXTURES / f"{agent}.json").read_text())["cases"]
    for case in cases:
        payload = {**case["payload"], **({"agentmemory_event": case["event"]} if case.get("event") else {})}
        assert client.post(f"/agentmemory/hooks/{agent}", json=payload).status_code == 200
    first = cases[0]["payload"]
    sid = next(first[k] for k in ("session_id", "conversation_id", "taskId", "sessionId") if first.get(k))
    summary = client.post("/agentmemory/summarize", json={"sessionId": sid}).json["summary"]
    narrative = summary["narrative"]
    for noise in ("other", "session_start", "pre_compact", "post_compact", "session_end", "{", "*** ", ".."):
        assert noise not in narrative, (noise, narrative)
    assert "Asked: " in narrative
    assert not set(summary["concepts"]) & KNOWN_HOOK_TYPES, summary["concepts"]  # "session_start: <task>"
    stored = client.get("/agentmemory/observations", query_string={"sessionId": sid}).json["observations"]
    announced = {f for o in stored if o["hookType"] == "pre_tool_use" for f in o["files"]}
    done = {f for o in stored if o["hookType"] != "pre_tool_use" for f in o["files"]}
    assert not set(summary["filesModified"]) & (announced - done), summary["filesModified"]
    if agent == "cursor":  # afterFileEdit reports nothing back: its title says it all, once
        assert "Edit src/Nav.tsx: 1 edit, 1 line replaced;" in narrative, narrative  # named from its cwd
    if agent == "cline":  # its only write is announced (PreToolUse), never reported done
        assert announced == {"src/main.ts"} and summary["filesModified"] == []


def test_what_an_event_without_a_tool_says_titles_it(client):
    copilot = {"sessionId": "cp-err", "cwd": "/work/site", "timestamp": 1764583200000,
               "error": {"message": "rate limited", "name": "RateLimitError"}, "agentmemory_event": "errorOccurred"}
    assert client.post("/agentmemory/hooks/copilot", json=copilot).status_code == 200
    [event] = client.get("/agentmemory/observations", query_string={"sessionId": "cp-err"}).json["observations"]
    assert event["title"] == "error_occurred: rate limited", event["title"]
    opencode = {"hook_event_name": "session.created", "session_id": "oc-new", "cwd": "/work/game", "title": "New session"}
    assert client.post("/agentmemory/hooks/opencode", json=opencode).status_code == 200
    [start] = client.get("/agentmemory/observations", query_string={"sessionId": "oc-new"}).json["observations"]
    assert start["narrative"] == "New session"


def test_a_tool_event_with_an_odd_input_is_summarised_not_a_500(client):
    # valid JSON, odd shape: a command that is not a string (500 on summarize and crystallize before)
    for i, command in enumerate([True, {"argv": ["make"]}, 3.5, None]):
        client.post("/agentmemory/observe", json=hook("odd", "post_tool_use", timestamp=f"2026-11-01T10:0{i}:00Z",
                                                      data={"tool_name": "Bash", "tool_input": {"command": command},
                                                            "tool_output": "ok"}))
    assert client.post("/agentmemory/summarize", json={"sessionId": "odd"}).status_code == 200
    assert client.post("/agentmemory/crystals/create", json={"sessionId": "odd"}).status_code == 201


def test_summarize_route(client):
    record_work_session(client)
    r = client.post("/agentmemory/summarize", json={"sessionId": "work"})
    assert r.status_code == 200 and r.json["success"] and r.json["summary"]["sessionId"] == "work"
    assert 0 < r.json["qualityScore"] <= 1
    client.post("/agentmemory/session/start", json={"sessionId": "empty", "project": "shop"})
    r = client.post("/agentmemory/summarize", json={"sessionId": "empty"})
    assert r.status_code == 409 and r.json["code"] == "no_observations"
    assert client.post("/agentmemory/summarize", json={"sessionId": "ghost"}).status_code == 404


def test_a_tool_call_announced_before_it_ran_counts_once_in_the_sessions_patterns(client, call):
    for i, hook_type in enumerate(["pre_tool_use", "post_tool_use", "pre_tool_use", "post_tool_use"]):
        command = "pytest -q" if i < 2 else "ruff check ."
        output = {"tool_output": "3 passed"} if hook_type == "post_tool_use" else {}
        client.post("/agentmemory/observe", json=hook("announced", hook_type, project="shop",
                                                      timestamp=f"2026-11-01T10:0{i}:00Z",
                                                      data={"tool_name": "Bash", "tool_input": {"command": command},
                                                            **output}))
    call("memory_reflect", sessionId="announced")
    patterns = call("memory_slot_get", label="session_patterns", project="shop")["slot"]["content"]
    assert "- commands: 2 in last 4 observations" in patterns and "Bash (2)" in patterns, patterns


def test_reflect_on_session_fills_slots(client, call):
    record_work_session(client)
    out = call("memory_reflect", sessionId="work")
    assert out["observationsReviewed"] == 7 and set(out["updated"]) == {"pending_items", "session_patterns",
                                                                         "project_context"}
    pending = call("memory_slot_get", label="pending_items", project="shop")["slot"]["content"]
    assert pending == "- TODO: add a regression test for the lockout"
    patterns = call("memory_slot_get", label="session_patterns", project="shop")["slot"]["content"]
    assert "- errors: 2 in last 7 observations" in patterns and "- commands: 2 in last 7" in patterns
    assert "Bash (3)" in patterns
    project_context = call("memory_slot_get", label="project_context", project="shop")["slot"]["content"]
    assert project_context.splitlines() == ["Files touched in recent sessions:", "- src/auth.py", "- README.md"]
    # Reflecting again adds nothing new to pending_items or project_context.
    again = call("slot_reflect", sessionId="work")
    assert not {"pending_items", "project_context"} & set(again["updated"])
    assert call("memory_slot_get", label="pending_items", project="shop")["slot"]["content"] == pending
    # Another project's slots are untouched.
    assert call("memory_slot_get", label="pending_items", project="other")["slot"]["content"] == ""


def test_reflect_runs_on_session_end_and_keeps_the_tail(client, call):
    record_work_session(client)
    client.post("/agentmemory/session/end", json={"sessionId": "work"})
    assert "regression test" in call("memory_slot_get", label="pending_items", project="shop")["slot"]["content"]
    from agentmemory_server.memory.reflect import fit_tail

    assert fit_tail(["a" * 10, "b" * 10, "c" * 10], 21) == "b" * 10 + "\n" + "c" * 10
    assert fit_tail(["head", "x" * 10, "y" * 10], 16, keep_first=1) == "head\n" + "y" * 10


def test_crystallize_session_digest_and_lessons(client, call):
    record_work_session(client)
    r = client.post("/agentmemory/crystals/create", json={"sessionId": "work"})
    assert r.status_code == 201
    crystal = r.json["crystal"]
    assert crystal["sessionId"] == "work" and crystal["project"] == "shop"
    assert crystal["filesAffected"] == ["src/auth.py"]
    assert "`pytest -q` passes again after changes to src/auth.py" in crystal["keyOutcomes"]
    assert "Still failing: npm run lint" in crystal["keyOutcomes"]
    assert any(o.startswith("Decided: lesson: always reset") for o in crystal["keyOutcomes"])
    assert crystal["lessons"][0].startswith("`pytest -q` failed (2 failed, 10 passed)")
    assert "always reset the rate limiter between tests" in crystal["lessons"]
    lessons = {x["content"]: x for x in call("memory_lessons")["lessons"]}
    assert lessons["always reset the rate limiter between tests"]["confidence"] == 0.6
    assert lessons["always reset the rate limiter between tests"]["source"] == "crystal"
    # Crystallizing the same session again updates the crystal and does not inflate lessons.
    again = client.post("/agentmemory/crystals/create", json={"sessionId": "work"}).json
    assert again["crystal"]["id"] == crystal["id"] and again["lessonsSaved"] == []
    assert all(x["reinforcements"] == 0 for x in call("memory_lessons")["lessons"])
    listed = client.get("/agentmemory/crystals?project=shop").json
    assert listed["total"] == 1 and listed["crystals"][0]["id"] == crystal["id"]


def test_crystallize_actions(call):
    a = call("memory_action_create", title="Add retry", project="p")["action"]
    b = call("memory_action_create", title="Drop the cache", project="p")["action"]
    open_ = call("memory_action_create", title="Still open")["action"]
    call("memory_action_update", actionId=a["id"], status="done",
         result="Retries fixed the flaky upload.\nlesson: retry uploads with backoff")
    call("memory_action_update", actionId=b["id"], status="cancelled")
    with pytest.raises(InvalidInput) as err:
        call("memory_crystallize", actionIds=[a["id"], open_["id"]])
    assert err.value.details["field"] == "actionIds"
    with pytest.raises(NotFound):
        call("memory_crystallize", actionIds=["act_nope"])
    with pytest.raises(InvalidInput):
        call("memory_crystallize")
    out = call("memory_crystallize", actionIds=f"{a['id']},{b['id']}", project="p")
    crystal = out["crystal"]
    assert crystal["sourceActionIds"] == [a["id"], b["id"]]
    assert crystal["narrative"].startswith("2 actions finished: Add retry (done); Drop the cache (cancelled)")
    assert crystal["lessons"] == ["retry uploads with backoff"] and len(out["lessonsSaved"]) == 1
    assert call("action_get", actionId=a["id"])["action"]["crystallizedInto"] == crystal["id"]


def test_consolidate_creates_memories_deterministically(client, call):
    for i in range(4):
        sid = f"s{i}"
        client.post("/agentmemory/observe", json=edit(sid, "src/cart.py", f"2026-11-0{i + 1}T10:00:00Z"))
        client.post("/agentmemory/observe", json=bash(sid, f"pytest tests/test_cart.py -k checkout{i}",
                                                      "checkout totals mismatch", hook_type="post_tool_failure",
                                                      ts=f"2026-11-0{i + 1}T10:01:00Z"))
    client.post("/agentmemory/observe", json=edit("s9", "src/cart.py", "2026-11-09T10:00:00Z", project="other"))
    dry = call("memory_consolidate", dryRun=True)
    assert dry["memories"] == [] and dry["observationsScanned"] == 9
    keys = {(g["project"], g["key"]) for g in dry["groups"]}
    assert ("shop", "file:src/cart.py") in keys and ("other", "file:src/cart.py") not in keys
    out = call("memory_consolidate")
    assert out["consolidated"] == len(out["memories"]) >= 2
    memories = {m["id"]: m for m in call("memories_list")["memories"]}
    cart = next(m for m in memories.values() if m["title"] == "Recurring work on src/cart.py")
    assert cart["project"] == "shop" and cart["files"] == ["src/cart.py"] and len(cart["sourceObservationIds"]) == 4
    assert "4 observations across 4 sessions from 2026-11-01 to 2026-11-04" in cart["content"]
    bug = next(m for m in memories.values() if "checkout" in m["title"] or m["type"] == "bug")
    assert bug["type"] == "bug"
    # Same observations again: nothing new.
    again = call("memory_consolidate")
    assert again["memories"] == [] and again["unchanged"] == out["consolidated"]
    assert len(call("memories_list")["memories"]) == len(memories)
    assert call("memory_recall", query="cart")["results"]  # written through remember: searchable


def test_courtesies_in_prompts_group_nothing_when_consolidating():
    prompt = {"id": "p", "title": "Please fix the cart total, thanks", "narrative": "Please fix the cart total"}
    assert {k for k in consolidate.observation_keys(prompt) if k.startswith("term:")} == {"term:cart", "term:total"}


def test_a_consolidated_memory_names_each_highlight_once_and_counts_in_plain_english(client, call):
    for i in range(5):  # the same failure in five sessions: five observations with one title
        assert client.post("/agentmemory/observe", json=bash(f"s{i}", "npm run lint", "eslint: command not found",
                                                              hook_type="post_tool_failure",
                                                              ts=f"2026-11-0{i + 1}T10:00:00Z")).status_code == 201
        # (other work beside it, so that the failure's words are not in most observations)
        client.post("/agentmemory/observe", json=edit(f"s{i}", f"src/part{i}.py", f"2026-11-0{i + 1}T10:05:00Z"))
    call("memory_consolidate")
    bug = next(m for m in call("memories_list")["memories"] if m["type"] == "bug")
    assert "5 observations across 5 sessions" in bug["content"] and "(5 errors)" in bug["content"]
    highlights = bug["content"].split("Highlights: ", 1)[1].split(".")[0].split("; ")
    assert len(highlights) == len(set(highlights)) == 1, bug["content"]


def test_consolidating_a_group_larger_than_a_memory_can_cite_keeps_the_newest_sources(call, client):
    for i in range(230):  # one file edited 230 times: more than memory_save's 200 source ids
        client.post("/agentmemory/observe", json=edit(f"s{i % 3}", "src/cart.py",
                                                      f"2026-11-01T{i // 60:02d}:{i % 60:02d}:00Z"))
    out = call("memory_consolidate")
    cart = next(m for m in call("memories_list")["memories"] if m["title"] == "Recurring work on src/cart.py")
    assert out["consolidated"] >= 1 and len(cart["sourceObservationIds"]) == 200
    newest = sorted(o["id"] for sid in ("s0", "s1", "s2")
                    for o in call("memory_observations", sessionId=sid)["observations"])[-200:]
    assert cart["sourceObservationIds"] == newest
    assert call("memory_consolidate")["unchanged"] == out["consolidated"]  # the state keeps all 230


def test_a_group_of_one_day_is_dated_on_that_day(client, call):
    for i in range(5):
        client.post("/agentmemory/observe", json=edit(f"d{i}", "src/tax.py", f"2026-11-05T1{i}:00:00Z"))
    call("memory_consolidate")
    [tax] = [m for m in call("memories_list")["memories"] if "src/tax.py" in m["title"]]
    assert "5 observations across 5 sessions on 2026-11-05 (" in tax["content"], tax["content"]


def test_a_todo_cut_short_in_a_title_gives_way_to_the_whole_one(client, call):
    lead = "Discount field added; a test still fails in the checkout suite. "  # "stop: " + this + "TODO: fix" = 79
    words = lead + "TODO: fix the checkout test."
    event = {"session_id": "todo-cut", "cwd": "/work/shop", "hook_event_name": "Stop", "last_assistant_message": words}
    assert client.post("/agentmemory/hooks/claude-code", json=event).status_code == 200
    [stop] = client.get("/agentmemory/observations", query_string={"sessionId": "todo-cut"}).json["observations"]
    assert stop["title"].endswith("TODO: fix…"), stop["title"]  # the title is cut at 80 characters
    call("slot_reflect", sessionId="todo-cut")
    pending = call("memory_slot_get", label="pending_items", project="shop")["slot"]["content"]
    assert pending == "- TODO: fix the checkout test.", pending


def test_consolidate_needs_enough_observations(call, client):
    client.post("/agentmemory/observe", json=edit("s", "a.py", "2026-11-01T10:00:00Z"))
    out = call("memory_consolidate")
    assert out["memories"] == [] and "need at least 5" in out["reason"]


def test_reflect_project_form_creates_then_reinforces_insights(call):
    for text in ("Redis connection pool exhausted under load", "Raise the redis pool size for workers",
                 "Redis timeouts came from the small pool"):
        call("memory_save", content=text, project="api")
    call("memory_lesson_save", content="Watch the redis pool metrics", project="api")
    out = call("memory_reflect", project="api", maxClusters=5)
    assert out["newInsights"] >= 1 and out["usedFallback"] is True and out["method"] == "synthetic"
    insight = out["insights"][0]
    assert "redis" in insight["sourceConceptCluster"] and len(insight["sourceMemoryIds"]) == 3
    again = call("memory_reflect", project="api", maxClusters=5)
    assert again["newInsights"] == 0 and again["reinforced"] == out["newInsights"]
    listed = call("insights_list", project="api")["insights"]
    assert listed[0]["reinforcements"] == 1 and listed[0]["confidence"] > insight["confidence"]
    assert call("memory_reflect", project="empty")["clustersProcessed"] == 0


def test_model_step_goes_first_and_failures_fall_back(client, call):
    record_work_session(client)
    calls = []

    @model_step("summarize", "test-model")
    def fake(ctx, payload):
        calls.append(len(payload["observations"]))
        if len(calls) == 1:
            raise RuntimeError("model down")
        return {"title": "Model title", "narrative": "Model narrative"}

    try:
        first = call("summarize", sessionId="work")["summary"]
        assert first["method"] == "synthetic" and first["title"].startswith("fix the login")
        second = call("summarize", sessionId="work")["summary"]
        assert second["method"] == "test-model" and second["title"] == "Model title"
        assert second["filesModified"] == ["src/auth.py"]  # fields the model left out come from the fallback
        assert calls == [7, 7]
    finally:
        MODEL_STEPS["summarize"][:] = [s for s in MODEL_STEPS["summarize"] if s[0] != "test-model"]
    assert run_model_steps("summarize", Ctx(call.rt), {}) == (None, None)  # no key: every step passes
    with pytest.raises(ValueError):
        model_step("nope", "x")


def test_memory_model_end_to_end_over_http(live_server):
    import requests

    from conftest import post

    server = live_server()
    post(server.api("/session/start"), {"sessionId": "e2e", "project": "shop", "cwd": "/w"})
    r = post(server.api("/observe"), hook("e2e", "prompt_submit", project="shop",
                                          data={"prompt": "ship it. TODO: update the changelog"}))
    assert r.status_code == 201
    assert post(server.api("/session/end"), {"sessionId": "e2e"}).status_code == 200
    session = requests.get(server.api("/sessions"), timeout=30).json()["sessions"][0]
    assert session["summary"]["title"] == "ship it. TODO: update the changelog"
    slot = requests.get(server.api("/slot"), params={"label": "pending_items", "project": "shop"}, timeout=30).json()
    assert slot["slot"]["content"] == "- TODO: update the changelog"
    for expected in (201, 200):
        assert post(server.api("/lessons"), {"content": "Update the changelog before tagging"}).status_code == expected
    context = post(server.api("/context"), {"sessionId": "next", "project": "shop"}).json()["context"]
    assert context.index("## pending_items\n- TODO: update the changelog") < context.index("(0.55) Update the changelog")
    health = post(server.api("/diagnostics"), {}).json()
    assert health["summary"]["fail"] == 0 and any(c["name"] == "db_integrity" for c in health["checks"])


def test_a_touched_files_list_written_before_is_renamed_from_the_working_directory(client):
    # lists written before files were named from cwd hold whole paths and listing patterns
    old = "Shop notes\nFiles touched in recent sessions:\n- /home/u/shop/src/old.ts\n- src/**/*.ts\n" \
          "- /home/u/shop/src/retry.ts\n- src/retry.ts\n- /etc/hosts"
    written = client.post("/agentmemory/slot/replace", json={"label": "project_context", "content": old, "project": "shop"})
    assert written.status_code in (200, 201), written.json
    base = {"cwd": "/home/u/shop", "transcript_path": "/t", "session_id": "cc-rename"}
    for event in ({"hook_event_name": "PostToolUse", "tool_name": "Edit", "tool_response": {"success": True},
                   "tool_input": {"file_path": "/home/u/shop/src/new.ts", "old_string": "a", "new_string": "b"}},
                  {"hook_event_name": "SessionEnd", "reason": "exit"}):
        assert client.post("/agentmemory/hooks/claude-code", json={**base, **event}).status_code == 200
    slot = client.get("/agentmemory/slot?label=project_context&project=shop").json["slot"]["content"]
    assert slot.splitlines() == ["Shop notes", "Files touched in recent sessions:", "- src/old.ts", "- src/retry.ts",
                                 "- /etc/hosts", "- src/new.ts"], slot


def test_a_summary_names_changed_files_as_the_agent_would_from_its_working_directory():
    edits = [{"id": f"o{i}", "type": "file_edit", "hookType": "post_tool_use", "toolName": "Edit", "importance": 6,
              "title": f"Edit {path}", "files": [path], "timestamp": f"2026-12-01T10:0{i}:00Z"}
             for i, path in enumerate(["/home/ana/shop/src/cart.ts", "/home/ana/shopper/x.ts", "/etc/hosts"])]
    failed = {"id": "o9", "type": "error", "hookType": "post_tool_failure", "toolName": "Bash", "importance": 7,
              "title": "Bash: tsc /home/ana/shop/src/cart.ts -> failed", "narrative": "error in /home/ana/shop/src/cart.ts",
              "timestamp": "2026-12-01T10:09:00Z"}
    made = summaries.synthetic_summary({"id": "s", "cwd": "/home/ana/shop/"}, [*edits, failed])
    assert "Changed 3 files: src/cart.ts, /home/ana/shopper/x.ts, /etc/hosts." in made["narrative"], made["narrative"]
    assert "Notable: Edit src/cart.ts" in made["narrative"] and "Edit /home/ana/shopper/x.ts" in made["narrative"]
    assert "/home/ana/shop/" not in made["narrative"], made["narrative"]
    assert made["filesModified"] == ["/home/ana/shop/src/cart.ts", "/home/ana/shopper/x.ts", "/etc/hosts"]
    assert summaries.paths_seen_from("C:\\work\\shop", "C:\\work\\shop\\src\\cart.ts") == "src\\cart.ts"
    # a list cut short says how much it leaves out, and a crystal names paths as the summary does
    many = [{**edits[0], "id": f"m{i}", "files": [f"/home/ana/shop/src/m{i}.ts"], "title": f"Edit m{i}.ts"} for i in range(8)]
    asked = [{"id": f"p{i}", "type": "conversation", "hookType": "prompt_submit", "title": f"ask {i}", "importance": 5,
              "timestamp": "2026-12-01T09:00:00Z"} for i in range(2)]
    made = summaries.synthetic_summary({"id": "s", "cwd": "/home/ana/shop"}, [*asked, *many])
    assert "Changed 8 files: src/m0.ts, src/m1.ts, src/m2.ts, src/m3.ts, src/m4.ts, src/m5.ts (+2 more)." in made["narrative"]
    assert 'Asked: "ask 0" (+1 more prompt).' in made["narrative"], made["narrative"]
    digest = crystals.session_digest({"id": "s", "cwd": "/home/ana/shop"}, many)
    assert "Changed 8 files: src/m0.ts," in " ".join(digest["keyOutcomes"]) and "/home/ana" not in str(digest["keyOutcomes"])
    assert summaries.paths_seen_from(None, "/home/ana/shop/a.ts") == "/home/ana/shop/a.ts"
    assert summaries.paths_seen_from("/home/ana/shop", "cp /srv/home/ana/shop/a `/home/ana/shop/b`") == "cp /srv/home/ana/shop/a `b`"


def test_the_prompts_relevant_lines_name_paths_from_the_working_directory(client):
    base = {"cwd": "/home/u/shop", "transcript_path": "/t"}
    edit = {**base, "session_id": "cc-a", "hook_event_name": "PostToolUse", "tool_name": "Edit",
            "tool_input": {"file_path": "/home/u/shop/src/retry.ts", "old_string": "3", "new_string": "5"},
            "tool_response": {"success": True}}
    assert client.post("/agentmemory/hooks/claude-code", json=edit).status_code == 200
    prompt = {**base, "session_id": "cc-b", "hook_event_name": "UserPromptSubmit", "prompt": "why does retry.ts retry?"}
    told = client.post("/agentmemory/hooks/claude-code", json=prompt).json["hookSpecificOutput"]["additionalContext"]
    assert "- [file_edit] Edit src/retry.ts: replace 1 line: `3` -&gt; `5`" in told, told
    assert "/home/u/shop/" not in told


def test_the_context_block_names_paths_from_each_sessions_working_directory(client):
    base = {"cwd": "/home/u/shop", "transcript_path": "/t"}
    for event in ({"hook_event_name": "SessionStart", "source": "startup"},
                  {"hook_event_name": "UserPromptSubmit", "prompt": "Make the webhook retry five times"},
                  {"hook_event_name": "PostToolUse", "tool_name": "Edit", "tool_response": {"success": True},
                   "tool_input": {"file_path": "/home/u/shop/src/retry.ts", "old_string": "3", "new_string": "5"}},
                  # a listing's pattern names no file: it stays out of the touched files and the profile
                  {"hook_event_name": "PostToolUse", "tool_name": "Glob", "tool_input": {"pattern": "src/**/*.ts"},
                   "tool_response": {"filenames": ["/home/u/shop/src/retry.ts"], "numFiles": 1}},
                  {"hook_event_name": "SessionEnd", "reason": "exit"}):
        assert client.post("/agentmemory/hooks/claude-code", json={**base, "session_id": "cc-a", **event}).status_code == 200
    ask = {**base, "session_id": "cc-b", "hook_event_name": "UserPromptSubmit", "prompt": "how often does retry.ts retry?"}
    assert client.post("/agentmemory/hooks/claude-code", json=ask).status_code == 200
    block = client.post("/agentmemory/context", json={"sessionId": "cc-b", "project": "shop"}).json["context"]
    assert "Files: src/retry.ts" in block and "Edited src/retry.ts" in block, block
    assert "Key files: src/retry.ts" in block and "/home/u/shop" not in block, block
    # The project's running list of touched files and its profile name them as the agent does.
    slot = client.get("/agentmemory/slot?label=project_context&project=shop")
    assert slot.json["slot"]["content"].splitlines()[-1] == "- src/retry.ts", slot.json
    assert "*" not in slot.json["slot"]["content"], slot.json
    top = client.get("/agentmemory/profile?project=shop").json["profile"]["topFiles"]
    assert top == [{"file": "src/retry.ts", "frequency": 1}], top
