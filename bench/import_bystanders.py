"""What everyone else gets while a replace import runs: requests, hooks, CLI commands, a server start.

    python bench/import_bystanders.py [--backend sqlite|postgresql] [--records 30000]

Starts ``python src/app.py`` (auth off, embeddings off) on a free 127.0.0.1 port with a fresh
store (PostgreSQL: a new database in bench/pg.py's server, started and stopped here), imports
a few records, then starts ``agentmemory import FILE --strategy replace`` of ``--records``
memories (JSON Lines: one transaction) and, once its progress bar shows it writing batches,
sends at the same moment: GET /livez, GET /health, POST /observe, POST /remember, a Claude Code
PostToolUse hook (POST /hooks/claude-code), POST /smart-search, ``agentmemory stats``,
``agentmemory status`` and a second server on the same store. Each is given 150 s. Prints
what each got, how long it waited and whether the import was still running when it was
answered; then whether the hook and /observe events were stored after the import (the capture
spool drained), and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import start_server  # noqa: E402
from machine import header  # noqa: E402

CLI = str(Path(sys.executable).with_name("agentmemory"))
LIMIT = 150.0
PG_DIR = Path(os.environ.get("BENCH_PG_DIR", "/tmp/agentmemory-bench-pg-bystanders"))


def memory_lines(path: Path, count: int, word: str) -> Path:
    lines = [json.dumps({"version": "agentmemory-python/1", "endMarker": True})]
    for i in range(count):
        memory = {
            "id": f"mem_{word}{i}",
            "content": f"{word} note {i} about the upload retry",
            "type": "fact",
            "isLatest": True,
            "createdAt": "2026-01-01T00:00:00Z",
            "updatedAt": "2026-01-01T00:00:00Z",
        }
        lines.append(json.dumps({"memories": [memory]}))
    lines.append(json.dumps({"end": {"lines": count}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_env(store: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    return {**env, "AGENTMEMORY_AUTH": "off", "EMBEDDING_PROVIDER": "none", **store}


def start_import(db: Path, lines: Path, env: dict[str, str]) -> tuple[subprocess.Popen, list[bytes]]:
    """The import, returned once its progress bar shows it between 10 % and 80 %."""
    proc = subprocess.Popen(
        [CLI, "--db", str(db), "import", str(lines), "--strategy", "replace", "--batch", "500"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = b""
    stderr = proc.stderr
    assert stderr is not None
    rest: list[bytes] = []
    while proc.poll() is None:
        seen += stderr.read1(4096)
        done = [int(p) for p in re.findall(rb"import:\s+(\d+)%", seen)]
        if done and 10 <= done[-1] <= 80:
            threading.Thread(target=lambda: rest.append(stderr.read()), daemon=True).start()
            return proc, rest
    raise SystemExit(f"the import ended before it was caught midway: {seen[-500:]!r}")


def claude(event: str, **fields: Any) -> dict[str, Any]:
    return {"session_id": "bystander", "cwd": "/work/shop", "hook_event_name": event, **fields}


def observe_payload(content: str) -> dict[str, Any]:
    return {
        "hookType": "post_tool_use",
        "sessionId": "bystander-rest",
        "project": "shop",
        "cwd": "/work/shop",
        "timestamp": "2026-11-01T10:00:00.000Z",
        "data": {"tool_name": "Bash", "tool_input": {"command": "pytest -q"}, "tool_output": content},
    }


def http_probe(method: str, url: str, body: Any = None) -> Callable[[], str]:
    def run() -> str:
        answer = requests.request(method, url, json=body, timeout=LIMIT)
        try:
            data = answer.json()
        except ValueError:
            data = {}
        code = data.get("code") or ("spooled" if data.get("spooled") else "")
        retry = answer.headers.get("Retry-After")
        return f"{answer.status_code} {code}".strip() + (f" Retry-After {retry}" if retry else "")

    return run


def cli_probe(args: list[str], env: dict[str, str]) -> Callable[[], str]:
    def run() -> str:
        done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=LIMIT)
        last = (done.stderr.strip().splitlines() or [""])[-1][:120]
        return f"exit {done.returncode}" + (f": {last}" if done.returncode else "")

    return run


def server_start_probe(data_dir: str, env: dict[str, str], started: list[subprocess.Popen]) -> Callable[[], str]:
    def run() -> str:
        proc, url = start_server(data_dir, threads=4, extra_env=env)
        started.append(proc)
        return f"{requests.get(url + '/agentmemory/livez', timeout=10).status_code} livez"

    return run


def timed(name: str, probe: Callable[[], str], importer: subprocess.Popen, results: dict[str, Any]) -> None:
    began = time.monotonic()
    try:
        said = probe()
    except Exception as exc:  # noqa: BLE001 (a bench reports what happened)
        said = f"{type(exc).__name__}: {str(exc)[:100]}"
    results[name] = {
        "seconds": round(time.monotonic() - began, 2),
        "answer": said,
        "importRunning": importer.poll() is None,
    }


def store_for(backend: str, data_dir: str) -> tuple[dict[str, str], Callable[[], None]]:
    if backend == "sqlite":
        return {}, lambda: None
    from pg import server as pg_server

    pg = pg_server(PG_DIR)
    import psycopg

    name = f"bystanders_{os.getpid()}"
    with psycopg.connect(pg.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg.get_uri().replace("/postgres?", f"/{name}?", 1)

    def drop() -> None:
        with psycopg.connect(pg.get_uri(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg.stop()

    return {"AGENTMEMORY_DATABASE_URL": url}, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--records", type=int, default=30000)
    args = parser.parse_args()
    commit, ref = header(args.backend)
    with tempfile.TemporaryDirectory(prefix="import-bystanders-") as tmp:
        data_dir = str(Path(tmp) / "data")
        store, drop = store_for(args.backend, data_dir)
        servers: list[subprocess.Popen] = []
        try:
            server_env = {"EMBEDDING_PROVIDER": "none", **store}
            proc, url = start_server(data_dir, threads=8, extra_env=server_env)
            servers.append(proc)
            api = f"{url}/agentmemory"
            requests.post(
                f"{api}/hooks/claude-code", json=claude("SessionStart", source="startup"), timeout=30
            ).raise_for_status()
            env = cli_env(store)
            db = Path(data_dir) / "agentmemory.db"
            lines = memory_lines(Path(tmp) / "new.jsonl", args.records, "new")
            began = time.monotonic()
            importer, rest = start_import(db, lines, env)
            caught = time.monotonic() - began
            probes: dict[str, Callable[[], str]] = {
                "GET /livez": http_probe("GET", f"{api}/livez"),
                "GET /health": http_probe("GET", f"{api}/health"),
                "POST /observe": http_probe("POST", f"{api}/observe", observe_payload("noted during the import")),
                "POST /remember": http_probe("POST", f"{api}/remember", {"content": "remembered during the import"}),
                "POST /hooks/claude-code": http_probe(
                    "POST",
                    f"{api}/hooks/claude-code",
                    claude(
                        "PostToolUse",
                        tool_name="Edit",
                        tool_use_id="t-1",
                        tool_response={"success": True},
                        tool_input={"file_path": "/work/shop/src/retry.ts", "old_string": "a", "new_string": "b"},
                    ),
                ),
                "POST /smart-search": http_probe("POST", f"{api}/smart-search", {"query": "upload retry"}),
                "agentmemory stats": cli_probe(["--db", str(db), "stats"], env),
                "agentmemory status": cli_probe(["--db", str(db), "status"], env),
                "a second server starts": server_start_probe(data_dir, server_env, servers),
            }
            results: dict[str, Any] = {}
            threads = [threading.Thread(target=timed, args=(n, p, importer, results)) for n, p in probes.items()]
            for thread in threads:
                thread.start()
            importer.wait(timeout=900)
            imported_after = time.monotonic() - began
            for thread in threads:
                thread.join(LIMIT + 30)
            print(
                f"import of {args.records} records: caught midway after {caught:.1f} s, ended after "
                f"{imported_after:.1f} s (exit {importer.returncode})"
            )
            if importer.returncode:
                print(b"".join(rest).decode(errors="replace")[-1000:])
            for name in probes:
                row = results.get(name, {"seconds": None, "answer": "no answer", "importRunning": True})
                during = "during the import" if row["importRunning"] else "after the import ended"
                print(f"  {name:<26} {row['seconds']!s:>7} s  {row['answer']}  ({during})")
            requests.post(f"{api}/capture/drain", json={}, timeout=120)
            stored = {
                session: len(
                    requests.get(f"{api}/observations", params={"sessionId": session}, timeout=30)
                    .json()
                    .get("observations", [])
                )
                for session in ("bystander", "bystander-rest")
            }
            print(f"stored after the import (spool drained): {stored}")
            print(
                json.dumps(
                    {
                        "commit": commit,
                        "backend": args.backend,
                        "records": args.records,
                        "importSeconds": round(imported_after, 2),
                        "probes": results,
                        "stored": stored,
                        **ref,
                    }
                )
            )
        finally:
            for proc in servers:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            drop()


if __name__ == "__main__":
    main()
