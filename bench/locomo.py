"""Retrieval quality on the LoCoMo development split, through the product's own paths.

    python bench/locomo.py [DATA] [--modes bm25,vector,hybrid] [--provider local|hash] [--limit N]
                           [--database-url postgresql://.../postgres]

DATA defaults to ../shared/bench/locomo-dev.json (relative to the repository); it is read for
evaluation only and never copied. Each conversation is loaded into a fresh temporary database
through the registry's ``agent_observe`` tool (one project per conversation, one session per
LoCoMo session, one observation per turn, timestamped with the session's date), the embedding
backlog is drained by the vector subsystem's own worker code, and every question is asked
through ``memory_smart_search`` restricted to that project. Hits map back to dia_ids through the
observation ids ``agent_observe`` returned. Metrics (macro-averaged per question): Recall@1/5/
10/20, Any@k, All@k, NDCG@10 (binary gains), MRR; categories 1-4 are the headline, category 5
(adversarial) is reported separately. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
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
from agentmemory_server.retrieval import vectors  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import SETTINGS, Settings  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402

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


def ask(ctx: Ctx, project: str, question: str, mode: str) -> tuple[list[dict], str]:
    data, _ = registry.unwrap(registry.call(ctx, "memory_smart_search", {
        "query": question, "project": project, "limit": 20, "includeLessons": False, "mode": mode}))
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


def run(data_path: Path, modes: list[str], provider: str, limit: int | None, engine: str = "tantivy",
        database_url: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    samples = json.loads(data_path.read_text())[:limit]
    results: dict[str, list[tuple[int, dict[str, float]]]] = {m: [] for m in modes}
    latencies: dict[str, list[float]] = {m: [] for m in modes}
    modes_seen: dict[str, set[str]] = {m: set() for m in modes}
    timing = {"ingest_s": 0.0, "embed_s": 0.0, "turns": 0}
    scratch = ScratchDatabases(database_url)
    for sample in samples:
        with tempfile.TemporaryDirectory() as tmp:
            url = scratch.create()
            rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider=provider,
                                                 lexical_engine=engine, auth="off", database_url=url,
                                                 **(overrides or {})))
            try:
                ctx = Ctx(rt, source="bench")
                t0 = time.perf_counter()
                mapping = ingest(ctx, sample)
                rt.db.flush()  # searches read the committed lexical index, as on a running server
                t1 = time.perf_counter()
                vectors.service(rt).drain()
                t2 = time.perf_counter()
                timing["ingest_s"] += t1 - t0
                timing["embed_s"] += t2 - t1
                timing["turns"] += len(mapping)
                known = set(mapping.values())
                for qa in sample["qa"]:
                    evidence = repair_evidence(qa.get("evidence") or [], known)
                    if not evidence:
                        continue
                    for mode in modes:
                        q0 = time.perf_counter()
                        hits, used = ask(ctx, sample["sample_id"], qa["question"], mode)
                        latencies[mode].append((time.perf_counter() - q0) * 1000)
                        modes_seen[mode].add(used)
                        ranked = list(dict.fromkeys(mapping[h["obsId"]] for h in hits if h["obsId"] in mapping))
                        results[mode].append((qa["category"], score(ranked, evidence)))
            finally:
                rt.close()
                scratch.drop(url)
        print(f"{sample['sample_id']}: {len(mapping)} turns", flush=True)
    turns = max(timing["turns"], 1)
    print(f"\ningest: {timing['turns']} turns in {timing['ingest_s']:.1f} s "
          f"({timing['ingest_s'] / turns * 1000:.2f} ms/turn); embedding ({provider}): {timing['embed_s']:.1f} s "
          f"({timing['turns'] / max(timing['embed_s'], 1e-9):.0f} turns/s)")
    summary: dict[str, Any] = {}
    for mode in modes:
        lat = sorted(latencies[mode])
        summary[mode] = print_table(mode, results[mode])
        summary[mode]["latency_ms"] = {"p50": round(statistics.median(lat), 2),
                                       "p95": round(lat[int(len(lat) * 0.95) - 1], 2)}
        summary[mode]["reported_modes"] = sorted(modes_seen[mode])
        print(f"query latency ({mode}, in-process smart-search): p50 {summary[mode]['latency_ms']['p50']} ms, "
              f"p95 {summary[mode]['latency_ms']['p95']} ms; modes reported: {sorted(modes_seen[mode])}")
    return {"timing": {k: round(v, 2) for k, v in timing.items()}, "modes": summary}


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
    opts = parser.parse_args()
    overrides = {}
    for item in opts.setting:
        name, _, value = item.partition("=")
        spec = next(s for s in SETTINGS if s.name == name)
        overrides[name] = spec.type(value)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"locomo-dev on {'postgresql' if opts.database_url else 'sqlite'}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit or '?'}", flush=True)
    summary = run(Path(opts.data), opts.modes.split(","), opts.provider, opts.limit, opts.engine, opts.database_url,
                  overrides)
    headline = {mode: {k: summary["modes"][mode]["overall 1-4"][k] for k in ("n", "R@5", "R@10", "R@20", "NDCG@10", "MRR")}
                for mode in summary["modes"]}
    print(json.dumps({"benchmark": "locomo-dev", "provider": opts.provider, "settings": opts.setting,
                      "backend": "postgresql" if opts.database_url else "sqlite", "overall_1_4": headline,
                      "timing": summary["timing"]}))


if __name__ == "__main__":
    main()
