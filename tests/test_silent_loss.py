"""The silent-loss cases of issue 18, each against a real server process: every one of these lost
data (or told nobody) on the previous main.

- a body over the limit was refused before it was read, so Python's urllib and Node's fetch saw
  a reset connection (EPIPE) instead of the 413;
- a clean stop left everything in the WAL: the .db file copied after SIGTERM was empty;
- a port already in use printed "listening" and then seconds of gunicorn retries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import requests

from conftest import SRC, clean_environ, free_port, hook, post, wait_for

LIMIT = 200_000  # AGENTMEMORY_MAX_BODY_BYTES for these servers
BIG = 12 * 1024 * 1024  # well past it, and past what loopback socket buffers swallow unread (3 MB did)


def big_body() -> bytes:
    return json.dumps(hook("big", data={"tool_name": "Write", "tool_input": {"file_path": "a.bin",
                                                                            "content": "x" * BIG}})).encode()


def test_a_python_urllib_client_reads_the_413_of_a_big_body(live_server):
    server = live_server(env={"AGENTMEMORY_MAX_BODY_BYTES": str(LIMIT)})
    request = urllib.request.Request(server.api("/observe"), data=big_body(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=60)
        raise AssertionError("a body over the limit was accepted")
    except urllib.error.HTTPError as exc:  # on the previous main: ConnectionResetError / BrokenPipeError
        body = json.loads(exc.read())
        assert exc.code == 413 and body["code"] == "payload_too_large"
        assert body["details"] == {"limitBytes": LIMIT, "setting": "AGENTMEMORY_MAX_BODY_BYTES"}
    # The connection handling survived: the next request is served normally.
    assert post(server.api("/observe"), hook("after")).status_code == 201


def test_node_fetch_reads_the_413_of_a_big_body(live_server, tmp_path):
    server = live_server(env={"AGENTMEMORY_MAX_BODY_BYTES": str(LIMIT)})
    payload = tmp_path / "body.json"
    payload.write_bytes(big_body())
    script = (
        "const fs = require('fs');"
        "fetch(process.argv[1], {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: fs.readFileSync(process.argv[2])})"
        ".then(async (r) => { console.log(JSON.stringify({status: r.status, body: await r.json()})); })"
        ".catch((e) => { console.log(JSON.stringify({error: String(e && (e.cause || e))})); process.exit(3); });"
    )
    done = subprocess.run(["node", "-e", script, server.api("/observe"), str(payload)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr  # on the previous main: "other side closed" / EPIPE
    seen = json.loads(done.stdout)
    assert seen["status"] == 413 and seen["body"]["details"]["setting"] == "AGENTMEMORY_MAX_BODY_BYTES"


def test_a_big_field_under_the_body_limit_is_cut_not_refused(live_server):
    server = live_server()  # the default limit (16 MiB) takes a 12 MiB Write
    r = post(server.api("/observe"), big_body())
    assert r.status_code == 201 and r.json()["truncated"]["fields"] == ["tool_input.content"]
    stored = post(server.api("/search"), {"query": "a.bin"}).json()
    assert stored["count"] == 1


def test_the_database_file_alone_is_complete_after_sigterm(live_server, tmp_path):
    server = live_server()
    for i in range(200):
        assert post(server.api("/observe"), hook(f"s{i % 5}", timestamp=f"2026-11-01T10:{i // 60:02d}:{i % 60:02d}Z",
                                                 data={"tool_name": "Bash", "tool_input": {"command": f"make {i}"},
                                                       "tool_output": "ok " * 200})).status_code == 201
    assert post(server.api("/remember"), {"content": "the copy must hold this memory"}).status_code == 201
    server.stop(signal.SIGTERM)
    wal = server.db_path.with_name(server.db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed into the main file
    copy = tmp_path / "copied.db"
    shutil.copyfile(server.db_path, copy)  # the .db file alone, as a user would copy it
    conn = sqlite3.connect(copy)
    try:
        observations = conn.execute("SELECT count(*) FROM kv_store WHERE scope LIKE 'mem:obs:%'").fetchone()[0]
        memories = conn.execute("SELECT count(*) FROM kv_store WHERE scope = 'mem:memories'").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert (observations, memories) == (200, 1)  # on the previous main: no such table (an empty file)


def test_a_port_in_use_gives_one_clear_line(tmp_path):
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path)}
        for argv in ([sys.executable, str(SRC / "app.py"), "--port", str(port)],
                     [sys.executable, "-m", "agentmemory_server.adapters.cli", "serve", "--port", str(port)]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            output = (done.stdout + done.stderr).strip()
            assert done.returncode != 0 and len(output.splitlines()) == 1, output
            assert f"port {port}" in output and "--port" in output and "PORT" in output
            assert "listening" not in output and "Retrying" not in output
    assert not Path(tmp_path / "data" / "agentmemory.db").exists()


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_a_sigterm_to_the_server_alone_stops_its_busy_worker_and_checkpoints(live_server, tmp_path):
    """``docker stop`` and ``kill <pid>`` signal the server process only: it must stop the background
    worker it spawned (busy embedding the backlog, so writing too) before folding the WAL into the
    main file, or the worker's open connection keeps the WAL from being truncated."""
    server = live_server(env={"EMBEDDING_PROVIDER": "hash"})
    health = lambda: requests.get(server.api("/health"), timeout=10).json()  # noqa: E731
    worker = wait_for(lambda: (s := health()["background"]["supervisor"]) and s["alive"] and s["pid"], timeout=30,
                      message="the background worker did not start")
    for i in range(150):
        assert post(server.api("/observe"), hook(f"w{i % 3}", timestamp=f"2026-11-01T11:{i // 60:02d}:{i % 60:02d}Z",
                                                 data={"tool_name": "Bash", "tool_input": {"command": f"deploy {i}"},
                                                       "tool_output": "rolled out " * 50})).status_code == 201
    os.kill(server.proc.pid, signal.SIGTERM)  # not the process group: the worker gets no signal of its own
    assert server.proc.wait(timeout=60) == 0
    assert not _alive(worker), "the background worker outlived its server"
    wal = server.db_path.with_name(server.db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, f"WAL left with {wal.stat().st_size} bytes"
    copy = tmp_path / "copied.db"
    shutil.copyfile(server.db_path, copy)
    conn = sqlite3.connect(copy)
    try:
        observations = conn.execute("SELECT count(*) FROM kv_store WHERE scope LIKE 'mem:obs:%'").fetchone()[0]
    finally:
        conn.close()
    assert observations == 150


def test_a_refused_big_body_still_gets_its_answer(live_server):
    """A hook with a wrong token (or over the rate limit) that sends a big body must read the 401,
    not a reset connection: the refusal is answered after the body is read and dropped."""
    server = live_server(env={"AGENTMEMORY_MAX_BODY_BYTES": str(LIMIT), "AGENTMEMORY_SECRET": "right-token-0123456789"})
    for headers in ({}, {"Authorization": "Bearer wrong-token-9876543210"}):
        request = urllib.request.Request(server.api("/observe"), data=big_body(), method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            urllib.request.urlopen(request, timeout=60)
            raise AssertionError("a request without the token was accepted")
        except urllib.error.HTTPError as exc:  # before: ConnectionResetError / BrokenPipeError
            assert exc.code == 401 and json.loads(exc.read())["code"] == "unauthorized"


def test_writes_refused_by_the_rate_limit_are_reported_with_the_fix(live_server):
    """A 429 loses the event for hook scripts that do not spool (upstream before 0.9.30): the status
    report says so, with the settings to change."""
    server = live_server(env={"AGENTMEMORY_RATE_LIMIT": "0.2", "AGENTMEMORY_RATE_BURST": "2"})
    answers = [post(server.api("/observe"), hook(f"r{i}")).status_code for i in range(4)]
    assert answers[:2] == [201, 201] and 429 in answers[2:]
    alerts = requests.get(server.api("/status"), timeout=10).json()["alerts"]
    limited = [a for a in alerts if "rate limit" in a["message"]]
    assert limited and "POST /agentmemory/observe" in limited[0]["message"]
    assert "AGENTMEMORY_RATE_LIMIT" in limited[0]["fix"]
