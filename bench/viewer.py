"""The viewer's costs at a given corpus size: hub fan-out, the viewer's tools, event latency
over a real WebSocket, and (when Chromium is installed) the page itself.

    python bench/viewer.py [--observations 10000] [--memories 1000] [--events 200] [--no-browser]

1. Hub publish with 16 subscribers of which one never reads (its queue fills, it is dropped):
   the cost of one publish stays a few microseconds, it never waits.
2. In-process tool latency on an imported corpus (sessions of 100 observations over 20
   projects, plus memories): viewer_overview, viewer_activity (first page and a deep page),
   viewer_graph.
3. A real server (gunicorn gthread): POST /observe -> the event on an open WebSocket, p50/p95.
4. Chromium + Playwright on the same corpus: time until the Timeline shows the total, time to
   scroll to the oldest entry, DOM rows alive, graph ready.

Prints figures and ends with one JSON line. Timings on a shared 2-core machine are noisy;
compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.events import Hub  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, ms: list[float]) -> dict:
    row = {"p50": round(statistics.median(ms), 3), "p95": round(pct(ms, 0.95), 3), "max": round(max(ms), 3)}
    print(f"  {name:<28} p50 {row['p50']:>9.3f} ms   p95 {row['p95']:>9.3f} ms   max {row['max']:>9.3f} ms")
    return row


def corpus(observations: int, memories: int) -> dict:
    """An export document: sessions of 100 observations over 20 projects, plus memories."""
    sessions, obs = [], {}
    per = 100
    for s in range(max(1, observations // per)):
        sid, project = f"bench-{s:05d}", f"/work/bench/p{s % 20}"
        sessions.append({"id": sid, "project": project, "cwd": project, "startedAt": f"2026-09-01T00:00:{s % 60:02d}.000Z",
                         "updatedAt": "2026-09-02T00:00:00.000Z", "status": "completed", "observationCount": per})
        obs[sid] = [{"id": f"obs_b_{s:05d}_{i:03d}", "project": project, "hookType": "post_tool_use",
                     "timestamp": f"2026-09-{1 + s % 28:02d}T{i // 60:02d}:{i % 60:02d}:00.000Z", "type": "command_run",
                     "title": f"step {s}-{i} build and test", "narrative": "make test passed",
                     "concepts": [f"topic{s % 13}", f"area{i % 7}"], "files": [], "importance": 5} for i in range(per)]
    mems = [{"id": f"mem_b_{i:05d}", "createdAt": "2026-09-03T00:00:00.000Z", "updatedAt": "2026-09-03T00:00:00.000Z",
             "type": "fact", "title": f"fact {i}", "content": f"fact number {i} about topic{i % 13}",
             "concepts": [f"topic{i % 13}"], "files": [], "sessionIds": [], "strength": 7, "version": 1,
             "isLatest": True, "project": f"/work/bench/p{i % 20}"} for i in range(memories)]
    return {"version": "agentmemory-python/1", "sessions": sessions, "observations": obs, "memories": mems}


def bench_hub(n: int = 20_000) -> dict:
    hub = Hub(queue_size=1000)
    subs = [hub.subscribe() for _ in range(16)]
    stop = threading.Event()

    def drain(sub) -> None:
        while not stop.is_set():
            sub.get(timeout=0.05)

    readers = [threading.Thread(target=drain, args=(s,), daemon=True) for s in subs[1:]]  # subs[0] never reads
    for t in readers:
        t.start()
    ms = []
    for i in range(n):
        t0 = time.perf_counter()
        hub.publish("observation", {"i": i})
        ms.append((time.perf_counter() - t0) * 1000)
        if i % 200 == 199:
            time.sleep(0.002)  # bursts of 200 events, so the reading clients can keep up
    stop.set()
    print(f"hub: {n} publishes in bursts of 200 to 16 subscribers (one never reads: dropped after 1000 events)")
    row = summary("publish", ms)
    row["droppedClients"] = hub.stats()["droppedClients"]
    return row


def bench_tools(doc: dict, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider="none"))
        try:
            def call(name: str, **args):
                return registry.unwrap(registry.call(Ctx(rt, source="bench"), name, args))[0]

            t0 = time.perf_counter()
            imported = call("import", exportData=doc)["imported"]
            print(f"tools: imported {imported} records in {time.perf_counter() - t0:.1f} s")
            total = call("viewer_activity", limit=1)["total"]
            cases = {"viewer_overview": {}, "viewer_activity first page": {"limit": 200},
                     "viewer_activity deep page": {"limit": 200, "offset": max(0, total - 200)},
                     "viewer_graph": {}}
            rows = {}
            for label, args in cases.items():
                name = label.split(" ")[0]
                ms = []
                for _ in range(repeat):
                    t1 = time.perf_counter()
                    call(name, **args)
                    ms.append((time.perf_counter() - t1) * 1000)
                rows[label] = summary(label, ms)
            return {"records": imported, **rows}
        finally:
            rt.close()


def bench_stream(events: int) -> dict:
    from websockets.sync.client import connect

    from conftest import LiveServer, hook, post

    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp), {"AGENTMEMORY_BACKGROUND_JOBS": "false", "EMBEDDING_PROVIDER": "none"}, [])
        try:
            ms = []
            with connect(server.url.replace("http", "ws") + "/stream/mem-live/viewer", open_timeout=10) as ws:
                json.loads(ws.recv(timeout=10))
                for i in range(events):
                    t0 = time.perf_counter()
                    post(server.api("/observe"), hook(f"lat{i // 400}", timestamp=f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
                                                      data={"tool_name": "Bash", "tool_input": f"echo {i}"}))
                    while json.loads(ws.recv(timeout=10)).get("type") != "observation":
                        pass
                    ms.append((time.perf_counter() - t0) * 1000)
            print(f"stream: {events} x POST /observe -> event received on an open WebSocket (gunicorn gthread)")
            return summary("observe -> event", ms)
        finally:
            server.stop()


def bench_browser(doc: dict) -> dict | None:
    if not os.path.exists("/usr/bin/chromium"):
        print("browser: skipped (/usr/bin/chromium is not installed)")
        return None
    from playwright.sync_api import expect, sync_playwright

    from conftest import LiveServer, post

    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp), {"AGENTMEMORY_BACKGROUND_JOBS": "false", "EMBEDDING_PROVIDER": "none"}, [])
        try:
            assert post(server.api("/import"), {"exportData": doc}).status_code == 200
            total = sum(len(v) for v in doc["observations"].values()) + len(doc["memories"])
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                t0 = time.perf_counter()
                page.goto(f"{server.url}/viewer#/timeline")
                expect(page.locator("#tab-timeline .toolbar")).to_contain_text(f"{total:,} entries", timeout=60_000)
                first = (time.perf_counter() - t0) * 1000
                t1 = time.perf_counter()
                page.eval_on_selector("#tab-timeline .vlist", "el => { el.scrollTop = el.scrollHeight; }")
                expect(page.locator("#tab-timeline .vlist")).to_contain_text("step 0-0 ", timeout=60_000)
                scroll = (time.perf_counter() - t1) * 1000
                rows = page.locator("#tab-timeline .vrow").count()
                t2 = time.perf_counter()
                page.click("nav button[data-tab=graph]")
                expect(page.locator("#graph-canvas")).to_have_attribute("data-settled", "true", timeout=60_000)
                graph = (time.perf_counter() - t2) * 1000
                heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
                browser.close()
            row = {"timelineFirstPaintMs": round(first), "scrollToOldestMs": round(scroll), "domRows": rows,
                   "graphSettledMs": round(graph), "jsHeapMB": round(heap / 2**20, 1) if heap else None}
            print(f"browser: timeline of {total:,} ready in {first:.0f} ms, oldest entry after scrolling in "
                  f"{scroll:.0f} ms, {rows} DOM rows, graph settled in {graph:.0f} ms, JS heap {row['jsHeapMB']} MB")
            return row
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=10_000)
    parser.add_argument("--memories", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-browser", action="store_true")
    opts = parser.parse_args()
    doc = corpus(opts.observations, opts.memories)
    result = {"observations": opts.observations, "memories": opts.memories, "hub": bench_hub(),
              "tools": bench_tools(doc, opts.repeat), "stream": bench_stream(opts.events)}
    if not opts.no_browser:
        result["browser"] = bench_browser(doc)
    print(json.dumps({"bench": "viewer", **result}))


if __name__ == "__main__":
    main()
