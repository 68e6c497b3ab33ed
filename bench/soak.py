"""Soak: the real server at its maximum sustainable write rate for 10 minutes; RSS must stay flat
and nothing acknowledged may be lost.

    python bench/soak.py [--minutes 10] [--clients 6] [--sample 10]

Starts ``python src/app.py`` on a free 127.0.0.1 port with a fresh database (auth and the write
rate limit off: the point is the most the server takes; EMBEDDING_PROVIDER=none so the corpus
does not grow an in-memory vector index, which is data, not a leak). ``--clients`` closed-loop
keep-alive clients send observations as fast as the server answers them (every 25th request is
a search, every 200th a memory save, every 400th a session end), so the rate is whatever the
server sustains; a live viewer WebSocket stays connected throughout. Every ``--sample`` seconds
it prints the server's RSS (leader and worker), the request rate, p95 latency and the bounded
queues from /health. At the end: the RSS slope over the second half (MB per minute, least
squares), and whether every acknowledged observation is stored.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import requests
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    env.update(AGENTMEMORY_DATA_DIR=data_dir, PORT=str(port), HOST="127.0.0.1", AGENTMEMORY_AUTH="off",
               AGENTMEMORY_RATE_LIMIT="0", AGENTMEMORY_LOG_LEVEL="warning", EMBEDDING_PROVIDER="none")
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "app.py")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            requests.get(f"http://127.0.0.1:{port}/agentmemory/livez", timeout=1)
            return proc, port
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def rss_mb(leader: int) -> float:
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("Tgid", "0")) == leader or int(fields.get("PPid", "0")) == leader:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


class Load:
    """Closed-loop clients; records acknowledged observation ids and latencies."""

    def __init__(self, port: int, clients: int):
        self.port, self.clients = port, clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, list[str]] = {}
        self.latencies: list[float] = []
        self.requests = 0
        self.errors: dict[str, int] = {}

    def run_client(self, n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        i = 0
        while not self.stop.is_set():
            session = f"soak-{n}-{i // 300}"
            if i % 400 == 399:
                path, body = "/session/end", {"sessionId": session}
            elif i % 200 == 199:
                path, body = "/remember", {"content": f"soak memory {n}.{i} about module{i % 97}"}
            elif i % 25 == 24:
                path, body = "/search", {"query": f"module{i % 97} build", "limit": 10}
            else:
                path = "/observe"
                body = {"hookType": "post_tool_use", "sessionId": session, "project": "soak", "cwd": "/soak",
                        "timestamp": f"2026-12-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{n:03d}Z",
                        "data": {"tool_name": "Bash", "tool_input": {"command": f"make module{i % 97} step{i}"},
                                 "tool_output": "compiled ok " * 40}}
            started = time.perf_counter()
            try:
                conn.request("POST", "/agentmemory" + path, body=json.dumps(body), headers=headers)
                response = conn.getresponse()
                payload = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                status, payload = type(exc).__name__, b""
            elapsed = time.perf_counter() - started
            with self.lock:
                self.requests += 1
                self.latencies.append(elapsed)
                if path == "/observe" and status == 201:
                    self.acked.setdefault(session, []).append(json.loads(payload)["observationId"])
                elif status not in (200, 201):
                    self.errors[f"{path} {status}"] = self.errors.get(f"{path} {status}", 0) + 1
            i += 1
        conn.close()

    def take_window(self) -> tuple[int, list[float]]:
        with self.lock:
            count, lat = self.requests, self.latencies
            self.requests, self.latencies = 0, []
        return count, lat


def viewer(port: int, stop: threading.Event, seen: list[int]) -> None:
    with ws_connect(f"ws://127.0.0.1:{port}/stream/mem-live/viewer", open_timeout=10, max_size=None) as ws:
        while not stop.is_set():
            try:
                ws.recv(timeout=1)
                seen[0] += 1
            except TimeoutError:
                continue


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    xs, ys = [t / 60 for t, _ in samples], [r for _, r in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def verify(port: int, acked: dict[str, list[str]]) -> dict[str, int]:
    stored, missing = 0, 0
    for session, ids in acked.items():
        r = requests.get(f"http://127.0.0.1:{port}/agentmemory/observations",
                         params={"sessionId": session, "limit": 1000}, timeout=60)
        have = {o["id"] for o in r.json()["observations"]}
        stored += len(have)
        missing += sum(1 for oid in ids if oid not in have)
    return {"acknowledged": sum(len(v) for v in acked.values()), "stored": stored, "missing": missing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    args = ap.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"soak {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, {args.minutes:g} min, {args.clients} clients")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(tmp)
        load = Load(port, args.clients)
        events = [0]
        threads = [threading.Thread(target=load.run_client, args=(n,), daemon=True) for n in range(args.clients)]
        threads.append(threading.Thread(target=viewer, args=(port, load.stop, events), daemon=True))
        samples: list[tuple[float, float]] = []
        rates: list[float] = []
        try:
            for t in threads:
                t.start()
            started = time.monotonic()
            print(" t(s)  rss_mb   req/s  p95_ms  backlog  llm_jobs  viewer_q")
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(args.sample)
                count, lat = load.take_window()
                elapsed = time.monotonic() - started
                health = requests.get(f"http://127.0.0.1:{port}/agentmemory/health", timeout=30).json()
                queues = health["queues"]
                rss = rss_mb(proc.pid)
                samples.append((elapsed, rss))
                rates.append(count / args.sample)
                p95 = statistics.quantiles(lat, n=20)[18] * 1000 if len(lat) > 20 else 0.0
                print(f"{elapsed:5.0f}  {rss:6.1f}  {count / args.sample:6.1f}  {p95:6.1f}  "
                      f"{queues['embedBacklog']['size']:7d}  {queues['llmJobs']['size']:8d}  "
                      f"{queues['viewerEvents']['size']:8d}", flush=True)
            load.stop.set()
            for t in threads:
                t.join(timeout=60)
            second_half = samples[len(samples) // 2:]
            result = {
                "date": datetime.now(UTC).strftime("%Y-%m-%d"), "commit": commit, "minutes": args.minutes,
                "clients": args.clients, "mean_req_per_s": round(statistics.fmean(rates), 1),
                "rss_first_mb": round(samples[0][1], 1), "rss_last_mb": round(samples[-1][1], 1),
                "rss_max_mb": round(max(r for _, r in samples), 1),
                "rss_slope_second_half_mb_per_min": round(slope_mb_per_min(second_half), 3),
                "viewer_events_received": events[0], "errors": load.errors,
                **verify(port, load.acked),
                "db_mb": round(sum(p.stat().st_size for p in Path(tmp).glob("agentmemory.db*")) / 1048576, 1),
            }
            print(json.dumps(result))
        finally:
            load.stop.set()
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
