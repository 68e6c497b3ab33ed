"""Retrieval quality on the LoCoMo development split, through the product's own paths.

    python bench/locomo.py [DATA] [--modes bm25,vector,hybrid] [--provider local|hash] [--limit N]
        [--set module.NAME=VALUE ...] [--grid module.NAME=V1,V2 ...] [--out FILE] [--compare FILE]
        [--database-url postgresql://.../postgres]

DATA defaults to ../shared/bench/locomo-dev.json (relative to the repository); it is read for
evaluation only and never copied. Each conversation is loaded into a fresh temporary database
through the registry's ``agent_observe`` tool (one project per conversation, one session per
LoCoMo session, one observation per turn, timestamped with the session's date), the embedding
backlog is drained by the vector subsystem's own worker code, and every question is asked
through ``memory_smart_search`` restricted to that project. Hits map back to dia_ids through the
observation ids ``agent_observe`` returned. Metrics (macro-averaged per question): Recall@1/5/
10/20, Any@k, All@k, NDCG@10 (binary gains), MRR; categories 1-4 are the headline, category 5
(adversarial) is reported separately, each with a 95% bootstrap interval.

Generalisation (``--grid``): a product constant read at query time (``search.VECTOR_WEIGHT``,
a name under ``agentmemory_server.retrieval``) is tried at each value; leave-one-conversation-out
picks the value on four conversations and scores it on the fifth, rotated, and the pooled
held-out figure is printed beside the plain one (the product's current values). ``--out`` keeps
per-question rows; ``--compare`` prints paired differences with intervals against such a file: a
change counts when its interval excludes zero. Embeddings are cached on disk keyed by model and
text hash (``embed_cache.py``), so only the first run embeds. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel import search_fields  # noqa: E402
from agentmemory_server.retrieval import rerank, search, vectors  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import SETTINGS, Settings  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import contextual  # noqa: E402
from embed_cache import CachedCrossEncoder, CachedEmbedder, default_dir  # noqa: E402
from locomo_eval import HEADLINE, Rows, best_in_sample, cross_validate, paired  # noqa: E402
from locomo_eval import summary as summary_of  # noqa: E402

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
KS = (1, 5, 10, 20)
_EVIDENCE = re.compile(r"^D:?(\d+):(\d+)$")


# -- data ---------------------------------------------------------------------------------------------


def sessions_of(conversation: dict[str, Any]) -> list[tuple[int, str, list[dict]]]:
    """(number, date text, turns) of every real session, in order."""
    found = []
    for key, value in conversation.items():
        m = re.fullmatch(r"session_(\d+)", key)
        if m and isinstance(value, list) and value:
            found.append((int(m.group(1)), conversation.get(f"{key}_date_time", ""), value))
    return sorted(found)


def session_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def repair_evidence(evidence: list[Any], known: set[str]) -> list[str]:
    ids: list[str] = []
    for item in evidence:
        for token in re.split(r"[;,\s]+", str(item)):
            m = _EVIDENCE.match(token.strip())
            if m:
                dia = f"D{int(m.group(1))}:{int(m.group(2))}"
                if dia in known and dia not in ids:
                    ids.append(dia)
    return ids


# -- ingestion and search through the product ---------------------------------------------------------------


def turn_text(turn: dict[str, Any]) -> str:
    """A turn as a chat-logging client would write it down: who said what, in reported speech
    (``Caroline said, "..."``), plus the caption of a shared photo. The dense model reads this
    form better than ``Caroline: ...`` (bench README: +3-6 points; here vector R@10 +4);
    BM25 is indifferent to it."""
    text = f"{turn['speaker']} said, \"{turn.get('text', '')}\""
    if turn.get("blip_caption"):
        text += f" [shares a photo of {turn['blip_caption']}]"
    return text


def ingest(ctx: Ctx, sample: dict[str, Any]) -> dict[str, str]:
    """Observe every turn; returns observation id -> dia_id."""
    project = sample["sample_id"]
    mapping: dict[str, str] = {}
    for number, date_text, turns in sessions_of(sample["conversation"]):
        start = session_time(date_text)
        for i, turn in enumerate(turns):
            ts = start.replace(second=0) if start else None
            args = {"sessionId": f"{project}-session-{number}", "project": project,
                    "hookType": "observation", "content": turn_text(turn), "type": "conversation"}
            if ts is not None:
                args["timestamp"] = ts.strftime("%Y-%m-%dT%H:%M:") + f"{min(i, 59):02d}.{i:03d}Z"
            data, _ = registry.unwrap(registry.call(ctx, "agent_observe", args))
            mapping[data["observationId"]] = turn["dia_id"]
    return mapping


RERANK = False  # --rerank: ask for the cross-encoder second stage


def ask(ctx: Ctx, project: str, question: str, mode: str) -> tuple[list[dict], str]:
    data, _ = registry.unwrap(registry.call(ctx, "memory_smart_search", {
        "query": question, "project": project, "limit": 20, "includeLessons": False, "mode": mode,
        "rerank": RERANK}))
    return data["results"], data["mode"]


# -- metrics ----------------------------------------------------------------------------------------------------


def score(ranked: list[str], evidence: list[str]) -> dict[str, float]:
    gold = set(evidence)
    out: dict[str, float] = {}
    for k in KS:
        top = set(ranked[:k])
        out[f"R@{k}"] = len(gold & top) / len(gold)
        out[f"Any@{k}"] = float(bool(gold & top))
        out[f"All@{k}"] = float(gold <= top)
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in gold)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    out["NDCG@10"] = dcg / idcg
    first = next((i for i, d in enumerate(ranked) if d in gold), None)
    out["MRR"] = 0.0 if first is None else 1 / (first + 1)
    return out


def mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.fmean(r[k] for r in rows), 4) for k in rows[0]} if rows else {}


COLUMNS = ("R@1", "R@5", "R@10", "R@20", "Any@10", "All@10", "NDCG@10", "MRR")


def print_table(mode: str, per_question: list[tuple[int, dict[str, float]]]) -> dict[str, Any]:
    print(f"\n== {mode} ==")
    print(f"{'category':<16}{'n':>5} " + " ".join(f"{c:>8}" for c in COLUMNS))
    summary: dict[str, Any] = {}
    groups = [(CATEGORIES[c], [m for cat, m in per_question if cat == c]) for c in (1, 2, 3, 4)]
    groups += [("overall 1-4", [m for cat, m in per_question if cat in (1, 2, 3, 4)]),
               ("adversarial 5", [m for cat, m in per_question if cat == 5])]
    for name, rows in groups:
        if not rows:
            continue
        avg = mean(rows)
        summary[name] = {"n": len(rows), **avg}
        print(f"{name:<16}{len(rows):>5} " + " ".join(f"{avg[c]:>8.3f}" for c in COLUMNS))
    return summary


# -- parameters, tuned or set -------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(items: list[str]) -> dict[str, list[Any]]:
    """``module.NAME=v1,v2`` -> {module.NAME: [v1, v2]} (module under agentmemory_server.retrieval)."""
    out: dict[str, list[Any]] = {}
    for item in items:
        name, _, raw = item.partition("=")
        out[name.strip()] = [parse_value(v) for v in raw.split(",")]
    return out


CURRENT_RT: Any = None  # the runtime being asked: ``settings.NAME`` parameters are set on it


def _target(name: str) -> tuple[Any, str]:
    module_name, _, attr = name.rpartition(".")
    if module_name == "settings":
        return CURRENT_RT.settings._values, attr
    if module_name == "search_fields":  # a BM25 field weight (index-time on Tantivy)
        return search_fields.TEXT_WEIGHTS, attr
    if module_name in BENCH_MODULES:
        return BENCH_MODULES[module_name], attr
    return importlib.import_module(f"agentmemory_server.retrieval.{module_name}"), attr


BENCH_MODULES = {"contextual": contextual}  # bench-side variants the grids may set


def assign(values: dict[str, Any]) -> dict[str, Any]:
    """Set product parameters as the code reads them: a module constant under
    ``agentmemory_server.retrieval`` (``search.VECTOR_WEIGHT``) or a setting of the runtime being
    asked (``settings.search_max_per_session``); returns the old values."""
    old = {}
    for name, value in values.items():
        target, attr = _target(name)
        if isinstance(target, dict):
            if attr not in target:
                raise SystemExit(f"no setting {attr}")
            old[name], target[attr] = target[attr], value
            continue
        if not hasattr(target, attr):
            raise SystemExit(f"no parameter {name} in the product")
        old[name] = getattr(target, attr)
        setattr(target, attr, value)
    search.BM25_WEIGHTS = tuple(search_fields.TEXT_WEIGHTS.values())  # the query-time copy of the weights
    return old


def configurations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid; the first is the product's current values."""
    current = {}
    for name in grid:
        target, attr = _target(name)
        current[name] = target[attr] if isinstance(target, dict) else getattr(target, attr)
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return [current] + [c for c in combos if c != current]


def label(config: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"


# -- main ---------------------------------------------------------------------------------------------------------


class ScratchDatabases:
    """A fresh PostgreSQL database per conversation on the server of ``url`` (dropped after)."""

    def __init__(self, url: str | None):
        self.url = url
        self.count = 0

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql)

    def create(self) -> str | None:
        if not self.url:
            return None
        self.count += 1
        name = f"agentmemory_locomo_{os.getpid()}_{self.count}"
        self._admin(f"CREATE DATABASE {name}")
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{name}"))

    def drop(self, url: str | None) -> None:
        if url:
            self._admin(f"DROP DATABASE IF EXISTS {urlsplit(url).path.strip('/')} WITH (FORCE)")


SCRATCH = ScratchDatabases(None)  # --database-url: run every conversation on PostgreSQL
CACHES: list[Any] = []  # the disk caches in use, for their hit counts
EMBEDDER: str | None = None  # --embedder: a candidate from bench/candidates.py instead of the provider's
OVERRIDES: dict[str, Any] = {}  # --setting: runtime settings by name


def runtime_for(tmp: str, provider: str, engine: str, cache: Path | None, database_url: str | None = None) -> Any:
    rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider=provider,
                                         lexical_engine=engine, auth="off", database_url=database_url, **OVERRIDES))
    service = vectors.service(rt)
    if EMBEDDER:
        import candidates

        service.embedder = candidates.make(EMBEDDER)
        service._index = None  # the nearest-neighbour index is per model: open this one's
        service.index  # noqa: B018 - opened now, so draining the backlog also fills it
    if cache is not None and service.embedder is not None:
        service.embedder = CachedEmbedder(service.embedder, cache)
        CACHES.append(service.embedder)
    if cache is not None and RERANK and not isinstance(rerank._shared, CachedCrossEncoder):
        rerank._shared = CachedCrossEncoder(rerank.CrossEncoder(), cache)  # type: ignore[assignment]
    return rt


def run(data_path: Path, modes: list[str], provider: str, limit: int | None, engine: str = "tantivy",
        grid: dict[str, list[Any]] | None = None, cache: Path | None = None,
        index_grid: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    global CURRENT_RT
    index_configs = configurations(index_grid or {})
    samples = json.loads(data_path.read_text())[:limit]
    if any(name.startswith("settings.") for name in grid or {}):
        with tempfile.TemporaryDirectory() as tmp:  # the settings' current values, from a throwaway runtime
            CURRENT_RT = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, auth="off",
                                                         embedding_provider="none"))
            configs = configurations(grid or {})
            CURRENT_RT.close()
    else:
        configs = configurations(grid or {})
    labels = [label({**i, **c}) for i in index_configs for c in configs]
    rows: dict[str, dict[str, Rows]] = {m: {name: [] for name in labels} for m in modes}
    latencies: dict[str, list[float]] = {m: [] for m in modes}
    modes_seen: dict[str, set[str]] = {m: set() for m in modes}
    timing = {"ingest_s": 0.0, "embed_s": 0.0, "turns": 0}
    for sample in samples:
        for i, index_config in enumerate(index_configs):
            old_index = assign(index_config)  # index-time constants: in force while loading and asking
            try:
                mapping = load_and_ask(sample, provider, engine, cache, configs, index_config, rows,
                                       latencies if i == 0 else None, modes_seen, timing)
            finally:
                assign(old_index)
        print(f"{sample['sample_id']}: {len(mapping)} turns", flush=True)
    turns = max(timing["turns"], 1)
    configs = [{**i, **c} for i in index_configs for c in configs]
    print(f"\ningest: {timing['turns']} turns in {timing['ingest_s']:.1f} s "
          f"({timing['ingest_s'] / turns * 1000:.2f} ms/turn); embedding ({provider}): {timing['embed_s']:.1f} s "
          f"({timing['turns'] / max(timing['embed_s'], 1e-9):.0f} turns/s; disk cache: "
          f"{sum(c.hits for c in CACHES)} hits, {sum(c.misses for c in CACHES)} embedded)")
    summary: dict[str, Any] = {}
    for mode in modes:
        by_config = rows[mode]
        plain = by_config[label(configs[0])]
        summary[mode] = print_table(f"{mode} (plain: {label(configs[0])})", [(r["cat"], r["m"]) for r in plain])
        summary[mode]["rows"] = {"plain": plain}
        summary[mode]["ci"] = {"plain": intervals(plain)}
        if len(configs) > 1:
            best = best_in_sample(by_config, TUNE_METRICS)
            pooled, chosen = cross_validate(by_config, TUNE_METRICS)
            summary[mode]["ci"]["in_sample_best"] = intervals(by_config[best])
            summary[mode]["in_sample_best"] = best
            print_table(f"{mode} (cross-validated, leave one conversation out)", [(r["cat"], r["m"]) for r in pooled])
            summary[mode]["rows"]["cv"] = pooled
            summary[mode]["ci"]["cv"] = intervals(pooled)
            summary[mode]["chosen"] = chosen
            for name, config_rows in by_config.items():
                means = {m: statistics.fmean(r["m"][m] for r in config_rows if r["cat"] in HEADLINE)
                         for m in TUNE_METRICS}
                print(f"  in-sample {name}: " + ", ".join(f"{m} {v:.4f}" for m, v in means.items()))
            print(f"best on all conversations (in-sample): {best}")
            for conv, config in chosen.items():
                print(f"  held out {conv}: tuned on the others -> {config}")
        print_intervals(summary[mode]["ci"])
        lat = sorted(latencies[mode])
        summary[mode]["latency_ms"] = {"p50": round(statistics.median(lat), 2),
                                       "p95": round(lat[int(len(lat) * 0.95) - 1], 2)}
        summary[mode]["reported_modes"] = sorted(modes_seen[mode])
        print(f"query latency ({mode}, in-process smart-search): p50 {summary[mode]['latency_ms']['p50']} ms, "
              f"p95 {summary[mode]['latency_ms']['p95']} ms; modes reported: {sorted(modes_seen[mode])}")
    return {"timing": {k: round(v, 2) for k, v in timing.items()}, "modes": summary}


def load_and_ask(sample: dict[str, Any], provider: str, engine: str, cache: Path | None,
                 configs: list[dict[str, Any]], index_config: dict[str, Any], rows: dict[str, dict[str, Rows]],
                 latencies: dict[str, list[float]] | None, modes_seen: dict[str, set[str]],
                 timing: dict[str, float]) -> dict[str, str]:
    """One conversation into a fresh database, then every question under every query-time config."""
    global CURRENT_RT
    modes = list(rows)
    with tempfile.TemporaryDirectory() as tmp:
        url = SCRATCH.create()
        rt = CURRENT_RT = runtime_for(tmp, provider, engine, cache, url)
        try:
            ctx = Ctx(rt, source="bench")
            t0 = time.perf_counter()
            mapping = ingest(ctx, sample)
            rt.db.flush()  # searches read the committed lexical index, as on a running server
            t1 = time.perf_counter()
            vectors.service(rt).drain()
            contextual.blend_vectors(rt, vectors.service(rt))
            t2 = time.perf_counter()
            timing["ingest_s"] += t1 - t0
            timing["embed_s"] += t2 - t1
            timing["turns"] += len(mapping)
            known = set(mapping.values())
            for number, qa in enumerate(sample["qa"]):
                evidence = repair_evidence(qa.get("evidence") or [], known)
                if not evidence:
                    continue
                for c, config in enumerate(configs):
                    old = assign(config)
                    try:
                        for mode in modes:
                            q0 = time.perf_counter()
                            hits, used = ask(ctx, sample["sample_id"], qa["question"], mode)
                            if c == 0 and latencies is not None:
                                latencies[mode].append((time.perf_counter() - q0) * 1000)
                            modes_seen[mode].add(used)
                            ranked = list(dict.fromkeys(mapping[h["obsId"]] for h in hits if h["obsId"] in mapping))
                            rows[mode][label({**index_config, **config})].append(
                                {"conv": sample["sample_id"], "q": number, "cat": qa["category"],
                                 "m": score(ranked, evidence)})
                    finally:
                        assign(old)
        finally:
            rt.close()
            SCRATCH.drop(url)
    return mapping


TUNE_METRICS = ("R@10", "NDCG@10")
CI_METRICS = ("R@10", "NDCG@10")


def intervals(rows: Rows) -> dict[str, Any]:
    """Bootstrap intervals of the headline metrics, overall (1-4) and per category."""
    out: dict[str, Any] = {}
    for name, cats in [("overall 1-4", HEADLINE)] + [(CATEGORIES[c], (c,)) for c in HEADLINE]:
        out[name] = {m: summary_of(rows, m, cats) for m in CI_METRICS}
    return out


def print_intervals(ci: dict[str, Any]) -> None:
    print("95% bootstrap intervals (over questions):")
    for kind, table in ci.items():
        for name, metrics in table.items():
            text = "; ".join(f"{m} {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for m, v in metrics.items())
            print(f"  {kind:<15} {name:<12} {text}")


def compare(summary: dict[str, Any], baseline_path: Path) -> dict[str, Any]:
    """Paired differences against an earlier ``--out`` file (plain vs plain, cv vs cv)."""
    baseline = json.loads(baseline_path.read_text())["modes"]
    out: dict[str, Any] = {}
    print(f"\n== against {baseline_path} (paired bootstrap, 95%) ==")
    for mode, data in summary["modes"].items():
        if mode not in baseline:
            continue
        for kind, new_rows in data["rows"].items():
            old_rows = baseline[mode]["rows"].get(kind) or baseline[mode]["rows"]["plain"]
            for name, cats in [("overall 1-4", HEADLINE)] + [(CATEGORIES[c], (c,)) for c in HEADLINE]:
                for metric in CI_METRICS:
                    d = paired(new_rows, old_rows, metric, cats)
                    out[f"{mode}/{kind}/{name}/{metric}"] = d
                    flag = "  *" if d["significant"] else ""
                    print(f"  {mode:<7}{kind:<6}{name:<12}{metric:<8} {d['delta']:+.4f} [{d['lo']:+.4f}, "
                          f"{d['hi']:+.4f}]{flag}")
    return out


def default_data() -> Path:
    """../shared/bench/locomo-dev.json next to the repository (or next to a worktree's parent)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        path = base / "shared" / "bench" / "locomo-dev.json"
        if path.exists():
            return path
    return ROOT.parent / "shared" / "bench" / "locomo-dev.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(default_data()))
    parser.add_argument("--modes", default="bm25,vector,hybrid")
    parser.add_argument("--provider", default="local", choices=["local", "hash", "gemini", "none"])
    parser.add_argument("--limit", type=int, help="only the first N conversations")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the runtime, by its name in kernel/settings.py (repeatable), "
                             "e.g. local_model=minilm-l3 or embed_max_tokens=128")
    parser.add_argument("--engine", default="tantivy", choices=["tantivy", "fts5", "builtin"], help="lexical engine")
    parser.add_argument("--database-url", help="run on PostgreSQL: a server URL (a scratch database per conversation)")
    parser.add_argument("--set", action="append", default=[], metavar="module.NAME=VALUE",
                        help="run with a product constant changed, e.g. search.VECTOR_WEIGHT=0.7 (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="module.NAME=V1,V2",
                        help="tune a query-time constant over these values, leave one conversation out (repeatable)")
    parser.add_argument("--index-grid", action="append", default=[], metavar="module.NAME=V1,V2",
                        help="tune an index-time constant (search_fields.context, search.CONTEXT_RECORDS, "
                             "contextual.VECTOR_BLEND ...): every conversation is loaded again per value")
    parser.add_argument("--out", help="write per-question results here (JSON), for --compare later")
    parser.add_argument("--compare", help="an earlier --out file: print paired differences with 95%% intervals")
    parser.add_argument("--no-cache", action="store_true", help="embed everything again (no disk cache)")
    parser.add_argument("--rerank", action="store_true", help="ask smart-search to rerank with the cross-encoder")
    parser.add_argument("--embedder", help="a candidate local embedder (bench/candidates.py), e.g. bge-small")
    opts = parser.parse_args()
    global EMBEDDER, RERANK
    EMBEDDER, RERANK = opts.embedder, opts.rerank
    SCRATCH.url = opts.database_url
    for item in opts.setting:
        name, _, value = item.partition("=")
        spec = next(s for s in SETTINGS if s.name == name)
        OVERRIDES[name] = spec.type(value)
    fixed = {k: v[0] for k, v in parse_params(opts.set).items()}
    assign(fixed)
    cache = None if opts.no_cache else default_dir()
    contextual.install()
    summary = run(Path(opts.data), opts.modes.split(","), opts.provider, opts.limit, opts.engine,
                  parse_params(opts.grid), cache, parse_params(opts.index_grid))
    stamp = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "set": opts.set, "grid": opts.grid,
             "index_grid": opts.index_grid,
             "engine": opts.engine, "provider": opts.provider,
             "embedder": opts.embedder, "rerank": opts.rerank, "settings": opts.setting,
             "backend": "postgresql" if opts.database_url else "sqlite"}
    if opts.compare:
        summary["compare"] = compare(summary, Path(opts.compare))
    if opts.out:
        Path(opts.out).write_text(json.dumps({**stamp, **summary}))
    headline = {mode: {k: summary["modes"][mode]["overall 1-4"][k] for k in ("n", "R@5", "R@10", "R@20", "NDCG@10", "MRR")}
                for mode in summary["modes"]}
    cv = {mode: {m: v["mean"] for m, v in data["ci"]["cv"]["overall 1-4"].items()}
          for mode, data in summary["modes"].items() if "cv" in data["ci"]}
    print(json.dumps({"benchmark": "locomo-dev", **stamp, "overall_1_4": headline, "cross_validated": cv,
                      "timing": summary["timing"]}))


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
