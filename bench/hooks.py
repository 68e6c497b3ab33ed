"""Latency of the raw hook endpoint (``POST /agentmemory/hooks/claude-code``) on a seeded store.

    python bench/hooks.py [--observations 2000] [--calls 200]

Starts ``python src/app.py`` (auth on) on a free 127.0.0.1 port with a fresh database, records
``--observations`` Claude Code PostToolUse events through the endpoint itself (100 per session,
each session ended so it has a summary), then times sequentially, as Claude Code would send them:
SessionStart (the answer carries the context block), UserPromptSubmit (memories relevant to the
prompt), PostToolUse (capture only), SessionEnd (summaries run on the request), and the
SessionStart command hook as Claude Code runs it (``agentmemory hook claude-code``, a new process
each time). Prints date, commit, corpus size, p50/p95/p99 and the server's RSS, then one JSON line.
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

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import ROOT, start_server  # noqa: E402
from mcp_latency import percentiles  # noqa: E402

SECRET = "bench-hooks-secret-0123456789"
HEADERS = {"Authorization": f"Bearer {SECRET}"}
WORDS = ["auth", "checkout", "invoice", "parser", "cache", "migration", "retry", "timeout", "fixture", "router"]


def event(session: str, name: str, **fields) -> dict:
    return {"session_id": session, "transcript_path": "/t.jsonl", "cwd": "/work/shop", "hook_event_name": name,
            **fields}


def tool_event(session: str, i: int) -> dict:
    word = WORDS[i % len(WORDS)]
    return event(session, "PostToolUse", tool_name="Bash", tool_use_id=f"toolu_{session}_{i}",
                 tool_input={"command": f"pytest tests/test_{word}_{i}.py -q"},
                 tool_response={"stdout": f"{word} test {i}: " + ("failed, see traceback" if i % 7 == 0 else "passed"),
                                "stderr": "", "interrupted": False})


def seed(http: requests.Session, url: str, count: int) -> None:
    for s in range(max(1, count // 100)):
        session = f"seed-{s}"
        http.post(url, json=event(session, "SessionStart", source="startup"), headers=HEADERS)
        for i in range(100):
            http.post(url, json=tool_event(session, s * 100 + i), headers=HEADERS).raise_for_status()
        http.post(url, json=event(session, "SessionEnd", reason="other"), headers=HEADERS).raise_for_status()


def timed(http: requests.Session, url: str, bodies: list[dict], check=None) -> list[float]:
    samples = []
    for body in bodies:
        start = time.perf_counter()
        r = http.post(url, json=body, headers=HEADERS)
        samples.append(time.perf_counter() - start)
        assert r.status_code == 200, r.text
        if check:
            check(r.json())
    return samples


def timed_command(server_url: str, runs: int) -> list[float]:
    """SessionStart as Claude Code runs it: a new ``agentmemory hook`` process per event."""
    command = [str(Path(sys.executable).parent / "agentmemory"), "hook", "claude-code", "--url", server_url]
    samples = []
    for i in range(runs):
        stdin = json.dumps(event(f"cmd-{i % 5}", "SessionStart", source="resume"))
        start = time.perf_counter()
        done = subprocess.run(command, input=stdin, capture_output=True, text=True,
                              env={"AGENTMEMORY_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
        samples.append(time.perf_counter() - start)
        assert "additionalContext" in done.stdout, done.stdout + done.stderr
    return samples


def rss_mb(pid: int) -> float:
    children = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for child in children or [str(pid)]:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    return round(total / 1024, 1)


def has_context(answer: dict) -> None:
    assert "<agentmemory-context" in answer.get("hookSpecificOutput", {}).get("additionalContext", ""), answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=200)
    opts = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, base = start_server(data_dir, threads=8, extra_env={"AGENTMEMORY_SECRET": SECRET,
                                                                  "EMBEDDING_PROVIDER": "none"})
        url = f"{base}/agentmemory/hooks/claude-code"
        try:
            with requests.Session() as http:
                seed(http, url, opts.observations)
                n = opts.calls
                results = {
                    # resumes of a few sessions: the seeded ones stay among the latest of the project
                    "SessionStart": timed(http, url, [event(f"b-{i % 5}", "SessionStart", source="resume")
                                                      for i in range(n)], has_context),
                    "UserPromptSubmit": timed(http, url, [event(f"b-{i}", "UserPromptSubmit",
                                                                prompt=f"why does the {WORDS[i % 10]} test fail?")
                                                          for i in range(n)]),
                    "PostToolUse": timed(http, url, [tool_event(f"b-{i % 20}", 100_000 + i) for i in range(n)]),
                    "SessionEnd": timed(http, url, [event(f"b-{i}", "SessionEnd", reason="other")
                                                    for i in range(min(n, 50))]),
                    "SessionStart_command": timed_command(base, min(n, 40)),
                }
                stored = http.get(f"{base}/agentmemory/health", headers=HEADERS).json()
            rss = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    summary = {name: percentiles(samples) for name, samples in results.items()}
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}; {opts.observations} observations seeded in "
          f"{max(1, opts.observations // 100)} ended sessions; sequential calls (2 shared cores: expect noise)")
    for name, stats in summary.items():
        print(f"  {name:22s} n={len(results[name]):4d}  p50 {stats['p50_ms']:7.2f} ms  p95 {stats['p95_ms']:7.2f} ms"
              f"  p99 {stats['p99_ms']:7.2f} ms")
    print(f"  server RSS {rss} MB; health: {stored.get('status', stored)}")
    print(json.dumps({"bench": "hooks", "commit": commit, "observations": opts.observations, "calls": opts.calls,
                      "events": summary, "rss_mb": rss}))


if __name__ == "__main__":
    main()
