"""What nothing-lost capture costs, against the real server (issue 18).

    python bench/capture.py [--plain 300] [--shots 100] [--shot-kb 150] [--big 8] [--big-mb 12]

Starts ``python src/app.py`` (gunicorn gthread, the background worker process on, auth on with a
generated token, as a user runs it) on a free 127.0.0.1 port with a fresh database and sends, one
client at a time (hooks are sequential):

- plain post_tool_use hooks (~1 KB): the baseline;
- hooks carrying a distinct PNG screenshot as a data URL (moved to the image store);
- Write hooks with a ``--big-mb`` file (cut to AGENTMEMORY_MAX_FIELD_CHARS, never refused);
- bodies over AGENTMEMORY_MAX_BODY_BYTES (16 MiB): the time until urllib has read the 413;

then prints latency percentiles per kind, the request process's peak RSS, the image store's size,
and a clean stop: the WAL before SIGTERM, the seconds until the server exited (its background
worker stopped first) and the WAL after (0: everything is in agentmemory.db).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from background_load import children, commit, rss_mb  # noqa: E402
from ingest import free_port  # noqa: E402


def start(data_dir: Path) -> tuple[subprocess.Popen, str, dict[str, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    env.update(AGENTMEMORY_DATA_DIR=str(data_dir), PORT=str(port), HOST="127.0.0.1", AGENTMEMORY_LOG_LEVEL="warning",
               EMBEDDING_PROVIDER="hash")
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "app.py")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/agentmemory"
    for _ in range(300):
        try:
            requests.get(url + "/livez", timeout=1)
            token = (data_dir / "secret").read_text().strip()
            return proc, url, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        except (requests.RequestException, FileNotFoundError):
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("server did not start")


def hook(session: str, i: int, data: dict) -> dict:
    return {"hookType": "post_tool_use", "sessionId": session, "project": "bench", "cwd": "/work/bench",
            "timestamp": f"2026-11-01T10:{(i // 60) % 60:02d}:{i % 60:02d}Z", "data": data}


def plain(i: int) -> bytes:
    return json.dumps(hook("plain", i, {"tool_name": "Bash", "tool_input": {"command": f"pytest tests/t{i}.py"},
                                        "tool_output": "collected 42 items; all passed " * 30})).encode()


def screenshot(i: int, kb: int) -> bytes:
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(kb * 1024)
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return json.dumps(hook("shots", i, {"tool_name": "mcp__browser__screenshot", "tool_input": {"page": f"/p{i}"},
                                        "tool_output": url})).encode()


def big_write(i: int, mb: int) -> bytes:
    content = (f"line {i} of a generated fixture file with some text\n" * (mb * 1024 * 1024 // 50))
    return json.dumps(hook("big", i, {"tool_name": "Write", "tool_input": {"file_path": f"fixtures/f{i}.txt",
                                                                           "content": content}})).encode()


def send(url: str, headers: dict[str, str], body: bytes) -> tuple[float, int]:
    request = urllib.request.Request(url + "/observe", data=body, method="POST", headers=headers)
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    return (time.perf_counter() - began) * 1000, status


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):7.1f} ms  p95 {p95:7.1f} ms  max {ordered[-1]:7.1f} ms"


def measure(name: str, url: str, headers: dict[str, str], bodies, worker_pid: int) -> float:
    times, statuses, peak = [], {}, 0.0
    for body in bodies:
        ms, status = send(url, headers, body)
        times.append(ms)
        statuses[status] = statuses.get(status, 0) + 1
        peak = max(peak, rss_mb(worker_pid))
    print(f"{name:<34} n={len(times):<4} {percentiles(times)}  answers {statuses}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=int, default=300)
    parser.add_argument("--shots", type=int, default=100)
    parser.add_argument("--shot-kb", type=int, default=150)
    parser.add_argument("--big", type=int, default=8)
    parser.add_argument("--big-mb", type=int, default=12)
    parser.add_argument("--oversized", type=int, default=5)
    opts = parser.parse_args()
    print(f"bench/capture.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  commit {commit()}  cores {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        proc, url, headers = start(data_dir)
        try:
            worker = next(iter(children(proc.pid)), proc.pid)  # gunicorn's request-serving process
            print(f"request process RSS at start {rss_mb(worker)} MB")
            peaks = [
                measure("plain hook (~1 KB)", url, headers, (plain(i) for i in range(opts.plain)), worker),
                measure(f"screenshot ({opts.shot_kb} KB PNG data URL)", url, headers,
                        (screenshot(i, opts.shot_kb) for i in range(opts.shots)), worker),
                measure(f"Write of a {opts.big_mb} MB file (cut)", url, headers,
                        (big_write(i, opts.big_mb) for i in range(opts.big)), worker),
                measure("20 MB body (over the limit: 413)", url, headers,
                        (b" " * (20 * 1024 * 1024) for _ in range(opts.oversized)), worker),
            ]
            print(f"request process peak RSS {max(peaks)} MB")
            images = requests.get(url + "/health", headers=headers, timeout=30).json()["images"]
            print(f"image store: {images['images']} images, {images['bytes'] / 1e6:.1f} MB")
        finally:
            db = data_dir / "agentmemory.db"
            wal = Path(str(db) + "-wal")
            before = wal.stat().st_size if wal.exists() else 0
            began = time.perf_counter()
            os.kill(proc.pid, signal.SIGTERM)  # the server process alone, as `docker stop` does
            code = proc.wait(timeout=120)
            took = time.perf_counter() - began
            after = wal.stat().st_size if wal.exists() else 0
            print(f"clean stop: WAL {before / 1e6:.1f} MB before SIGTERM, exited {code} after {took:.2f} s, "
                  f"WAL {after} bytes after, agentmemory.db {db.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
