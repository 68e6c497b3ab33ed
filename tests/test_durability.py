"""Crash safety and secrets at rest: what was acknowledged survives SIGKILL; planted secrets
never reach the database file or its WAL."""

import json
import signal
import sqlite3
import threading

import requests

from conftest import hook, post, wait_for
from test_privacy import SECRETS


def test_sigkill_during_ingest_loses_no_acknowledged_observation(live_server):
    # The hash embedder gives every record a vector quickly, so vectors are checked too.
    server = live_server(env={"EMBEDDING_PROVIDER": "hash"})
    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        s = requests.Session()
        i = 0
        while not stop.is_set():
            body = hook(f"crash-{n}", timestamp=f"2026-01-01T00:00:00.{i:03d}Z",
                        data={"tool_name": "Bash", "tool_input": f"step {n}.{i}"})
            try:
                r = s.post(server.api("/observe"), data=json.dumps(body),
                           headers={"Content-Type": "application/json"}, timeout=5)
            except requests.RequestException:
                return  # the server died mid-request: that one was never acknowledged
            if r.status_code == 201:
                with lock:
                    acknowledged.append((f"crash-{n}", r.json()["observationId"]))
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:  # kill it mid-burst, once the burst is well under way
        wait_for(lambda: len(acknowledged) > 50, interval=0.01, message="the burst did not get going")
    finally:
        server.stop(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=10)

    server.start()
    stored = set()
    for session in {s for s, _ in acknowledged}:
        r = requests.get(server.api("/observations"), params={"sessionId": session, "limit": 1000})
        stored |= {o["id"] for o in r.json()["observations"]}
    missing = [oid for _s, oid in acknowledged if oid not in stored]
    assert missing == []
    conn = sqlite3.connect(server.db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Every stored observation still has its search row (they were written in one transaction).
    kv = conn.execute("SELECT count(*) FROM kv_store WHERE scope LIKE 'mem:obs:%'").fetchone()[0]
    docs = conn.execute("SELECT count(*) FROM search_docs WHERE kind = 'observation'").fetchone()[0]
    conn.close()
    assert kv == docs >= len(acknowledged)
    # diagnose agrees: FTS and KV consistent, every record has a vector or is queued for one.
    checks = {c["name"]: c for c in post(server.api("/diagnostics"), {}).json()["checks"]}
    for name in ("db_integrity", "search_rows_missing", "search_rows_orphaned", "search_text_missing",
                 "search_text_orphaned", "session_counts", "vector-missing", "vector-stale-model"):
        assert checks[name]["status"] == "pass", checks[name]


def test_planted_secrets_never_reach_the_db_file_or_wal(live_server):
    server = live_server()
    for family, secret in SECRETS.items():
        r = post(server.api("/observe"), hook(f"sec-{family}", data={
            "tool_name": "Bash", "tool_input": {"command": f"run with {secret}"},
            "tool_output": f"echo {secret}", "env": {"password": "hunter2-hunter2"}}))
        assert r.status_code == 201
        assert post(server.api("/remember"), {"content": f"the key is {secret}", "title": f"about {secret}"}).status_code == 201
        post(server.api("/mcp/call"), {"name": "agent_observe", "arguments": {"sessionId": "mcp", "content": f"note {secret}"}})
    post(server.api("/observe"), hook("pk", data={"tool_output": "-----BEGIN RSA PRIVATE KEY-----\nMIIEzzTOPSECRETzz\n-----END RSA PRIVATE KEY-----"}))
    post(server.api("/observe"), hook("url", data={"tool_output": "git clone https://bob:pa55w0rdXYZ@git.example/r"}))
    post(server.api("/observe"), hook("priv", data={"prompt": "my <private>home is 12 Elm Street</private>"}, hookType="prompt_submit"))
    blobs = b""
    for suffix in ("", "-wal", "-shm"):
        path = server.db_path.with_name(server.db_path.name + suffix)
        if path.exists():
            blobs += path.read_bytes()
    planted = [s[-16:] for s in SECRETS.values()] + ["hunter2-hunter2", "MIIEzzTOPSECRETzz", "pa55w0rdXYZ", "12 Elm Street"]
    leaked = [p for p in planted if p.encode() in blobs]
    assert leaked == []
    assert b"[REDACTED_SECRET]" in blobs  # the records themselves were stored
