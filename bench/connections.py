"""Latency of normal requests while hostile connections are held open against the real server.

    python bench/connections.py [--idle 500] [--slowloris 50] [--stalled 50] [--websockets 20]
                                [--requests 600] [--stock-gthread]

Starts the server (``python src/app.py``: gunicorn with the gated gthread worker of
adapters/connections.py) on a free 127.0.0.1 port, opens ``--idle`` connections that send
nothing, ``--slowloris`` connections dribbling a request head a byte every 0.5 s,
``--stalled`` POSTs whose body stops after 5 of 1000 bytes and ``--websockets`` WebSockets that
complete the handshake and then never read or answer a ping. A separate keep-alive client
then sends ``--requests`` requests (two GET /sessions for every POST /observe) and the script
prints their latency percentiles, with the date, the commit and the server's RSS.

``--stock-gthread`` runs gunicorn's own gthread worker instead (the configuration before
issue 20), for comparison: there, requests time out (5 s client timeout, counted as errors).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
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

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str, stock: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    env.update(AGENTMEMORY_DATA_DIR=data_dir, PORT=str(port), HOST="127.0.0.1", AGENTMEMORY_AUTH="off",
               AGENTMEMORY_LOG_LEVEL="warning", EMBEDDING_PROVIDER="none", AGENTMEMORY_RATE_LIMIT="0")
    if stock:  # gunicorn's own gthread worker, as configured before the gate
        argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "32", "--keep-alive", "5",
                "-b", f"127.0.0.1:{port}", "agentmemory_server.adapters.web:create_app()"]
    else:
        argv = [sys.executable, str(ROOT / "src" / "app.py")]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for _ in range(300):
        try:
            requests.get(f"http://127.0.0.1:{port}/agentmemory/livez", timeout=1)
            return proc, port
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def rss_mb(pid: int) -> float:
    """RSS of the server's worker processes (the group leader's children) plus the leader."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("Tgid", "0")) == pid or int(fields.get("PPid", "0")) == pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


def open_hostile(port: int, args: argparse.Namespace) -> tuple[list[socket.socket], list[socket.socket]]:
    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=10)

    idle = [connect() for _ in range(args.idle)]
    slow = [connect() for _ in range(args.slowloris)]
    stalled = [connect() for _ in range(args.stalled)]
    for sock in stalled:
        sock.sendall(b"POST /agentmemory/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"a\":")
    sockets = []
    for _ in range(args.websockets):
        sock = connect()
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /stream/mem-live/viewer HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                      f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        sockets.append(sock)
    return idle + stalled + sockets, slow


def dribble(sockets: list[socket.socket], stop: threading.Event) -> None:
    head = b"GET /agentmemory/sessions HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000
    for position in range(len(head)):
        if stop.wait(0.5):
            return
        for sock in sockets:
            try:
                sock.send(head[position:position + 1])
            except OSError:
                pass


def measure(port: int, count: int, label: str) -> tuple[list[float], int]:
    session = requests.Session()
    url = f"http://127.0.0.1:{port}/agentmemory"
    latencies, errors = [], 0
    for i in range(count):
        started = time.perf_counter()
        try:
            if i % 3 == 0:
                body = {"hookType": "post_tool_use", "sessionId": f"bench-{label}", "project": "bench", "cwd": "/b",
                        "timestamp": f"2026-12-01T10:{i // 3600 % 60:02d}:{i // 60 % 60:02d}.{i % 1000:03d}Z",
                        "data": {"tool_name": "Bash", "tool_input": {"command": f"step {i}"}, "tool_output": f"{i}"}}
                ok = session.post(url + "/observe", json=body, timeout=5).status_code == 201
            else:
                ok = session.get(url + "/sessions", timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
            session = requests.Session()
        latencies.append(time.perf_counter() - started)
        errors += not ok
    return latencies, errors


def pct(values: list[float], p: int) -> float:
    return round(statistics.quantiles(values, n=100)[p - 1] * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--slowloris", type=int, default=50)
    ap.add_argument("--stalled", type=int, default=50)
    ap.add_argument("--websockets", type=int, default=20)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--stock-gthread", action="store_true", help="gunicorn's own gthread worker, for comparison")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(tmp, args.stock_gthread)
        stop = threading.Event()
        held: list[socket.socket] = []
        try:
            baseline, _ = measure(port, 100, "quiet")
            held, slow = open_hostile(port, args)
            held += slow
            dribbler = threading.Thread(target=dribble, args=(slow, stop), daemon=True)
            dribbler.start()
            time.sleep(1.0)
            latencies, errors = measure(port, args.requests, "hostile")
            result = {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
                "worker": "stock gthread" if args.stock_gthread else "gated gthread",
                "hostile": {"idle": args.idle, "slowloris": args.slowloris, "stalled": args.stalled,
                            "websockets": args.websockets},
                "requests": len(latencies), "errors": errors,
                "quiet_p50_ms": pct(baseline, 50), "quiet_p95_ms": pct(baseline, 95),
                "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95), "p99_ms": pct(latencies, 99),
                "max_ms": round(max(latencies) * 1000, 2), "server_rss_mb": round(rss_mb(proc.pid), 1),
            }
            print(f"{result['worker']}, {len(held)} hostile connections: {result['requests']} requests, "
                  f"{errors} errors, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms "
                  f"(quiet: p50 {result['quiet_p50_ms']} ms, p95 {result['quiet_p95_ms']} ms)")
            print(json.dumps(result))
        finally:
            stop.set()
            for sock in held:
                sock.close()
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
