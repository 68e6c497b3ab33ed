"""The context block as retrieval: does the block a new session gets contain the evidence?

    python bench/context_recall.py [DATA] [--provider local|hash] [--limit N] [--budget TOKENS]
        [--without-relevant]

Each LoCoMo conversation is loaded as bench/locomo.py loads it (one project, one session per
LoCoMo session, one observation per turn). Then, for each question, a new session of that
project starts with the question as its first prompt (a ``prompt_submit`` observation), the
context block is compiled through the ``context`` tool under the budget (default: the
TOKEN_BUDGET setting), and each evidence turn counts as found when its text is in the block.
The question's session is deleted afterwards so it is not found by the next question. Prints
evidence recall within budget (the share of evidence turns in the block, macro-averaged over
questions, with a 95% bootstrap interval), Any/All, and block tokens, per category;
``--without-relevant`` compiles the block without the relevant-records provider, as before it.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from embed_cache import CachedEmbedder, default_dir  # noqa: E402
from locomo_eval import HEADLINE, summary  # noqa: E402

from agentmemory_server import wiring  # noqa: E402
from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.retrieval import vectors  # noqa: E402

PROBE_CHARS = 80  # an evidence turn is found when the first 80 characters of its text are in the block


def call(ctx: Ctx, name: str, args: dict[str, Any]) -> dict[str, Any]:
    data, _ = registry.unwrap(registry.call(ctx, name, args))
    return data


def probe(turn: dict[str, Any]) -> str:
    return escape(" ".join(locomo.turn_text(turn).split())[:PROBE_CHARS])


def run(data: Path, provider: str, limit: int | None, budget: int | None, relevant: bool) -> dict[str, Any]:
    samples = json.loads(data.read_text())[:limit]
    hooks = wiring.HOOKS
    if not relevant:
        hooks = dataclasses.replace(hooks, context_blocks=tuple(p for p in hooks.context_blocks if p[0] != "relevant"))
    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    for sample in samples:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider=provider,
                                         auth="off")
            rt = wiring.build_runtime(settings, hooks=hooks)
            try:
                service = vectors.service(rt)
                if service.embedder is not None:
                    service.embedder = CachedEmbedder(service.embedder, default_dir())
                ctx = Ctx(rt, source="bench")
                locomo.ingest(ctx, sample)
                rt.db.flush()
                service.drain()
                turns = {t["dia_id"]: t for _, _, ts in locomo.sessions_of(sample["conversation"]) for t in ts}
                project = sample["sample_id"]
                for number, qa in enumerate(sample["qa"]):
                    evidence = locomo.repair_evidence(qa.get("evidence") or [], set(turns))
                    if not evidence:
                        continue
                    sid = f"{project}-question-{number}"
                    call(ctx, "agent_observe", {"sessionId": sid, "project": project, "hookType": "prompt_submit",
                                                "data": {"prompt": qa["question"]}})
                    t0 = time.perf_counter()
                    args: dict[str, Any] = {"sessionId": sid, "project": project}
                    if budget:
                        args["budget"] = budget
                    block = call(ctx, "context", args)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    call(ctx, "memory_forget", {"sessionId": sid})
                    text = " ".join(block["context"].split())
                    found = [probe(turns[d]) in text for d in evidence]
                    rows.append({"conv": project, "q": number, "cat": qa["category"], "m": {
                        "recall": sum(found) / len(found), "any": float(any(found)), "all": float(all(found)),
                        "tokens": float(block["tokens"])}})
            finally:
                rt.close()
        print(f"{sample['sample_id']}: done", flush=True)
    return {"rows": rows, "latency_ms": {"p50": round(statistics.median(latencies), 2),
                                         "p95": round(sorted(latencies)[int(len(latencies) * 0.95) - 1], 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(locomo.default_data()))
    parser.add_argument("--provider", default="local", choices=["local", "hash", "none"])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--budget", type=int, help="token budget (default: the TOKEN_BUDGET setting)")
    parser.add_argument("--without-relevant", action="store_true")
    parser.add_argument("--out")
    opts = parser.parse_args()
    result = run(Path(opts.data), opts.provider, opts.limit, opts.budget, not opts.without_relevant)
    rows = result["rows"]
    figures: dict[str, Any] = {}
    print(f"\n{'category':<14}{'n':>5}  {'recall':>22}  {'any':>6}  {'all':>6}  {'tokens':>7}")
    for name, cats in [(locomo.CATEGORIES[c], (c,)) for c in HEADLINE] + [("overall 1-4", HEADLINE)]:
        rec = summary(rows, "recall", cats)
        figures[name] = {"recall": rec, **{m: summary(rows, m, cats)["mean"] for m in ("any", "all", "tokens")}}
        f = figures[name]
        print(f"{name:<14}{rec['n']:>5}  {rec['mean']:.3f} [{rec['lo']:.3f}, {rec['hi']:.3f}]  {f['any']:>6.3f}  "
              f"{f['all']:>6.3f}  {f['tokens']:>7.0f}")
    print(f"context latency: p50 {result['latency_ms']['p50']} ms, p95 {result['latency_ms']['p95']} ms")
    stamp = {"benchmark": "locomo-context", "date": time.strftime("%Y-%m-%d"), "commit": locomo.commit(),
             "provider": opts.provider, "budget": opts.budget or "TOKEN_BUDGET", "relevant": not opts.without_relevant}
    if opts.out:
        Path(opts.out).write_text(json.dumps({**stamp, "modes": {"context": {"rows": {"plain": rows}}}}))
    print(json.dumps({**stamp, "overall_1_4": figures["overall 1-4"], "latency_ms": result["latency_ms"]}))


if __name__ == "__main__":
    main()
