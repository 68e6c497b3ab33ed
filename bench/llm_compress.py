"""What the LLM layer costs, for each provider (gemini, openai, anthropic) behind its loopback fake
from tests/ (no network):

1. **Tokens per feature** (always): simulated coding sessions (bench/coding_session.py) go
   through the whole model pipeline in process: every observation is compressed in the
   background, each session end queues its summary, slot reflection, consolidation and graph
   extraction, each session is crystallized, and the project is reflected into insights at the
   end. Settings are the defaults, except that the two features that are off by default
   (AGENTMEMORY_AUTO_COMPRESS, GRAPH_EXTRACTION_ENABLED) are turned on to be measured. Tokens
   are what each fake reports in its API's usage fields: ``len(text) / 4`` of what is really
   sent (our real prompts) and of the fakes' canned answers, so prompt figures are close to a
   real tokenizer's and completion figures depend on the canned answers.
2. **What the low-value filter saves** (always): the same sessions with the filter off; the
   difference in compression calls and tokens.
3. **Request-path cost** (``--latency``): observe latency with AGENTMEMORY_AUTO_COMPRESS off and
   on, in process and over HTTP against the real server, with the model answering and stalled,
   then how fast the backlog drains.

    python bench/llm_compress.py [--providers gemini,openai,anthropic] [--sessions 5] [--tools 100]
                                 [--latency] [--clients 8] [--requests 2000] [--model-ms 0] [--in-process 3000]

The machine's cores are shared with the load generator and the fakes, so latency figures are
noisy; the comparison between runs is the point. Prints the date and commit first, and a JSON
line of everything last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src"), str(ROOT / "tests")]

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.kernel.util import Clock  # noqa: E402
from agentmemory_server.models import llm  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402
from coding_session import SHELL_MIX, TOOL_MIX, composition, session_events  # noqa: E402
from ingest import payload, pct, run, start_server  # noqa: E402
from llm_support import responder  # noqa: E402

KEY = "bench-key-0123456789"
ANSWER = {"type": "command_run", "title": "Ran the test suite", "facts": ["42 tests passed"],
          "narrative": "The agent ran pytest; everything passed.", "concepts": ["pytest", "testing"],
          "files": [], "importance": 4}
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC).timestamp()
ON_BY_DEFAULT = {"compress": False, "graph": False, "summaries": True, "reflect": True, "crystallize": True,
                 "consolidation": True}


# -- the providers behind their fakes -------------------------------------------------------------------


def start_fake(name: str) -> Any:
    if name == "gemini":
        from fake_gemini import FakeGemini
        return FakeGemini(api_key=KEY)
    if name == "openai":
        from fake_openai import FakeOpenAI
        return FakeOpenAI(api_key=KEY)
    from fake_anthropic import FakeAnthropic
    return FakeAnthropic(api_key=KEY)


def provider_settings(name: str, fake: Any) -> dict[str, Any]:
    if name == "gemini":
        return {"llm_provider": "gemini", "gemini_api_key": KEY, "gemini_api_base": fake.url}
    if name == "openai":
        return {"llm_provider": "openai", "openai_api_key": KEY, "openai_base_url": fake.base}
    return {"llm_provider": "anthropic", "anthropic_api_key": KEY, "anthropic_base_url": fake.url}


def provider_env(name: str, fake: Any) -> dict[str, str]:
    names = {"llm_provider": "AGENTMEMORY_LLM_PROVIDER", "gemini_api_key": "GEMINI_API_KEY",
             "gemini_api_base": "GEMINI_API_BASE", "openai_api_key": "OPENAI_API_KEY",
             "openai_base_url": "OPENAI_BASE_URL", "anthropic_api_key": "ANTHROPIC_API_KEY",
             "anthropic_base_url": "ANTHROPIC_BASE_URL"}
    return {names[k]: v for k, v in provider_settings(name, fake).items()}


# -- 1 and 2: tokens per feature, and what the filter saves -----------------------------------------------


def pipeline(name: str, sessions: int, tools: int, seed: int, skip_low_value: bool) -> dict[str, Any]:
    """Run the sessions through every model feature; the usage rows and filter counts."""
    fake = start_fake(name)
    fake.responder = responder()
    now = [START]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {}, data_dir=tmp, background_jobs=False, embedding_provider="none", auth="off", auto_compress=True,
            graph_extraction_enabled=True, compress_skip_low_value=skip_low_value, **provider_settings(name, fake))
        rt = build_runtime(settings, clock=Clock(lambda: now[0]))
        try:
            ctx, svc, observations = Ctx(rt, source="bench"), llm.service(rt), 0
            for s in range(sessions):
                events = session_events(seed, s, tools)
                for event in events:
                    registry.call(ctx, "agent_observe", event)
                observations += len(events)
                svc.drain()
                registry.call(ctx, "session_end", {"sessionId": events[0]["sessionId"]})
                svc.drain()
                registry.call(ctx, "memory_crystallize", {"sessionId": events[0]["sessionId"]})
                now[0] += 3600  # an hour between sessions (past the consolidation cooldown)
            registry.call(ctx, "memory_reflect", {"project": "shop"})
            usage = svc.health()
            rows = rt.db.reader().usage.rows("0000-01-01", "9999-12-31")
        finally:
            rt.close()
            fake.close()
    return {"observations": observations, "rows": rows, "skipped": usage["skippedLowValue"],
            "reasons": usage["lowValueReasons"], "skippedBudget": usage["skippedBudget"]}


def per_feature(rows: list[dict[str, Any]], observations: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        f = out.setdefault(row["feature"], {"calls": 0, "promptTokens": 0, "completionTokens": 0})
        for key in f:
            f[key] += row[key]
    for f in out.values():
        total = f["promptTokens"] + f["completionTokens"]
        f["tokensPer100Obs"] = round(total * 100 / observations)
        f["tokensPerCall"] = round(total / f["calls"]) if f["calls"] else None
    return out


def tokens(name: str, sessions: int, tools: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    filtered = pipeline(name, sessions, tools, seed, skip_low_value=True)
    unfiltered = pipeline(name, sessions, tools, seed, skip_low_value=False)
    features = per_feature(filtered["rows"], filtered["observations"])
    without = per_feature(unfiltered["rows"], unfiltered["observations"])["compress"]
    with_filter = features["compress"]
    saved_calls = without["calls"] - with_filter["calls"]
    saved_tokens = (without["promptTokens"] + without["completionTokens"]) - (
        with_filter["promptTokens"] + with_filter["completionTokens"])
    result = {"provider": name, "observations": filtered["observations"], "features": features,
              "filter": {"compressCallsWithout": without["calls"], "compressCallsWith": with_filter["calls"],
                         "savedCalls": saved_calls, "savedShare": round(saved_calls / without["calls"], 3),
                         "savedTokens": saved_tokens, "reasons": filtered["reasons"]},
              "skippedBudget": filtered["skippedBudget"], "seconds": round(time.perf_counter() - started, 1)}
    print_tokens(result)
    return result


def print_tokens(r: dict[str, Any]) -> None:
    print(f"\n[{r['provider']}] {r['observations']} observations; model tokens per feature "
          f"(default settings, compress and graph switched on):")
    print(f"  {'feature':<14} {'default':<8} {'calls':>6} {'prompt':>10} {'completion':>11} {'per call':>9} "
          f"{'per 100 obs':>12}")
    for feature, f in sorted(r["features"].items()):
        default = {True: "on", False: "off"}.get(ON_BY_DEFAULT.get(feature), "-")
        print(f"  {feature:<14} {default:<8} {f['calls']:>6} {f['promptTokens']:>10,} {f['completionTokens']:>11,} "
              f"{f['tokensPerCall'] or 0:>9,} {f['tokensPer100Obs']:>12,}")
    total = sum(f["tokensPer100Obs"] for f in r["features"].values())
    print(f"  {'all':<14} {'':<8} {'':>6} {'':>10} {'':>11} {'':>9} {total:>12,}")
    flt = r["filter"]
    print(f"  low-value filter: {flt['compressCallsWith']} compression calls instead of {flt['compressCallsWithout']}"
          f" (saves {flt['savedCalls']} = {flt['savedShare']:.0%} of calls, {flt['savedTokens']:,} tokens); "
          f"skipped by reason: {flt['reasons']}")


# -- 3: the request path --------------------------------------------------------------------------------------


def in_process(name: str, n: int, batch: int = 100) -> dict:
    """p50/p95 of in-process observe with the flag off and on (interleaved batches)."""
    runtimes, times = {}, {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        nowhere = type("Nowhere", (), {"url": "http://127.0.0.1:9", "base": "http://127.0.0.1:9/v1"})()
        for label, on in (("off", False), ("on", True)):  # no model call is made here: only jobs are queued
            provider = provider_settings(name, nowhere) if on else {}
            runtimes[label] = build_runtime(Settings.from_env(
                {}, data_dir=f"{tmp}/{label}", background_jobs=False, embedding_provider="none", auth="off",
                auto_compress=on, **provider))
        try:
            for start in range(0, n, batch):
                for label, rt in runtimes.items():
                    ctx = Ctx(rt)
                    for i in range(start, min(n, start + batch)):
                        body = json.loads(payload(label, 0, i))
                        t0 = time.perf_counter()
                        registry.call(ctx, "agent_observe", body)
                        times[label].append(time.perf_counter() - t0)
            queued = runtimes["on"].db.reader().jobs.stats()["pending"]
        finally:
            for rt in runtimes.values():
                rt.close()
    result = {f"{label}_{p}_ms": round(pct(values, p), 3) for label, values in times.items() for p in (50, 95)}
    result.update(observations=n, jobs_queued=queued)
    print(f"{'in-process observe':>22}: off p50 {result['off_50_ms']} / p95 {result['off_95_ms']} ms, "
          f"on p50 {result['on_50_ms']} / p95 {result['on_95_ms']} ms ({n} each, {queued} jobs queued)")
    return result


def measure(label: str, clients: int, total: int, env: dict[str, str], fake: Any = None,
            stall: bool = False) -> tuple[dict, str, object, tempfile.TemporaryDirectory]:
    tmp = tempfile.TemporaryDirectory()
    proc, url = start_server(tmp.name, 32, env)
    run(url, clients, min(400, total), f"warmup-{label}")
    if stall and fake is not None:
        fake.stall()
    lat, elapsed, errors = run(url, clients, total, label)
    result = {"run": label, "observations": len(lat), "errors": errors, "obs_per_s": round(len(lat) / elapsed, 1),
              "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2), "p99_ms": round(pct(lat, 99), 2)}
    print(f"{label:>22}: {result['obs_per_s']} obs/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
          f"p99 {result['p99_ms']} ms, errors {errors}")
    return result, url, proc, tmp


def drain(url: str, timeout: float) -> dict:
    start = time.perf_counter()
    first = requests.get(url + "/agentmemory/health", timeout=30).json()["llm"]
    while True:
        section = requests.get(url + "/agentmemory/health", timeout=30).json()["llm"]
        if section["jobs"]["pending"] == 0 or time.perf_counter() - start > timeout:
            break
        time.sleep(0.25)
    seconds = time.perf_counter() - start
    done = section["jobsDone"] - first["jobsDone"]
    return {"pending_at_start": first["jobs"]["pending"], "left": section["jobs"]["pending"],
            "drain_seconds": round(seconds, 1), "jobs_per_s": round(done / seconds, 1) if seconds else None,
            "model_calls": section["calls"], "prompt_tokens": section["promptTokens"],
            "output_tokens": section["outputTokens"], "skipped_low_value": section["skippedLowValue"],
            "failed": section["failed"]}


def stop(proc, tmp) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    tmp.cleanup()


def latency(name: str, args: argparse.Namespace) -> dict:
    print(f"\n[{name}] request path")
    local = in_process(name, args.in_process)
    fake = start_fake(name)

    def answer(_prompt: Any) -> dict:
        time.sleep(args.model_ms / 1000)
        return ANSWER

    fake.responder = answer
    llm_env = {**provider_env(name, fake), "AGENTMEMORY_AUTO_COMPRESS": "true", "EMBEDDING_PROVIDER": "none",
               "CONSOLIDATION_ENABLED": "false", "AGENTMEMORY_AUTH": "off"}
    results = []
    try:
        off, _url, proc, tmp = measure("auto-compress off", args.clients, args.requests,
                                       {"EMBEDDING_PROVIDER": "none", "AGENTMEMORY_AUTH": "off"})
        stop(proc, tmp)
        results.append(off)
        on, url, proc, tmp = measure("auto-compress on", args.clients, args.requests, llm_env)
        drained = drain(url, args.drain_timeout)
        stop(proc, tmp)
        results.append({**on, **drained})
        print(f"{'backlog':>22}: {drained['pending_at_start']} queued after the run, drained in "
              f"{drained['drain_seconds']} s ({drained['jobs_per_s']} jobs/s); {drained['model_calls']} model calls, "
              f"{drained['skipped_low_value']} skipped as low-value, {drained['prompt_tokens']} prompt / "
              f"{drained['output_tokens']} output tokens")
        stalled, _url, proc, tmp = measure("on, model stalled", args.clients, args.requests, llm_env, fake, stall=True)
        fake.release()
        stop(proc, tmp)
        results.append(stalled)
    finally:
        fake.close()
    return {"provider": name, "in_process": local, "runs": results}


def commit() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--providers", default="gemini,openai,anthropic")
    ap.add_argument("--sessions", type=int, default=5, help="simulated sessions for the token figures")
    ap.add_argument("--tools", type=int, default=100, help="tool calls per simulated session")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--latency", action="store_true", help="also measure the request path (HTTP, slower)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--model-ms", type=float, default=0.0, help="delay of every fake model answer")
    ap.add_argument("--drain-timeout", type=float, default=600.0)
    ap.add_argument("--in-process", type=int, default=3000, help="observations per runtime in process")
    args = ap.parse_args()
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    print(f"bench/llm_compress.py  {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}  commit {commit()}")
    sample = session_events(args.seed, 0, args.tools)
    print(f"simulated session: {len(sample)} events; tool mix {dict(TOOL_MIX)}; shell mix {dict(SHELL_MIX)}")
    print(f"session 0 by tool: {composition(sample)}")
    token_results = [tokens(name, args.sessions, args.tools, args.seed) for name in providers]
    latency_results = [latency(name, args) for name in providers] if args.latency else []
    print(json.dumps({"bench": "llm", "commit": commit(), "sessions": args.sessions, "tools": args.tools,
                      "seed": args.seed, "tokens": token_results, "latency": latency_results,
                      "clients": args.clients, "requests": args.requests, "model_ms": args.model_ms}))


if __name__ == "__main__":
    main()
