"""The LLM features against the loopback fake Gemini: background compression, summaries,
consolidation, reflection, insights and crystals with the model; the deterministic path with no
key, with the breaker open and on bad answers; privacy both ways."""

import json
import threading

import pytest

from agentmemory_server.models import llm
from agentmemory_server.retrieval import vectors
from agentmemory_server.adapters.web import create_app
from conftest import ManualClock, ToolCaller, hook, wait_for
from llm_support import ANSWERS, responder, task_of

COMPRESSED = ANSWERS["compress"]
SECRET_TOKEN = "sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
PASSWORD = "hunter2-correct-horse-battery"
MODEL_GITHUB_TOKEN = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
MODEL_AWS_KEY = "AKIAQWERTYUIOPASDFGH"


def edit(sid, path, ts, project="demo"):
    return hook(sid, project=project, timestamp=ts,
                data={"tool_name": "Edit", "tool_input": {"file_path": path, "old_string": "a", "new_string": "b"},
                      "tool_output": "ok"})


def observations(call, sid="s1"):
    return call("memory_observations", sessionId=sid)["observations"]


def test_auto_compress_stores_synthetic_at_once_and_upgrades_in_the_background(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True, embedding_provider="hash")
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    events = rt.hub.subscribe()
    obs_id = call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))["observationId"]
    stored = observations(call)[0]
    assert stored["title"].startswith("Edit src/auth.py") and "method" not in stored and stored["concepts"] == []
    assert fake_gemini.generations() == []  # nothing on the request path
    assert rt.db.reader().jobs.stats()["byKind"] == {"compress": 1}
    assert vectors.service(rt).drain() == 1 and rt.db.reader().vectors.backlog_stats()["pending"] == 0

    assert llm.service(rt).drain() == 1
    upgraded = observations(call)[0]
    assert upgraded["id"] == obs_id and upgraded["method"] == "gemini"
    assert upgraded["title"] == "Model: switched auth to tokens" and upgraded["type"] == "decision"
    assert upgraded["concepts"] == ["zanzibar-auth", "oauth"] and upgraded["facts"] == ["auth uses tokens now"]
    assert upgraded["files"] == ["src/auth.py", "src/model_file.py"] and upgraded["importance"] == 9
    assert upgraded["raw"] == stored["raw"] and upgraded["subtitle"] == stored["subtitle"]
    prompt = fake_gemini.prompts()[0]
    assert "hookType: post_tool_use" in prompt and "src/auth.py" in prompt
    # Re-indexed (a model concept finds it) and its embedding re-queued.
    assert [r["observation"]["id"] for r in call("memory_recall", query="zanzibar")["results"]] == [obs_id]
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 1
    assert rt.db.reader().jobs.stats()["pending"] == 0
    seen = [events.get(0.1) for _ in range(6)]
    assert any(e and e["type"] == "observation_updated" and e["record"]["id"] == obs_id for e in seen)


def test_invalid_answer_is_retried_once_then_the_synthetic_compression_stays(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True)
    call = ToolCaller(rt)
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))
    call("agent_observe", **edit("s1", "src/cart.py", "2026-11-01T10:01:00Z"))
    fake_gemini.replies = [{"type": "bogus", "title": "x"}, {"type": "decision"},  # first: both invalid
                           "no json", COMPRESSED]
    assert llm.service(rt).drain() == 2
    first, second = observations(call)
    assert "method" not in first and first["title"].startswith("Edit src/auth.py")  # kept synthetic
    assert second["method"] == "gemini"  # repaired on its retry
    prompts = fake_gemini.generations()
    assert len(prompts) == 4
    complaint = prompts[1]["contents"][-1]["parts"][0]["text"]
    assert "type: 'bogus' is not one of" in complaint and "'facts' is a required property" in complaint
    assert "not valid JSON" in prompts[3]["contents"][-1]["parts"][0]["text"]
    health = llm.service(rt).health()
    assert health["invalidOutputs"] == 3 and health["repaired"] == 1 and health["jobs"]["pending"] == 0


def test_the_compression_backlog_survives_a_restart(llm_runtime, fake_gemini):
    first = llm_runtime(auto_compress=True)
    ToolCaller(first)("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))
    first.close()  # the process dies before the worker ran
    fake_gemini.responder = responder()
    second = llm_runtime(auto_compress=True)
    assert second.db.reader().jobs.stats()["byKind"] == {"compress": 1}
    assert llm.service(second).drain() == 1
    assert observations(ToolCaller(second))[0]["method"] == "gemini"


def test_a_claimed_job_whose_worker_died_runs_again_after_its_lease(llm_runtime, fake_gemini):
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, auto_compress=True)
    fake_gemini.responder = responder()
    call, svc = ToolCaller(rt), llm.service(rt)
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))
    with rt.db.transaction("test") as tx:  # a worker claims the job, then its process dies
        assert len(tx.jobs.claim(clock.now, 8, clock.now + 100)) == 1
    assert svc.drain() == 0 and fake_gemini.generations() == []
    clock.advance(100)
    assert svc.drain() == 1 and observations(call)[0]["method"] == "gemini"


def test_concurrent_workers_never_run_the_same_job_twice(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True)
    fake_gemini.responder = responder()
    call, svc = ToolCaller(rt), llm.service(rt)
    for i in range(12):
        call("agent_observe", **edit("s1", f"src/f{i}.py", f"2026-11-01T10:{i:02d}:00Z"))
    workers = [threading.Thread(target=svc.drain) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(fake_gemini.generations()) == 12 and svc.health()["jobsDone"] == 12
    assert all(o["method"] == "gemini" for o in observations(call))


def test_observe_answers_while_the_model_is_stalled(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True, background_jobs=True, background="inline")  # worker threads here
    client = create_app(runtime=rt).test_client()
    fake_gemini.responder = responder()
    fake_gemini.stall()
    try:
        first = client.post("/agentmemory/observe", json=edit("s1", "src/a.py", "2026-11-01T10:00:00Z"))
        assert first.status_code == 201
        assert fake_gemini.entered.wait(20)  # the worker is now inside a model call the fake holds
        second = client.post("/agentmemory/observe", json=edit("s1", "src/b.py", "2026-11-01T10:01:00Z"))
        assert second.status_code == 201
        listed = client.get("/agentmemory/observations?sessionId=s1").json["observations"]
        assert [o.get("method") for o in listed] == [None, None]
        assert [o["title"].split(":")[0] for o in listed] == ["Edit src/a.py", "Edit src/b.py"]
    finally:
        fake_gemini.release()

    def methods() -> list:
        return [o.get("method") for o in client.get("/agentmemory/observations?sessionId=s1").json["observations"]]

    wait_for(lambda: methods() == ["gemini", "gemini"], message="both observations were not rewritten by the model")


def test_500s_open_the_breaker_fallbacks_answer_jobs_wait_then_recover(llm_runtime, fake_gemini):
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, auto_compress=True, llm_max_attempts=1)
    call, svc = ToolCaller(rt), llm.service(rt)
    fake_gemini.responder = responder()
    for i in range(3):
        call("agent_observe", **edit("s1", f"src/f{i}.py", f"2026-11-01T10:0{i}:00Z"))
    fake_gemini.fail_next = [500] * 3
    for _ in range(3):
        out = call("summarize", sessionId="s1")
        assert out["summary"]["method"] == "synthetic" and out["qualityScore"] == 0.5
    assert svc.breaker.state == "open"
    sent = len(fake_gemini.calls)
    assert call("summarize", sessionId="s1")["summary"]["method"] == "synthetic"
    assert call("memory_crystallize", sessionId="s1")["method"] == "synthetic"
    assert len(fake_gemini.calls) == sent  # the open breaker sends nothing
    # The queued compressions wait for the breaker instead of burning the model's quota.
    assert svc.drain() == 3 and len(fake_gemini.calls) == sent
    jobs = rt.db.reader().jobs.stats()
    assert jobs["pending"] == 3 and jobs["waiting"] == 3 and "breaker" in jobs["lastError"]
    assert all("method" not in o for o in observations(call))
    health = call("health")["llm"]
    assert health["status"] == "degraded" and health["breaker"]["state"] == "open"
    checks = {c["name"]: c for c in call("memory_diagnose")["checks"]}
    assert checks["llm-breaker"]["status"] == "warn" and checks["llm-jobs"]["status"] == "warn"

    clock.advance(30)  # half-open: the first job's call is the trial, it succeeds and closes the breaker
    assert svc.drain() == 3
    assert svc.breaker.state == "closed" and all(o["method"] == "gemini" for o in observations(call))
    assert call("summarize", sessionId="s1")["summary"]["method"] == "gemini"
    assert call("health")["llm"]["status"] == "healthy"


def test_secrets_never_reach_the_model_and_its_secrets_never_reach_the_db(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True)
    call = ToolCaller(rt)
    leaky = dict(COMPRESSED, title=f"pushed with {MODEL_GITHUB_TOKEN}", narrative=f"used key {MODEL_AWS_KEY} to deploy")
    fake_gemini.responder = responder(compress=leaky,
                                      summarize={"title": "t", "narrative": f"token {MODEL_GITHUB_TOKEN}"})
    call("agent_observe", **hook("s1", data={"tool_name": "Bash", "password": PASSWORD,
                                             "tool_input": {"command": f"export OPENAI_API_KEY={SECRET_TOKEN}"},
                                             "tool_output": "ok"}))
    llm.service(rt).drain()
    call("summarize", sessionId="s1")
    prompts = "\n".join(fake_gemini.prompts())
    assert len(fake_gemini.generations()) == 2
    assert SECRET_TOKEN not in prompts and PASSWORD not in prompts and "[REDACTED_SECRET]" in prompts
    stored = observations(call)[0]
    assert stored["method"] == "gemini" and stored["title"] == "pushed with [REDACTED_SECRET]"
    assert MODEL_AWS_KEY not in stored["narrative"]
    summary = call("session_get", sessionId="s1")["session"]["summary"]
    assert summary["method"] == "gemini" and summary["narrative"] == "token [REDACTED_SECRET]"
    rt.db.checkpoint()
    data = rt.db.path.parent  # the database, its WAL and the search index directory beside it
    on_disk = b"".join(p.read_bytes() for p in data.rglob("*")
                       if p.is_file() and p.relative_to(data).parts[0].startswith("agentmemory.db"))
    for secret in (SECRET_TOKEN, PASSWORD, MODEL_GITHUB_TOKEN, MODEL_AWS_KEY):
        assert secret.encode() not in on_disk


def test_session_end_stays_deterministic_and_queues_the_model_work(llm_runtime, fake_gemini):
    rt = llm_runtime()
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    call("agent_observe", **hook("s1", "prompt_submit", data={"prompt": "fix login TODO: add a logout test"}))
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:01:00Z"))
    assert call("session_end", sessionId="s1")["ended"] is True
    assert fake_gemini.generations() == []  # the session end answered without waiting for a model
    summary = call("session_get", sessionId="s1")["session"]["summary"]
    assert summary["method"] == "synthetic" and summary["title"].startswith("fix login")
    pending = call("memory_slot_get", label="pending_items", project="demo")["slot"]["content"]
    assert "- TODO: add a logout test" in pending
    assert rt.db.reader().jobs.stats()["byKind"] == {"summarize": 1, "reflect": 1, "consolidate": 1}
    assert llm.service(rt).drain() == 3
    summary = call("session_get", sessionId="s1")["session"]["summary"]
    assert summary["method"] == "gemini" and summary["title"] == "Model summary title"
    assert summary["filesModified"] == ["src/auth.py"] and summary["keyDecisions"] == ["use tokens"]
    assert call("memory_slot_get", label="pending_items", project="demo")["slot"]["content"] == "- model pending item"
    assert sorted(task_of(p) for p in fake_gemini.requests()) == ["reflect", "summarize"]


def test_a_session_end_job_whose_model_call_fails_runs_again_once_the_model_answers(llm_runtime, fake_gemini):
    """The summary and reflection jobs kept the deterministic result for good when their one model
    call failed (a 503 after its retries, a timeout, the breaker half-open with another job's
    trial in flight): the job was done, and the session never got its model summary. Compressions
    and graph extraction already waited for the model; these now do too."""
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, llm_max_attempts=1, consolidation_enabled="false")
    call, svc = ToolCaller(rt), llm.service(rt)
    fake_gemini.responder = responder()
    call("agent_observe", **hook("s1", "prompt_submit", data={"prompt": "fix login TODO: add a logout test"}))
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:01:00Z"))
    call("session_end", sessionId="s1")
    fake_gemini.fail_next = [503, 503]  # the model is down for both jobs' calls
    assert svc.drain() == 2
    assert call("session_get", sessionId="s1")["session"]["summary"]["method"] == "synthetic"
    waiting = rt.db.reader().jobs.stats()
    assert waiting["byKind"] == {"summarize": 1, "reflect": 1} and "HTTP 503" in waiting["lastError"]
    assert svc.usage.snapshot()["jobsRetried"] == 2

    clock.advance(60)  # the model is back
    assert svc.drain() == 2
    summary = call("session_get", sessionId="s1")["session"]["summary"]
    assert summary["method"] == "gemini" and summary["title"] == "Model summary title"
    assert call("memory_slot_get", label="pending_items", project="demo")["slot"]["content"] == "- model pending item"
    assert rt.db.reader().jobs.stats()["pending"] == 0


def test_a_session_end_job_keeps_the_deterministic_result_when_the_answer_itself_is_the_problem(
        llm_runtime, fake_gemini):
    """An invalid answer (twice) or a refusal would come again: no retry, no second bill."""
    rt = llm_runtime(consolidation_enabled="false", llm_reflect=False)
    call, svc = ToolCaller(rt), llm.service(rt)
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:01:00Z"))
    call("session_end", sessionId="s1")
    fake_gemini.replies = ["not json", "still not json"]
    assert svc.drain() == 1
    assert call("session_get", sessionId="s1")["session"]["summary"]["method"] == "synthetic"
    assert rt.db.reader().jobs.stats()["pending"] == 0 and len(fake_gemini.generations()) == 2


def test_consolidation_with_the_model_writes_memories_and_facts_through_remember(llm_runtime, fake_gemini):
    rt = llm_runtime()
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    for i in range(4):
        call("agent_observe", **edit(f"s{i % 2}", "src/auth.py", f"2026-11-0{i + 1}T10:00:00Z"))
    ids = sorted(o["id"] for s in ("s0", "s1") for o in observations(call, s))
    out = call("memory_consolidate", project="demo", minObservations=1)
    assert out["method"] == "gemini" and len(out["memories"]) == 1 and len(out["facts"]) == 1
    memory = call("memory_get", memoryId=out["memories"][0])["memory"]
    assert memory["title"] == "Model memory 1" and memory["content"] == "Model memory content 1."
    assert memory["sourceObservationIds"] == ids and memory["files"] == ["src/auth.py"]
    fact = call("memory_get", memoryId=out["facts"][0])["memory"]
    assert fact["type"] == "fact" and fact["content"] == "The auth module uses tokens (1)."
    assert "Group 1 (shared file:src/auth.py; 4 observations)" in fake_gemini.prompts()[0]
    again = call("memory_consolidate", project="demo", minObservations=1)
    assert again["memories"] == [] and again["unchanged"] == 1
    assert call("memory_recall", query="model memory content")["results"]


def test_consolidation_flag_off_keeps_it_deterministic(llm_runtime, fake_gemini):
    rt = llm_runtime(consolidation_enabled="false")
    call = ToolCaller(rt)
    for i in range(4):
        call("agent_observe", **edit("s1", "src/auth.py", f"2026-11-0{i + 1}T10:00:00Z"))
    out = call("memory_consolidate", project="demo", minObservations=1)
    assert out["method"] == "synthetic" and out["memories"] and fake_gemini.generations() == []
    call("session_end", sessionId="s1")
    assert "consolidate" not in rt.db.reader().jobs.stats()["byKind"]


def test_session_end_consolidation_runs_at_most_once_per_cooldown(llm_runtime, fake_gemini):
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, consolidation_enabled="true", llm_summaries=False, llm_reflect=False)
    call, svc = ToolCaller(rt), llm.service(rt)
    fake_gemini.responder = responder()
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))
    call("session_end", sessionId="s1")
    assert svc.drain() == 1
    call("agent_observe", **edit("s2", "src/auth.py", "2026-11-02T10:00:00Z"))
    call("session_end", sessionId="s2")
    assert rt.db.reader().jobs.stats()["byKind"] == {"consolidate": 1}
    assert svc.drain() == 0  # within the cooldown
    clock.advance(300)
    assert svc.drain() == 1


def test_crystals_insights_and_slot_reflection_use_the_model(llm_runtime, fake_gemini):
    rt = llm_runtime()
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))
    crystal = call("memory_crystallize", sessionId="s1")
    assert crystal["method"] == "gemini" and crystal["crystal"]["narrative"] == "Model crystal narrative."
    lessons = [x["content"] for x in call("memory_lessons")["lessons"]]
    assert "Run the auth tests after editing tokens." in lessons
    out = call("memory_reflect", sessionId="s1")
    assert out["method"] == "gemini" and out["updated"] == ["pending_items"]
    for text in ("Redis connection pool exhausted under load", "Raise the redis pool size for workers",
                 "Redis timeouts came from the small pool"):
        call("memory_save", content=text, project="api")
    insights = call("memory_reflect", project="api")
    assert insights["method"] == "gemini" and insights["usedFallback"] is False
    assert insights["insights"][0]["title"] == "Model insight 1"
    first = insights["insights"][0]
    assert first["content"] == "Model insight content 1." and first["confidence"] == 0.7
    actions = call("memory_action_create", title="Ship login")["action"]
    call("memory_action_update", actionId=actions["id"], status="done", result="shipped")
    assert call("memory_crystallize", actionIds=[actions["id"]])["method"] == "gemini"
    assert "- Ship login (done) | result: shipped" in fake_gemini.prompts()[-1]


def test_feature_flags_off_or_model_failures_fall_back(llm_runtime, fake_gemini):
    rt = llm_runtime(llm_crystallize=False, llm_reflect=False)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    call("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))
    assert call("memory_crystallize", sessionId="s1")["method"] == "synthetic"
    assert call("memory_reflect", sessionId="s1")["method"] == "synthetic"
    assert fake_gemini.generations() == []
    fake_gemini.replies = [{"title": ""}, {"narrative": 3}]  # invalid, then invalid again
    assert call("summarize", sessionId="s1")["summary"]["method"] == "synthetic"
    fake_gemini.replies = [{"slots": {"pending_items": "x" * 2001}}] * 2
    rt2 = llm_runtime()
    assert ToolCaller(rt2)("memory_reflect", sessionId="s1")["method"] == "synthetic"  # too long twice


def test_no_key_every_feature_runs_deterministically(make_runtime):
    rt = make_runtime(auto_compress=True, graph_extraction_enabled=True, consolidation_enabled="true")
    call = ToolCaller(rt)
    replies = []
    for i in range(5):
        replies.append(call("agent_observe", **edit("s1", "src/auth.py", f"2026-11-01T10:0{i}:00Z")))
    replies.append(call("agent_observe", **hook("s1", "prompt_submit", data={"prompt": "TODO: add a logout test"})))
    replies.append(call("session_end", sessionId="s1"))
    assert rt.db.reader().jobs.stats()["byKind"] == {"consolidate": 1, "graph": 1}  # no model jobs
    assert llm.service(rt).drain() == 2
    replies += [call("summarize", sessionId="s1"), call("memory_crystallize", sessionId="s1"),
                call("memory_reflect", sessionId="s1"), call("memory_reflect", project="demo"),
                call("memory_consolidate", project="demo", minObservations=1), call("graph_extract", sessionId="s1"),
                call("memory_graph_query"), call("graph_stats"), call("health"), call("memory_diagnose")]
    methods = [r.get("method") or r.get("summary", {}).get("method") for r in replies[7:13]]
    assert methods == ["synthetic"] * 6
    assert call("session_get", sessionId="s1")["session"]["summary"]["method"] == "synthetic"
    assert call("memory_graph_query")["nodes"] and call("memories_list")["memories"]
    text = json.dumps(replies).lower()
    assert "no provider" not in text and "no_provider" not in text
    assert replies[-2]["llm"]["mode"] == "deterministic" and replies[-2]["llm"]["status"] == "healthy"


@pytest.mark.parametrize("flag", ["auto", "true", "false"])
def test_consolidation_flag_values(make_runtime, llm_runtime, flag):
    expected = {"auto": (False, True), "true": (True, True), "false": (False, False)}[flag]
    assert llm.service(make_runtime(consolidation_enabled=flag)).consolidation_on() is expected[0]
    assert llm.service(llm_runtime(consolidation_enabled=flag)).consolidation_on() is expected[1]


def test_antigravity_imports_are_compressed_and_sync_all_uses_the_model(llm_runtime, fake_gemini, tmp_path):
    conv = tmp_path / "antigravity" / "brain" / "3f1c2b7e-9a41-4c55-8d0e-2b6f7a9c1d10"
    conv.mkdir(parents=True)
    (conv / "task.md").write_text("# Add OAuth login\n- [ ] TODO wire the callback\n\n## Notes\nUse authlib.\n")
    rt = llm_runtime(auto_compress=True, antigravity_dir=str(tmp_path / "antigravity"))
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    out = call("memory_antigravity_sync_all")
    sid = out["sessions"][0]
    steps = out["followUps"][sid]
    assert steps["memory_crystallize"]["method"] == "gemini" and steps["memory_reflect"]["method"] == "gemini"
    assert rt.db.reader().jobs.stats()["byKind"] == {"compress": out["observations"]}
    assert llm.service(rt).drain() == out["observations"]
    assert all(o["method"] == "gemini" for o in observations(call, sid))


def test_a_worker_restarted_with_queued_jobs_runs_them_only_once_every_subsystem_is_built(
        llm_runtime, fake_gemini):
    """Jobs queued before a restart are due at once. The job threads used to start inside the llm
    subsystem's constructor, before the runtime had registered it, so the first jobs failed with
    KeyError: 'llm' (a traceback in the log and an attempt lost each)."""
    from agentmemory_server.kernel.runtime import Runtime
    from agentmemory_server.wiring import HOOKS, SUBSYSTEMS

    fake_gemini.responder = responder()
    before = llm_runtime(auto_compress=True)  # the server that queued the work (no background loops)
    obs_id = ToolCaller(before)("agent_observe", **edit("s1", "src/auth.py", "2026-11-01T10:00:00Z"))["observationId"]
    assert before.db.reader().jobs.stats()["byKind"] == {"compress": 1}
    seen: dict[str, int] = {}

    class LastSubsystem:  # built after every real one: nothing may have taken the job yet
        def __init__(self, rt):
            seen["threads"] = llm.service(rt).jobs.alive()

    # The same store as the server before (SQLite here, PostgreSQL in the suite's second pass).
    settings = before.settings.replace(background_jobs=True, background="inline", llm_retry_backoff_seconds=0.0)
    rt = Runtime(settings, hooks=HOOKS, subsystems=(*SUBSYSTEMS, ("last", LastSubsystem)))
    try:
        assert seen["threads"] == 0
        call = ToolCaller(rt)
        done = wait_for(lambda: observations(call)[0] if observations(call)[0].get("method") else None,
                        message="the queued compression never ran")
        assert done["id"] == obs_id and done["method"] == "gemini"
        assert llm.service(rt).usage.snapshot()["jobsRetried"] == 0
    finally:
        rt.close()


def test_every_model_write_records_the_model_beside_its_provider(llm_runtime, fake_gemini):
    # one model for everything, another for crystals: each record names the one that wrote it
    rt = llm_runtime(auto_compress=True, llm_model="gemini-model-a", llm_model_crystallize="gemini-model-b")
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    for i in range(3):
        call("agent_observe", **edit("s1", f"src/auth{i}.py", f"2026-11-0{i + 1}T10:00:00Z"))
    assert llm.service(rt).drain() == 3
    assert {(o["method"], o["model"]) for o in observations(call)} == {("gemini", "gemini-model-a")}
    summary = call("summarize", sessionId="s1")["summary"]
    assert (summary["method"], summary["model"]) == ("gemini", "gemini-model-a")
    assert call("session_get", sessionId="s1")["session"]["summary"]["model"] == "gemini-model-a"
    crystal = call("memory_crystallize", sessionId="s1")
    assert (crystal["method"], crystal["model"]) == ("gemini", "gemini-model-b")
    assert crystal["crystal"]["model"] == "gemini-model-b"
    reflected = call("memory_reflect", sessionId="s1")
    assert (reflected["method"], reflected["model"]) == ("gemini", "gemini-model-a")
    consolidated = call("memory_consolidate", project="demo", minObservations=1)
    assert (consolidated["method"], consolidated["model"]) == ("gemini", "gemini-model-a")
    for memory_id in consolidated["memories"] + consolidated["facts"]:
        memory = call("memory_get", memoryId=memory_id)["memory"]
        assert (memory["method"], memory["model"]) == ("gemini", "gemini-model-a"), memory
    for text in ("Redis connection pool exhausted under load", "Raise the redis pool size for workers",
                 "Redis timeouts came from the small pool"):
        call("memory_save", content=text, project="api")
    insights = call("memory_reflect", project="api")
    assert (insights["method"], insights["model"]) == ("gemini", "gemini-model-a")
    assert insights["insights"][0]["model"] == "gemini-model-a"
    # what the deterministic path writes names no model
    rt_off = llm_runtime(llm_crystallize=False, llm_reflect=False)
    plain = ToolCaller(rt_off)("memory_crystallize", sessionId="s1")
    assert plain["method"] == "synthetic" and "model" not in plain and "model" not in plain["crystal"]
    again = ToolCaller(rt_off)("memory_reflect", project="api")
    assert again["method"] == "synthetic" and "model" not in again["insights"][0]
    saved = call("memory_save", content="Deploys go through the staging cluster first", project="api")["memory"]
    assert "method" not in saved and "model" not in saved  # an agent's memory: no model wrote it
