"""``agentmemory recompress --with-model``: the compressions and session summaries written by the
deterministic path (no model configured then, an outage, a used-up budget) are asked of the model
once one is configured, against the loopback fakes of the three wire protocols. Selectable,
estimated by a dry run that writes nothing, resumable without paying twice, stopping cleanly at
the budget or an outage with nothing lost."""

from __future__ import annotations

import json

import pytest

from agentmemory_server.kernel.scopes import PROFILES, SUMMARIES, obs_scope
from agentmemory_server.operations.recompress_model import recompress_with_model
from conftest import ManualClock, ToolCaller, hook
from llm_support import ANSWERS, responder
from test_cli import cli
from test_llm_cli import openai_env

DOWN = [503] * 10_000


def edit(sid: str, path: str, minute: int, project: str = "shop") -> dict:
    return hook(sid, project=project, timestamp=f"2026-11-01T10:{minute:02d}:00Z",
                data={"tool_name": "Edit", "tool_input": {"file_path": path, "old_string": "a", "new_string": "b"},
                      "tool_output": "ok"})


def written_without_a_model(make_runtime, sessions: dict[str, tuple[str, int]]):
    """Observations and summaries stored while no model was configured: ``sessions`` maps a
    session id to (project, how many edits). Returns that runtime."""
    rt = make_runtime(llm_provider="none")
    call = ToolCaller(rt)
    minute = 0
    for sid, (project, edits) in sessions.items():
        for n in range(edits):
            call("agent_observe", **edit(sid, f"src/{sid}_{n}.py", minute, project))
            minute += 1
        assert call("summarize", sessionId=sid)["summary"]["method"] == "synthetic"
    return rt


def observations(rt, sid: str) -> list[dict]:
    return sorted((obs for _key, obs in rt.db.reader().records.iter_scope(obs_scope(sid))), key=lambda o: o["id"])


def summary(rt, sid: str) -> dict:
    return rt.db.reader().records.get(SUMMARIES, sid)


def test_records_written_without_a_model_are_redone_once_one_is_configured(make_runtime, provider_runtime,
                                                                            model_api):
    written_without_a_model(make_runtime, {"s1": ("shop", 2), "s2": ("other", 1)})
    rt = provider_runtime(auto_compress=True, llm_reflect=False, consolidation_enabled="false")
    model_api.fake.responder = responder()
    before = {sid: (observations(rt, sid), summary(rt, sid)) for sid in ("s1", "s2")}
    assert all("method" not in obs for records, _summary in before.values() for obs in records)  # the capture's

    dry = recompress_with_model(rt, dry_run=True)
    assert dry["selected"] == {"observations": 3, "summaries": 2} and dry["provider"] == model_api.name
    assert dry["estimate"]["calls"] == 5 and dry["estimate"]["byFeature"]["compress"]["calls"] == 3
    assert dry["estimate"]["tokens"] > 5 * 300 and dry["fitsInBudget"] is True
    assert dry["budget"]["daily"] == 2_000_000 and dry["budget"]["used"] == 0
    assert "redone" not in dry and model_api.fake.generations() == []  # a dry run sends and writes nothing
    assert {sid: (observations(rt, sid), summary(rt, sid)) for sid in ("s1", "s2")} == before

    done = recompress_with_model(rt, project="shop")
    assert done["redone"] == {"observations": 2, "summaries": 1} and done["remaining"] == 0, done
    assert done["stopped"] is None and len(model_api.fake.generations()) == 3
    for obs in observations(rt, "s1"):
        assert obs["method"] == model_api.name and obs["title"] == ANSWERS["compress"]["title"], obs
    modelled = summary(rt, "s1")
    assert modelled["method"] == model_api.name and modelled["title"] == ANSWERS["summarize"]["title"]
    assert modelled["createdAt"] == before["s1"][1]["createdAt"]  # its place among past sessions stays
    assert (observations(rt, "s2"), summary(rt, "s2")) == before["s2"]  # another project's: not selected
    # the model's summary read the model's compressions, made first
    summary_prompt = model_api.fake.requests()[-1]
    assert ANSWERS["compress"]["title"] in summary_prompt.user

    # the next run pays only for what is left
    rest = recompress_with_model(rt)
    assert rest["selected"] == {"observations": 1, "summaries": 1} and rest["redone"] == rest["selected"], rest
    assert len(model_api.fake.generations()) == 5
    assert recompress_with_model(rt, dry_run=True)["selected"] == {"observations": 0, "summaries": 0}


def test_a_used_up_budget_stops_the_run_and_the_next_day_it_continues(make_runtime, llm_runtime, fake_gemini):
    written_without_a_model(make_runtime, {"s1": ("shop", 3)})
    clock = ManualClock()
    # room for about one call: the first crosses the budget, the next is stopped before sending
    rt = llm_runtime(clock=clock.clock, auto_compress=True, llm_daily_token_budget=300)
    fake_gemini.responder = responder()
    dry = recompress_with_model(rt, dry_run=True)
    assert dry["selected"] == {"observations": 3, "summaries": 1} and dry["fitsInBudget"] is False, dry
    assert dry["budget"]["left"] == 300

    first = recompress_with_model(rt)
    assert first["redone"] == {"observations": 1, "summaries": 0} and first["remaining"] == 3, first
    assert first["stopped"]["reason"] == "budget" and "daily token budget (300)" in first["stopped"]["message"]
    assert len(fake_gemini.generations()) == 1
    left = observations(rt, "s1")
    assert [obs.get("method") for obs in left].count("gemini") == 1  # the one answered is kept
    assert all(obs["title"].startswith("Edit src/") for obs in left if "method" not in obs)  # nothing lost
    assert summary(rt, "s1")["method"] == "synthetic"

    clock.advance(86_400)  # a new UTC day, a new budget: the rerun continues where it stopped
    second = recompress_with_model(rt, limit=2)
    assert second["selected"] == {"observations": 2, "summaries": 0}, second
    assert second["redone"] == {"observations": 1, "summaries": 0} and second["remaining"] == 1, second
    assert second["stopped"]["reason"] == "budget" and len(fake_gemini.generations()) == 2

    unlimited = llm_runtime(clock=clock.clock, auto_compress=True, llm_daily_token_budget=None)
    third = recompress_with_model(unlimited)
    assert third["redone"] == {"observations": 1, "summaries": 1} and third["stopped"] is None, third
    assert [obs["method"] for obs in observations(rt, "s1")] == ["gemini"] * 3
    assert summary(rt, "s1")["method"] == "gemini"
    assert len(fake_gemini.generations()) == 4  # one call per record over the three runs: none paid twice


def test_an_outage_stops_the_run_cleanly_and_a_rerun_finishes(make_runtime, llm_runtime, fake_gemini):
    written_without_a_model(make_runtime, {"s1": ("shop", 5)})
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, auto_compress=True, llm_max_attempts=1)
    before = observations(rt, "s1")
    fake_gemini.fail_next = list(DOWN)
    down = recompress_with_model(rt)
    assert down["stopped"]["reason"] == "providerDown" and down["skipped"]["failed"] == 3, down
    assert down["redone"] == {"observations": 0, "summaries": 0} and down["remaining"] == 3
    assert len(fake_gemini.generations()) == 3  # the breaker opened: nothing more was sent
    assert observations(rt, "s1") == before and summary(rt, "s1")["method"] == "synthetic"  # nothing lost

    fake_gemini.fail_next = []
    fake_gemini.responder = responder()
    clock.advance(60)  # past the breaker's cooldown
    back = recompress_with_model(rt)
    assert back["redone"] == {"observations": 5, "summaries": 1} and back["stopped"] is None, back
    assert summary(rt, "s1")["method"] == "gemini"


def test_recompress_with_model_from_the_cli(tmp_path, make_runtime, fake_openai):
    rt = written_without_a_model(make_runtime, {"s1": ("shop", 2)})
    fake_openai.responder = responder()
    env = openai_env(tmp_path, fake_openai.base, AGENTMEMORY_AUTO_COMPRESS="true")
    env.update({"AGENTMEMORY_DATABASE_URL": rt.settings.database_url} if rt.settings.database_url else {})
    dry = cli("recompress", "--with-model", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dryRun"] is True and report["selected"] == {"observations": 2, "summaries": 1}
    assert report["estimate"]["tokens"] > 0 and fake_openai.calls == []

    done = cli("recompress", "--with-model", "--since", "2026-11-01", "--limit", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["redone"] == {"observations": 2, "summaries": 0}
    assert "recompress --with-model: 100%" in done.stderr  # the progress bar

    bad = cli("recompress", "--with-model", "--since", "last week", env=env)
    assert bad.returncode == 1 and "--since: 'last week' is not a date" in bad.stderr
    batch = cli("recompress", "--with-model", "--batch", "5", env=env)
    assert batch.returncode == 1 and "--batch sizes the run without a model" in batch.stderr
    alone = cli("recompress", "--project", "shop", env=env)
    assert alone.returncode == 1 and "--project: only with --with-model" in alone.stderr
    no_model = cli("recompress", "--with-model", env={**env, "AGENTMEMORY_LLM_PROVIDER": "none"})
    assert no_model.returncode == 1 and "needs a model provider" in no_model.stderr


class CtrlCAfter:
    """A progress bar at whose ``after``-th step the user presses Ctrl-C."""

    def __init__(self, after: int):
        self.after, self.steps = after, 0

    def __call__(self, label: str, total: int) -> CtrlCAfter:
        return self

    def update(self, n: int = 1) -> None:
        self.steps += n
        if self.steps == self.after:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


def test_an_interrupted_run_keeps_what_it_wrote_and_the_rerun_does_not_pay_for_it(make_runtime, llm_runtime,
                                                                                   fake_gemini):
    written_without_a_model(make_runtime, {"s1": ("shop", 3)})
    rt = llm_runtime(auto_compress=True)
    fake_gemini.responder = responder()
    ToolCaller(rt)("memory_profile", project="shop")  # cached from the deterministic titles
    assert rt.db.reader().records.get(PROFILES, "shop") is not None
    with pytest.raises(KeyboardInterrupt):
        recompress_with_model(rt, progress=CtrlCAfter(2))
    assert [obs.get("method") for obs in observations(rt, "s1")].count("gemini") == 2
    assert rt.db.reader().records.get(PROFILES, "shop") is None  # made from the old titles: dropped
    rest = recompress_with_model(rt)
    assert rest["selected"] == {"observations": 1, "summaries": 1} and rest["redone"] == rest["selected"], rest
    assert len(fake_gemini.generations()) == 4  # three compressions and one summary: none paid twice


def generated_models(api) -> list[str]:
    """The model each generation request asked for, oldest first."""
    return [api.fake.model_of(c["path"], c["body"]) for c in api.fake.calls if api.fake.route(c["path"]) == "generate"]


def test_other_models_redoes_what_another_model_wrote_and_a_rerun_pays_nothing(make_runtime, provider_runtime,
                                                                               model_api):
    written_without_a_model(make_runtime, {"s1": ("shop", 2)})
    model_api.fake.responder = responder()
    settings = {"auto_compress": True, "llm_reflect": False, "consolidation_enabled": "false"}
    model_a = provider_runtime(llm_model="model-a", **settings)
    assert recompress_with_model(model_a)["redone"] == {"observations": 2, "summaries": 1}
    written = observations(model_a, "s1"), summary(model_a, "s1")
    assert {(o["method"], o["model"]) for o in written[0]} == {(model_api.name, "model-a")}
    assert (written[1]["method"], written[1]["model"]) == (model_api.name, "model-a")
    assert generated_models(model_api) == ["model-a"] * 3

    model_b = provider_runtime(llm_model="model-b", **settings)
    left = recompress_with_model(model_b)  # without the flag: another model's records are left
    assert left["selected"] == {"observations": 0, "summaries": 0} and left["redone"] == left["selected"], left
    assert (observations(model_b, "s1"), summary(model_b, "s1")) == written and len(generated_models(model_api)) == 3

    dry = recompress_with_model(model_b, other_models=True, dry_run=True)
    assert dry["selected"] == {"observations": 2, "summaries": 1} == dry["selectedFromOtherModels"], dry
    assert dry["estimate"]["calls"] == 3 and len(generated_models(model_api)) == 3  # a dry run sends nothing

    done = recompress_with_model(model_b, other_models=True)
    assert done["redone"] == {"observations": 2, "summaries": 1} and done["stopped"] is None, done
    assert generated_models(model_api) == ["model-a"] * 3 + ["model-b"] * 3
    assert {(o["method"], o["model"]) for o in observations(model_b, "s1")} == {(model_api.name, "model-b")}
    redone = summary(model_b, "s1")
    assert (redone["method"], redone["model"]) == (model_api.name, "model-b")
    assert redone["createdAt"] == written[1]["createdAt"]

    rerun = recompress_with_model(model_b, other_models=True)  # all model B's now: nothing to pay for
    assert rerun["selected"] == {"observations": 0, "summaries": 0} and len(generated_models(model_api)) == 6


def test_records_from_before_models_were_recorded_count_as_another_models_only_from_another_provider(
        make_runtime, llm_runtime, fake_gemini, fake_openai):
    from conftest import OPENAI_TEST_KEY

    rt = written_without_a_model(make_runtime, {"s1": ("shop", 2)})
    fake_gemini.responder = fake_openai.responder = responder()
    assert recompress_with_model(llm_runtime(auto_compress=True))["redone"] == {"observations": 2, "summaries": 1}
    # as an older release stored them: the provider in ``method``, no ``model``
    with rt.db.transaction("test") as tx:
        for obs in observations(rt, "s1"):
            obs.pop("model")
            tx.records.set(obs_scope("s1"), obs["id"], obs, now=obs["compressedAt"])
        old = summary(rt, "s1")
        old.pop("model")
        tx.records.set(SUMMARIES, "s1", old, now=old["createdAt"])
    same_provider = llm_runtime(auto_compress=True, llm_model="gemini-newer")
    unknown = recompress_with_model(same_provider, other_models=True, dry_run=True)
    assert unknown["selected"] == {"observations": 0, "summaries": 0}, unknown  # which gemini model: not known

    openai = make_runtime(llm_provider="openai", openai_api_key=OPENAI_TEST_KEY, openai_base_url=fake_openai.base,
                          llm_retry_backoff_seconds=0.0, auto_compress=True, llm_model="gpt-newer")
    assert recompress_with_model(openai)["selected"] == {"observations": 0, "summaries": 0}
    moved = recompress_with_model(openai, other_models=True)
    assert moved["redone"] == {"observations": 2, "summaries": 1} and len(fake_openai.generations()) == 3, moved
    assert {(o["method"], o["model"]) for o in observations(rt, "s1")} == {("openai", "gpt-newer")}
    assert (summary(rt, "s1")["method"], summary(rt, "s1")["model"]) == ("openai", "gpt-newer")
    assert len(fake_gemini.generations()) == 3  # the first run only


def test_other_models_from_the_cli(tmp_path, make_runtime, fake_openai):
    rt = written_without_a_model(make_runtime, {"s1": ("shop", 1)})
    fake_openai.responder = responder()
    env = openai_env(tmp_path, fake_openai.base, AGENTMEMORY_AUTO_COMPRESS="true", AGENTMEMORY_LLM_MODEL="model-a")
    env.update({"AGENTMEMORY_DATABASE_URL": rt.settings.database_url} if rt.settings.database_url else {})
    assert cli("recompress", "--with-model", env=env).returncode == 0
    env["AGENTMEMORY_LLM_MODEL"] = "model-b"
    done = cli("recompress", "--with-model", "--other-models", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["redone"] == {"observations": 1, "summaries": 1}
    assert summary(rt, "s1")["model"] == "model-b"
    alone = cli("recompress", "--other-models", env=env)
    assert alone.returncode == 1 and "--other-models: only with --with-model" in alone.stderr
