"""The capture spool (capture/spool.py): hook events the database cannot take, not even into the
capture inbox, wait on this node's disk and are stored, in order, once it can.

The database here is a real SQLite file held locked by another connection (as a long write in
another process would hold it), with the lock wait cut so a test does not wait for it (but for
the last test, which runs a real server with its default wait). The
PostgreSQL case (the database gone) is in test_postgres.py, a restart in between in
test_damaged_database.py."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import requests

from agentmemory_server.adapters.web import create_app
from agentmemory_server.capture import spool
from conftest import ManualClock, hook, wait_for

pytestmark = pytest.mark.sqlite_only

CWD = "/home/u/shop"


@pytest.fixture
def locked_app(make_runtime):
    rt = make_runtime(lock_wait_seconds=0.2)
    return rt, create_app(runtime=rt).test_client()


@contextmanager
def write_locked(rt_or_path):
    """Another connection holds the write lock: every write waits out the busy timeout."""
    path = getattr(getattr(rt_or_path, "db", None), "path", rt_or_path)
    other = sqlite3.connect(path, isolation_level=None, timeout=5)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def claude(client, event: str, **fields):
    payload = {"session_id": "cc-7", "cwd": CWD, "hook_event_name": event, **fields}
    return client.post("/agentmemory/hooks/claude-code", json=payload)


def spool_files(rt) -> list[str]:
    folder = rt.services["capture_spool"].folder
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def test_events_wait_on_disk_while_the_database_is_locked_and_are_stored_in_order_after(locked_app):
    # Before, each of these got a 503: the capture inbox that keeps a failed event is in the same
    # locked database, and Claude Code's http hooks do not resend.
    rt, client = locked_app
    assert claude(client, "SessionStart", source="startup").status_code == 200
    with write_locked(rt):
        prompt = claude(client, "UserPromptSubmit", prompt="Retry the flaky upload with backoff")
        edit = claude(client, "PostToolUse", tool_name="Edit", tool_use_id="t-1",
                      tool_input={"file_path": f"{CWD}/src/retry.ts", "old_string": "a", "new_string": "b"},
                      tool_response={"success": True})
        ended = claude(client, "SessionEnd", reason="exit")
        noted = client.post("/agentmemory/observe", json=hook("rest-1", content="a note while locked"))
        assert [r.status_code for r in (prompt, edit, ended)] == [200, 200, 200], prompt.text
        assert noted.status_code == 202, noted.text
        assert noted.json["spooled"] is True and "busy" in noted.json["error"], noted.json
        # Upstream's clients read these from every 2xx: the file is on disk, nothing to keep.
        assert noted.json["durableAfterMs"] == 0 and noted.json["bootId"] == rt.hub.epoch
        kinds = [json.loads((rt.services["capture_spool"].folder / n).read_text())["kind"] for n in spool_files(rt)]
        assert kinds == ["observation", "observation", "observation", "sessionEnd", "observation"], kinds
        # Reads go on in WAL mode: the inbox is empty, the spool says what waits.
        capture = client.get("/agentmemory/capture").json
        assert capture["inbox"]["pending"] == 0 and capture["spool"]["events"] == 5, capture
        assert client.get("/agentmemory/health").json["capture_spool"]["events"] == 5
        alerts = [a["message"] for a in client.get("/agentmemory/status").json["alerts"]]
        assert any(m.startswith("5 hook event(s) wait on this node's disk") for m in alerts), alerts
        waiting = rt.services["capture_retry"].drain_spool()  # the database still cannot take them
        assert (waiting["recovered"], waiting["waiting"]) == (0, 5) and len(spool_files(rt)) == 5
    drained = client.post("/agentmemory/capture/drain", json={}).json
    assert drained["results"][0] == {"source": "server-spool", "matched": 5, "recovered": 5, "dead": 0,
                                     "retrying": 0, "unreadable": 0, "waiting": 0}, drained
    assert spool_files(rt) == []
    stored = client.get("/agentmemory/observations?sessionId=cc-7").json["observations"]
    hooks = sorted((o["timestamp"], o["hookType"]) for o in stored)
    assert [h for _, h in hooks] == ["session_start", "prompt_submit", "post_tool_use", "session_end"], hooks
    sessions = {s["id"]: s for s in client.get("/agentmemory/sessions").json["sessions"]}
    assert sessions["cc-7"]["status"] == "completed", sessions["cc-7"]  # its end ran after its event
    assert client.get("/agentmemory/observations?sessionId=rest-1").json["observations"][0]["narrative"]
    # The client resending its event later is a duplicate, not a second copy.
    assert client.post("/agentmemory/observe", json=hook("rest-1", content="a note while locked")).status_code == 200


def test_after_the_lock_is_let_go_an_event_a_second_or_two_later_is_stored_directly_not_spooled(make_runtime, caplog):
    """Before, once a write found the lock taken, every event of the process went to the spool
    for 30 s or until some other write committed, though the lock was let go long before: they
    waited for the next drain. Now one event at a time tries the store, a second after the
    failure, then 2, 4... s after each failed try (the others spool without a try meanwhile);
    the first that is stored lets the next ones through, and the spool drains. Time is the
    runtime's clock, moved by hand; the tries are the log lines of the writes that failed."""
    manual = ManualClock(start=time.time())
    rt = make_runtime(clock=manual.clock, lock_wait_seconds=0.2, capture_retry_interval_ms=200)
    client = create_app(runtime=rt).test_client()

    def observe(session: str):
        return client.post("/agentmemory/observe", json=hook(session, content=f"note of {session}"))

    def tries() -> int:
        return sum(r.getMessage().startswith("storing observation ") for r in caplog.records)

    def spooled(answer) -> bool:
        return answer.status_code == 202 and answer.json.get("spooled") is True

    steps = []  # (session, seconds moved before it, spooled, writes tried so far)
    with caplog.at_level("WARNING", logger="agentmemory.capture"):
        with write_locked(rt):
            for session, moved in (("p-1", 0), ("p-2", 0.5), ("p-3", 0.6), ("p-4", 1.5), ("p-5", 0.6), ("p-6", 3.0)):
                manual.advance(moved)
                steps.append((session, moved, spooled(observe(session)), tries()))
        # The lock is let go; no write commits: only a probe finds out, 4 s after the last failed one.
        manual.advance(0.5)
        steps.append(("p-7", 0.5, spooled(observe("p-7")), tries()))
        manual.advance(1.5)
        answers = {s: observe(s) for s in ("p-8", "p-9")}
    assert steps == [
        ("p-1", 0, True, 1),  # the write that found the lock taken
        ("p-2", 0.5, True, 1),  # spooled without a try
        ("p-3", 0.6, True, 2),  # a second on: it tries the store, and fails
        ("p-4", 1.5, True, 2),  # the next try is due 2 s after that one
        ("p-5", 0.6, True, 3),  # it is: it fails too
        ("p-6", 3.0, True, 3),  # the next is due 4 s after that one
        ("p-7", 0.5, True, 3),  # the lock is let go, but no try is due yet
    ], steps
    assert answers["p-8"].status_code == 201, answers["p-8"].json  # its turn: stored directly, not spooled
    assert answers["p-9"].status_code == 201, answers["p-9"].json  # and every event after it
    assert rt.services["capture"].since_start["storeProbes"] == 3
    # The commit showed the database takes writes: the spool drains by itself (background jobs off).
    wait_for(lambda: spool_files(rt) == [], timeout=20, message=lambda: f"still spooled: {spool_files(rt)}")
    sessions = [f"p-{i}" for i in range(1, 10)]
    assert stored_sessions(lambda path: client.get(path).json, sessions) == sessions
    assert observe("p-4").status_code == 200  # stored once: a resend is a duplicate


def test_a_full_or_switched_off_spool_leaves_the_503(locked_app):
    rt, client = locked_app
    rt.services["capture_spool"].max = 1
    with write_locked(rt):
        assert client.post("/agentmemory/observe", json=hook("s1")).status_code == 202
        full = client.post("/agentmemory/observe", json=hook("s2"))
        assert full.status_code == 503 and full.json["code"] == "database_busy", full.json
        rt.services["capture_spool"].max = 0
        off = client.post("/agentmemory/observe", json=hook("s3"))
        assert off.status_code == 503 and off.json["code"] == "database_busy"
    assert len(spool_files(rt)) == 1
    # Turned off since, what it kept is still stored.
    assert rt.services["capture_retry"].drain_spool()["recovered"] == 1 and spool_files(rt) == []


def test_an_unreadable_file_is_set_aside_and_abandoned_ones_are_taken_back(locked_app):
    rt, client = locked_app
    service = rt.services["capture_spool"]
    with write_locked(rt):
        for session in ("dead-drainer", "stuck-drainer", "busy-drainer"):
            assert client.post("/agentmemory/observe", json=hook(session)).status_code == 202
    dead_one, stuck_one, busy_one = spool_files(rt)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    # Taken by a process that died just now; by a live one (ours, the parent) for longer than the
    # lease; by a live one a moment ago, which is still draining it.
    os.rename(service.folder / dead_one, service.folder / f"{dead_one}{spool.DRAINING}{exited.pid}")
    stuck = service.folder / f"{stuck_one}{spool.DRAINING}{os.getppid()}"
    os.rename(service.folder / stuck_one, stuck)
    old = time.time() - spool.LEASE_SECONDS - 60
    os.utime(stuck, (old, old))
    busy = service.folder / f"{busy_one}{spool.DRAINING}{os.getppid()}"
    os.rename(service.folder / busy_one, busy)
    (service.folder / "00000000000000000001-1-deadbeef.json").write_text("{not json")
    # JSON, but no event in it: set aside too, instead of holding up every event behind it.
    (service.folder / "00000000000000000001-2-deadbeef.json").write_text('{"kind": "observation", "entry": {}}')
    # A write that never reached its rename, long ago (removed), and one in progress (left).
    half = service.folder / ".00000000000000000002-1-cafe.json.tmp"
    half.write_text('{"kind": "obs')
    os.utime(half, (old, old))
    (service.folder / ".00000000000000000003-1-cafe.json.tmp").write_text('{"kind": "obs')
    outcome = rt.services["capture_retry"].drain_spool()
    assert (outcome["recovered"], outcome["unreadable"]) == (2, 2), outcome
    assert spool_files(rt) == [".00000000000000000003-1-cafe.json.tmp",
                               "00000000000000000001-1-deadbeef.json" + spool.UNREADABLE,
                               "00000000000000000001-2-deadbeef.json" + spool.UNREADABLE, busy.name]
    for session in ("dead-drainer", "stuck-drainer"):
        assert client.get(f"/agentmemory/observations?sessionId={session}").json["observations"]
    health = client.get("/agentmemory/health").json["capture_spool"]
    assert health["status"] == "degraded" and health["unreadable"] == 2, health


def test_the_spool_folder_is_under_the_data_dir_with_its_tilde_expanded(make_runtime, tmp_path, monkeypatch):
    # The default data dir is "~/.agentmemory": read as it is, the spool went to a folder named "~"
    # below wherever the server was started.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    rt = make_runtime(data_dir="~/.agentmemory")
    assert rt.services["capture_spool"].folder == tmp_path / "home" / ".agentmemory" / "server-spool"


def test_while_another_process_holds_the_write_lock_a_hook_is_answered_before_it_gives_up(live_server, tmp_path):
    """A real server with its default lock wait, and the command Claude Code's durable hooks run
    (which waits 10 s for the server, then keeps the event on the agent's machine). Before, a
    hook event waited 30 s for the lock, then 30 s more to be kept in the capture inbox (in the
    same locked database), then went to the spool: the agent stalled for the hook's whole timeout
    on every event, and the client kept a second copy."""
    server = live_server()
    home = tmp_path / "agent-home"
    env = {**os.environ, "HOME": str(home)}
    env.pop("AGENTMEMORY_DATA_DIR", None)

    def run_hook(event: str, **fields):
        payload = {"session_id": "cc-lock", "cwd": CWD, "hook_event_name": event, **fields}
        done = subprocess.run([sys.executable, "-m", "agentmemory_server.adapters.entry", "hook", "claude-code",
                               "--url", server.url], input=json.dumps(payload), capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode == 0 and not done.stderr, done.stderr  # the server's answer, in time
        return done

    with write_locked(server.db_path):
        run_hook("SessionStart", source="startup")  # a start waits once, not once per write
        run_hook("PostToolUse", tool_name="Edit", tool_use_id="t-1", tool_response={"success": True},
                 tool_input={"file_path": f"{CWD}/src/retry.ts", "old_string": "a", "new_string": "b"})
        capture = requests.get(server.api("/capture"), timeout=10).json()
        assert capture["spool"]["events"] == 2 and capture["inbox"]["pending"] == 0, capture
    assert not (home / ".agentmemory").exists()  # nothing kept on the agent's side: the server has it
    drained = requests.post(server.api("/capture/drain"), json={}, timeout=30).json()
    assert drained["results"][0]["recovered"] == 2, drained
    stored = requests.get(server.api("/observations"), params={"sessionId": "cc-lock"}, timeout=10).json()
    assert sorted(o["hookType"] for o in stored["observations"]) == ["post_tool_use", "session_start"]


def stored_sessions(get, sessions) -> list[str]:
    return [s for s in sessions if get(f"/agentmemory/observations?sessionId={s}")["observations"]]


def test_with_background_jobs_off_spooled_events_are_stored_after_a_write_commits_without_a_drain_call(make_runtime):
    # Before, no worker ran to drain the spool: the events waited for a POST /capture/drain that
    # nothing said was needed, possibly forever.
    rt = make_runtime(lock_wait_seconds=0.2, capture_retry_interval_ms=200)
    assert rt.settings.background_jobs is False
    client = create_app(runtime=rt).test_client()
    sessions = ("off-1", "off-2", "off-3")
    with write_locked(rt):
        for session in sessions:
            kept = client.post("/agentmemory/observe", json=hook(session, content=f"kept for {session}"))
            assert kept.status_code == 202 and kept.json["spooled"] is True, kept.json
        spool_health = client.get("/agentmemory/health").json["capture_spool"]
        assert (spool_health["events"], spool_health["drainedBy"]) == (3, "requests"), spool_health
        alerts = [a for a in client.get("/agentmemory/status").json["alerts"] if "capture spool" in a["message"]]
        assert "AGENTMEMORY_BACKGROUND_JOBS=false" in alerts[0]["fix"], alerts
    # Reads alone do not drain (nothing says the database takes writes yet); a write that commits does.
    assert len(spool_files(rt)) == 3
    noted = client.post("/agentmemory/remember", json={"content": "The upload retries with backoff"})
    assert noted.status_code in (200, 201), noted.json
    wait_for(lambda: spool_files(rt) == [], timeout=20, message=lambda: f"still spooled: {spool_files(rt)}")
    assert stored_sessions(lambda path: client.get(path).json, sessions) == list(sessions)
    assert client.get("/agentmemory/health").json["capture_spool"]["events"] == 0


def spool_hook_events(server, sessions):
    """Send one hook event per session while the write lock is taken: each is spooled (202)."""
    for session in sessions:
        kept = requests.post(server.api("/observe"), json=hook(session), timeout=30)
        assert kept.status_code == 202 and kept.json()["spooled"] is True, kept.text


def test_with_background_jobs_off_a_server_drains_what_waits_at_start_up(live_server):
    """A real server process: events spooled while another process held the write lock, the
    server stopped before any write committed again; started again, it stores them by itself."""
    server = live_server(env={"AGENTMEMORY_BACKGROUND_JOBS": "false", "AGENTMEMORY_LOCK_WAIT_SECONDS": "0.2",
                              "AGENTMEMORY_CAPTURE_RETRY_INTERVAL_MS": "500"})
    folder = server.data_dir / spool.FOLDER
    sessions = ("boot-1", "boot-2")
    with write_locked(server.db_path):
        spool_hook_events(server, sessions)
        server.stop()
    assert len(list(folder.glob("*.json"))) == 2  # nothing drained them before the stop
    server.start()
    wait_for(lambda: not list(folder.glob("*.json")), timeout=30,
             message=lambda: f"still spooled: {os.listdir(folder)}\n{server.log()[-3000:]}")
    get = lambda path: requests.get(server.url + path, timeout=10).json()  # noqa: E731
    assert stored_sessions(get, sessions) == list(sessions)


def test_with_no_live_worker_on_the_node_request_processes_drain_the_spool_themselves(make_runtime):
    # AGENTMEMORY_BACKGROUND=external and no `agentmemory worker` started. At first the spool's
    # events waited with /status saying they would be stored "within a retry interval"; then it
    # said `drainedBy: nobody` (two alerts besides the missing worker's) and still nothing stored
    # them. Now the request processes drain it, as with background jobs off.
    rt = make_runtime(lock_wait_seconds=0.2, background_jobs=True, background="external",
                      capture_retry_interval_ms=200)
    rt.started_at -= 60  # past the time a worker starting with the server has to report
    client = create_app(runtime=rt).test_client()
    with write_locked(rt):
        assert client.post("/agentmemory/observe", json=hook("orphan")).status_code == 202
    health = client.get("/agentmemory/health").json
    spool_health = health["capture_spool"]
    assert (spool_health["drainedBy"], spool_health["status"]) == ("requests", "ok"), spool_health
    assert health["background"]["workers"] == [] and health["background"]["status"] == "degraded"
    alerts = client.get("/agentmemory/status").json["alerts"]
    degraded = [a["message"] for a in alerts if a["level"] == "error"]
    assert len(degraded) == 1 and degraded[0].startswith("background is degraded"), alerts
    spooled = next(a for a in alerts if "capture spool" in a["message"])
    assert "no background worker alive" in spooled["fix"], spooled
    noted = client.post("/agentmemory/remember", json={"content": "The upload retries with backoff"})
    assert noted.status_code in (200, 201), noted.json
    wait_for(lambda: spool_files(rt) == [], timeout=20, message=lambda: f"still spooled: {spool_files(rt)}")
    assert stored_sessions(lambda path: client.get(path).json, ["orphan"]) == ["orphan"]


def test_a_server_whose_worker_is_not_running_stores_spooled_events_itself(live_server):
    """A real server with background jobs on and its worker not running (external, none started):
    events spooled while the write lock was taken are stored by the server once a write of it
    commits, and /health says ``drainedBy: requests``. Before, they waited for a drain call, with
    ``drainedBy: nobody``."""
    server = live_server(env={"AGENTMEMORY_BACKGROUND": "external", "AGENTMEMORY_LOCK_WAIT_SECONDS": "0.2",
                              "AGENTMEMORY_CAPTURE_RETRY_INTERVAL_MS": "500"})
    folder = server.data_dir / spool.FOLDER
    sessions = ("lone-1", "lone-2")
    with write_locked(server.db_path):
        spool_hook_events(server, sessions)
    health = lambda: requests.get(server.api("/health"), timeout=10).json()  # noqa: E731
    # Once the start-up grace of a worker starting with the server is over (30 s):
    spool_health = wait_for(lambda: (h := health())["background"]["status"] == "degraded" and h["capture_spool"],
                            timeout=90, interval=0.5)
    assert (spool_health["drainedBy"], spool_health["events"]) == ("requests", 2), spool_health
    noted = requests.post(server.api("/remember"), json={"content": "The upload retries with backoff"}, timeout=30)
    assert noted.status_code == 201, noted.text
    wait_for(lambda: not list(folder.glob("*.json")), timeout=30,
             message=lambda: f"still spooled: {os.listdir(folder)}\n{server.log()[-3000:]}")
    get = lambda path: requests.get(server.url + path, timeout=10).json()  # noqa: E731
    assert stored_sessions(get, sessions) == list(sessions)
    assert health()["capture_spool"]["events"] == 0


def test_agentmemory_status_with_no_server_up_says_nothing_drains_the_spool_until_one_starts(locked_app, tmp_path):
    """The real CLI, its data dir holding events a server spooled before it stopped, and no server
    answering. A server's /health says who drains its spool (``worker`` or ``requests``); with no
    server up, nothing does, and `agentmemory status` now says so (``drainedBy: none``, the events
    wait until a server starts) instead of leaving the spool out."""
    from conftest import clean_environ, free_port

    rt, client = locked_app
    with write_locked(rt):
        for session in ("down-1", "down-2"):
            assert client.post("/agentmemory/observe", json=hook(session)).status_code == 202
    assert client.get("/agentmemory/health").json["capture_spool"]["drainedBy"] == "requests"  # a server's answer
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()  # nothing listens there
    env = {**clean_environ(), "HOME": str(home), "AGENTMEMORY_DATA_DIR": str(rt.settings.data_dir),
           "PORT": str(port)}

    def status(*args):
        done = subprocess.run([sys.executable, "-m", "agentmemory_server.adapters.cli", "status", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=home)
        assert done.returncode == 0, done.stderr
        return done.stdout

    report = json.loads(status("--json"))
    assert report["server"].startswith("not reachable"), report
    waiting = report["captureSpool"]
    assert (waiting["events"], waiting["drainedBy"]) == (2, "none"), waiting
    assert waiting["folder"] == str(rt.services["capture_spool"].folder) and waiting["oldestAt"], waiting
    assert "nothing stores them until a server starts" in waiting["hint"], waiting
    said = status()
    assert f"2 hook event(s) in {waiting['folder']} (capture spool, drained by none)" in said, said
    # Agents that use another server (a team's) are not served from this directory's spool, and
    # a server running here may be draining it: nothing is said of it then.
    env["AGENTMEMORY_URL"] = f"http://127.0.0.1:{free_port()}"
    assert "captureSpool" not in json.loads(status("--json"))
