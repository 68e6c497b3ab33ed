"""Model work through a provider outage, against the loopback fake Gemini: queued jobs wait
(minutes to hours, across a restart) instead of being given up, /status says what waits and why,
consolidation resumes without paying again for what it already wrote, explicit calls answer 503
at once while the breaker is open, and what a token budget of 0 means."""

import requests

from agentmemory_server.models import llm
from conftest import GEMINI_TEST_KEY, ManualClock, ToolCaller, hook, post, wait_for
from llm_support import responder

DOWN = [503] * 10_000  # every model request fails until the test clears it


def edit(sid, path, ts, project="demo"):
    return hook(sid, project=project, timestamp=ts,
                data={"tool_name": "Edit", "tool_input": {"file_path": path, "old_string": "a", "new_string": "b"},
                      "tool_output": "ok"})


def methods(call, sid="s1"):
    return [o.get("method") for o in call("memory_observations", sessionId=sid)["observations"]]


def outage(svc, clock, seconds, step=60):
    """The worker keeps draining while the provider stays down for ``seconds``."""
    for _ in range(int(seconds // step)):
        clock.advance(step)
        svc.drain()


def test_queued_model_work_waits_through_an_hours_long_outage_and_a_restart(llm_runtime, fake_gemini):
    """Jobs were given up after five waits (about 2.5 minutes of outage): an observation lost its
    model compression to any outage longer than that. Waiting for the model now uses up no
    attempts; the job is kept (backoff up to 10 minutes) for AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS,
    across a restart, and /status and diagnose say how much waits and why."""
    clock = ManualClock()
    settings = {"auto_compress": True, "llm_max_attempts": 1, "consolidation_enabled": "false"}
    rt = llm_runtime(clock=clock.clock, **settings)
    call, svc = ToolCaller(rt), llm.service(rt)
    for i in range(2):
        call("agent_observe", **edit("s1", f"src/f{i}.py", f"2026-11-01T10:0{i}:00Z"))
    fake_gemini.fail_next = list(DOWN)
    outage(svc, clock, 3 * 3600)
    jobs = rt.db.reader().jobs.stats()
    assert jobs["byKind"] == {"compress": 2} and jobs["waiting"] == 2
    sent = len(fake_gemini.generations())
    assert sent < 60  # the breaker's trials and the backed-off jobs, not one call a minute per job

    call("agent_observe", **edit("s1", "src/f2.py", "2026-11-01T10:02:00Z"))  # queued while the breaker is open
    [alert] = [a for a in call("status")["alerts"] if "model job" in a["message"]]
    assert alert["level"] == "warn" and "3 background model job(s) wait for the model" in alert["message"]
    assert "(3 compress; 2 tried and put back, the oldest queued 3.0 h ago)" in alert["message"]
    assert "the model failed repeatedly (circuit breaker" in alert["message"] and "HTTP 503" in alert["message"]
    assert "nothing is lost" in alert["fix"]
    check = {c["name"]: c for c in call("memory_diagnose")["checks"]}["llm-jobs"]
    assert check["status"] == "warn" and check["message"] == alert["message"]
    health_jobs = call("health")["llm"]["jobs"]
    assert health_jobs["waiting"] == 2 and health_jobs["maxAgeHours"] == 24
    assert health_jobs["oldestWaitingSeconds"] >= 3 * 3600

    rt.close()  # the server restarts in the middle of the outage
    rt = llm_runtime(clock=clock.clock, **settings)
    call, svc = ToolCaller(rt), llm.service(rt)
    outage(svc, clock, 3600)
    assert rt.db.reader().jobs.stats()["byKind"] == {"compress": 3}

    fake_gemini.fail_next = []  # the provider is back
    fake_gemini.responder = responder()
    clock.advance(600)  # at most the longest backoff
    assert svc.drain() == 3
    assert methods(call) == ["gemini"] * 3 and rt.db.reader().jobs.stats()["pending"] == 0
    assert svc.usage.snapshot()["jobsAbandoned"] == 0


def test_a_job_is_given_up_only_past_its_maximum_age(llm_runtime, fake_gemini):
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, auto_compress=True, llm_max_attempts=1, llm_job_max_age_hours=2)
    call, svc = ToolCaller(rt), llm.service(rt)
    call("agent_observe", **edit("s1", "src/a.py", "2026-11-01T10:00:00Z"))
    fake_gemini.fail_next = list(DOWN)
    outage(svc, clock, 7000, step=600)
    assert rt.db.reader().jobs.stats()["pending"] == 1
    outage(svc, clock, 1200, step=600)
    assert rt.db.reader().jobs.stats()["pending"] == 0
    assert svc.usage.snapshot()["jobsAbandoned"] == 1 and methods(call) == [None]  # the synthetic record stands


def test_consolidation_resumes_after_a_model_failure_without_paying_again_for_what_it_wrote(
        llm_runtime, fake_gemini):
    """A consolidation job whose model call failed wrote the deterministic memories and was done:
    the model's never came, and running it again would have sent every group again, those it had
    written included. Now the groups the model failed on stay unwritten, the job runs again once
    the model answers, and only those groups are sent."""
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, llm_max_attempts=1, consolidation_enabled="true")
    call, svc = ToolCaller(rt), llm.service(rt)
    fake_gemini.responder = responder()
    for project, path in (("alpha", "src/alpha_auth.py"), ("beta", "src/beta_billing.py")):
        for i in range(3):
            call("agent_observe", **edit(f"{project}-{i}", path, f"2026-11-0{i + 1}T10:00:00Z", project=project))
    with rt.db.transaction("test") as tx:  # a session without a project consolidates every project
        svc.enqueue(tx, "consolidate", "", {"project": None})
    fake_gemini.fail_next = [200, 503]  # alpha's call is answered, beta's fails
    assert svc.drain() == 1
    memories = call("memories_list")["memories"]
    assert {m["project"] for m in memories} == {"alpha"} and len(memories) == 2  # a memory and its fact
    assert {m["type"] for m in memories} == {"pattern", "fact"} and "Model memory 1" in {m["title"] for m in memories}
    assert rt.db.reader().jobs.stats()["byKind"] == {"consolidate": 1}  # beta waits for the model

    clock.advance(10)
    assert svc.drain() == 1
    prompts = fake_gemini.prompts()
    assert len(prompts) == 3 and "beta_billing" in prompts[2] and "alpha_auth" not in prompts[2]
    beta = [m for m in call("memories_list")["memories"] if m["project"] == "beta"]
    assert len(beta) == 2 and "Model memory 1" in {m["title"] for m in beta}  # the model's, not the deterministic
    assert rt.db.reader().jobs.stats()["pending"] == 0

    again = call("memory_consolidate", minObservations=1)  # nothing new: nothing is sent
    assert again["memories"] == [] and again["unchanged"] == 2 and len(fake_gemini.prompts()) == 3


def test_explicit_calls_answer_deterministically_at_once_while_the_workers_breaker_is_open(
        live_server, fake_gemini):
    """The background worker makes the background calls and holds the breaker they open; a
    request process knew only its own (closed) breaker, so POST /summarize sent its call to the
    dead provider and waited through the timeouts and retries before falling back. It now takes
    the deterministic path at once, sending nothing."""
    fake_gemini.fail_next = list(DOWN)
    server = live_server(env={"GEMINI_API_KEY": GEMINI_TEST_KEY, "GEMINI_API_BASE": fake_gemini.url,
                              "AGENTMEMORY_AUTO_COMPRESS": "true", "AGENTMEMORY_LLM_MAX_ATTEMPTS": "1",
                              "LLM_BREAKER_COOLDOWN_SECONDS": "600"})
    for n in range(3):
        body = hook("down", data={"tool_name": "Edit", "tool_input": {"file_path": "src/auth.py"},
                                  "tool_output": f"edited {n}"})
        assert post(server.api("/observe"), body).status_code == 201

    def worker_breaker_open() -> dict | None:
        breaker = requests.get(server.api("/health"), timeout=10).json()["llm"]["breaker"]
        return breaker if breaker["state"] == "open" and breaker["process"] == "worker" else None

    wait_for(worker_breaker_open, interval=0.2, message="the worker's breaker never opened")
    sent = len(fake_gemini.calls)
    summary = post(server.api("/summarize"), {"sessionId": "down"})
    assert summary.status_code == 200 and summary.json()["summary"]["method"] == "synthetic", summary.text
    consolidated = post(server.api("/consolidate"), {"minObservations": 1})
    assert consolidated.status_code == 200, consolidated.text
    assert len(fake_gemini.calls) == sent  # nothing was sent to the dead provider


NOTE = llm.Task("note", "You write a short note.", {
    "type": "object", "required": ["title"], "properties": {"title": {"type": "string", "minLength": 1}}})


def test_health_keeps_a_model_outages_last_error_marked_recovered_and_status_alerts_only_while_it_lasts(
        llm_runtime, fake_gemini):
    """After an outage /health kept llm.lastError (an HTTP 503 from hours ago) with nothing saying
    the model had answered since, so the server looked broken for good. The error is kept, with
    when it happened and when the model next answered; /status alerts only while it stands."""
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock)
    call, svc = ToolCaller(rt), llm.service(rt)
    fake_gemini.fail_next = list(DOWN)
    for _ in range(8):  # until the breaker opens
        try:
            svc.generate_json(NOTE, "write")
        except llm.LLMError:
            pass
    down = call("health")["llm"]
    assert down["status"] == "degraded" and "HTTP 503" in down["lastError"]
    assert down["lastErrorAt"] == clock.clock.iso() and down["recoveredAt"] is None
    assert any("HTTP 503" in a["message"] for a in call("status")["alerts"])

    fake_gemini.fail_next = []  # the provider is back
    fake_gemini.replies = [{"title": "back"}]
    clock.advance(3600)  # past the breaker's cooldown: the next call is its trial
    assert svc.generate_json(NOTE, "write") == {"title": "back"}
    up = call("health")["llm"]
    assert up["status"] == "healthy" and up["breaker"]["state"] == "closed"
    assert (up["lastError"], up["lastErrorAt"]) == (down["lastError"], down["lastErrorAt"])  # kept, to read about
    assert up["recoveredAt"] == clock.clock.iso() and up["recoveredAt"] > up["lastErrorAt"]
    assert not [a for a in call("status")["alerts"] if "503" in a["message"]], call("status")["alerts"]

    fake_gemini.fail_next = [503] * 10  # a new failure: not recovered from again
    clock.advance(60)
    try:
        svc.generate_json(NOTE, "write")
    except llm.LLMError:
        pass
    again = call("health")["llm"]
    assert again["recoveredAt"] is None and again["lastErrorAt"] == clock.clock.iso()


def _write_lock_held_by(other_rt):
    """Start a long write transaction of ``other_rt``'s store on a thread (as a replace import's
    one transaction) and return once it holds the store's write lock; the function returned
    releases it and waits until that transaction has committed."""
    import threading

    held, release = threading.Event(), threading.Event()

    def long_write():
        with other_rt.db.transaction("import") as tx:
            tx.records.set("mem:memories", "held", {"id": "held", "content": "held"}, now="2026-01-01T00:00:00Z")
            held.set()
            release.wait(120)

    holder = threading.Thread(target=long_write, daemon=True)
    holder.start()
    assert held.wait(60)

    def free():
        release.set()
        holder.join(60)
        assert not holder.is_alive()

    return free


def _observe_with_its_compress_job_run_as(call, svc, clock, kind):
    """Observe an edit, then queue its compress job again under the job kind ``kind`` (a test's
    wrapper around the real compress handler)."""
    call("agent_observe", **edit("s1", "src/a.py", "2026-11-01T10:00:00Z"))
    with svc.rt.db.transaction("requeue") as tx:
        [job] = tx.jobs.claim(clock.now + 60, 10, clock.now + 120)
        tx.jobs.done(job["kind"], job["ref"], job["queuedAt"])
        svc.jobs.enqueue(tx, kind, job["ref"], job["args"])


def _old_job_beside_another_writer(llm_runtime, make_runtime, fake_gemini, **settings):
    """A runtime on a manual clock whose compress jobs may be 2 h old at most and whose writes
    wait 1 s for the lock, with another writer on the same store (``rt.test_importer``) and the
    fake model answering: (clock, rt, call, svc)."""
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, auto_compress=True, llm_job_max_age_hours=2, lock_wait_seconds=1,
                     **settings)
    rt.test_importer = make_runtime()  # another writer on the same store
    fake_gemini.responder = responder()
    return clock, rt, ToolCaller(rt), llm.service(rt)


def test_a_job_past_its_maximum_age_whose_write_found_the_database_busy_is_kept_and_runs_once_it_is_free(
        llm_runtime, make_runtime, fake_gemini):
    """A compress job older than AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS (the server was down for hours)
    got its model answer, and its write then found the write lock taken (a replace import began).
    Before, the busy database went to the outage wait, which gives up a job past its maximum age:
    the model's answer was thrown away and the job dropped (jobsAbandoned). The maximum age is for
    model outages: now the job is kept, tried again 30 s later, and stores the model's answer."""
    from agentmemory_server.models import llm_jobs

    clock, rt, call, svc = _old_job_beside_another_writer(llm_runtime, make_runtime, fake_gemini)
    if "compress-during-import" not in llm_jobs.JOB_KINDS:

        @llm_jobs.job_handler("compress-during-import")
        def _compress_while_an_import_takes_the_lock(ctx, ref, args):
            """The real compress job; the first run's store write meets an import's write lock."""
            importer, ctx.rt.test_importer = ctx.rt.test_importer, None
            free = _write_lock_held_by(importer) if importer is not None else None
            try:
                llm_jobs.JOB_KINDS["compress"].run(ctx, ref, args)
            finally:
                if free is not None:
                    free()

    _observe_with_its_compress_job_run_as(call, svc, clock, "compress-during-import")  # the wrapper above
    clock.advance(3 * 3600)  # queued 3 h ago: past its maximum age of 2 h
    assert svc.drain() == 1
    assert len(fake_gemini.generations()) == 1  # the model answered; the write met the lock
    assert svc.usage.snapshot()["jobsAbandoned"] == 0, svc.usage.snapshot()
    assert rt.db.reader().jobs.stats()["pending"] == 1 and methods(call) == [None]
    assert svc.drain() == 0  # not before the busy database's retry delay
    clock.advance(llm_jobs.BUSY_RETRY_SECONDS)
    assert svc.drain() == 1
    assert methods(call) == ["gemini"] and rt.db.reader().jobs.stats()["pending"] == 0
    assert svc.usage.snapshot()["jobsAbandoned"] == 0


def test_a_job_past_its_maximum_age_that_never_gets_past_a_busy_store_uses_up_its_attempts_and_ends(
        llm_runtime, make_runtime, fake_gemini):
    """The store's waits cost a young job no attempt. Past its maximum age each one costs an
    attempt, so a job whose write the store keeps refusing as busy (a long import, or a bug the
    store reports as busy) ends after AGENTMEMORY_LLM_JOB_ATTEMPTS instead of being tried every
    30 s for ever. Before, such a job was kept with no attempt used, whatever its age."""
    from agentmemory_server.models import llm_jobs

    clock, rt, call, svc = _old_job_beside_another_writer(llm_runtime, make_runtime, fake_gemini,
                                                          llm_job_attempts=2)
    if "compress-always-busy" not in llm_jobs.JOB_KINDS:

        @llm_jobs.job_handler("compress-always-busy")
        def _compress_while_another_writer_always_holds_the_lock(ctx, ref, args):
            """The real compress job, whose store write meets another writer's lock on every run."""
            free = _write_lock_held_by(ctx.rt.test_importer)
            try:
                llm_jobs.JOB_KINDS["compress"].run(ctx, ref, args)
            finally:
                free()

    _observe_with_its_compress_job_run_as(call, svc, clock, "compress-always-busy")  # the handler above
    clock.advance(3 * 3600)  # queued 3 h ago: past its maximum age of 2 h
    for _ in range(2):
        assert svc.drain() == 1
        clock.advance(llm_jobs.JOB_RETRY_CAP)
    assert len(fake_gemini.generations()) == 2  # the model answered each time; each write met the lock
    assert svc.usage.snapshot()["jobsAbandoned"] == 1, svc.usage.snapshot()
    assert rt.db.reader().jobs.stats()["pending"] == 0 and methods(call) == [None]
