"""Background work in its own process: the server spawns the worker, restarts it after SIGKILL
without losing queued work, stops it on shutdown; external mode; a worker orphaned by its
server leaves; periodic jobs run once per database; leases; the activity board."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from agentmemory_server.errors import Unavailable
from agentmemory_server.kernel import background
from agentmemory_server.kernel.scopes import SESSIONS
from agentmemory_server.retrieval import vectors
from agentmemory_server.storage.sqlite import hf_sync, local_backup
from conftest import SRC, ToolCaller, clean_environ, end_process_group, hook, post, wait_for


def _background(server) -> dict:
    return requests.get(server.api("/health"), timeout=10).json()["background"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


def _observe(server, n: int, tag: str) -> list[str]:
    return [post(server.api("/observe"), hook(f"{tag}{i}", data={"tool_name": "Bash", "tool_input": {
        "command": f"rollout {tag} shard {i} to the canary fleet"}})).json()["observationId"] for i in range(n)]


def _vector_hits(server, query: str) -> set[str]:
    body = post(server.api("/smart-search"), {"query": query, "mode": "vector", "limit": 100}).json()
    return {r["obsId"] for r in body["results"]} if body["mode"] == "vector" else set()


def _thread_niceness(pid: int) -> dict[int, int]:
    """Thread id -> nice value of each thread of ``pid`` (Linux: nice is per thread)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        found[int(task.name)] = int(fields[16])  # field 19 of stat; fields[0] is field 3
    return found


def test_the_server_spawns_a_worker_whose_model_runs_at_low_priority_and_restarts_it_after_sigkill_not_on_a_stop(
        live_server):
    server = live_server(env={"EMBEDDING_PROVIDER": "hash"})
    # The supervisor exists before its thread has spawned the worker (pid None, not alive).
    first = wait_for(lambda: (s := _background(server)["supervisor"]) and s["alive"] and s, timeout=20, interval=0.2,
                     message="the supervisor never reported a live worker")
    pid = first["pid"]
    assert _alive(pid) and first["starts"] == 1
    # Until the child has exec'd, its command line is still its parent's.
    assert wait_for(lambda: "agentmemory_server.adapters.cli" in Path(f"/proc/{pid}/cmdline").read_text(), timeout=20)
    ids = _observe(server, 6, "a")
    assert wait_for(lambda: _vector_hits(server, "rollout shard canary fleet") >= set(ids), timeout=60,
                    interval=0.3, message="the worker's vectors never reached the server")
    # The model's thread (started by the first batch) yields the CPU to requests; the process
    # itself, and the thread that writes the batch under the database's write lock, do not.
    niceness = _thread_niceness(pid)
    assert niceness[pid] == 0, niceness
    assert 19 in niceness.values(), niceness
    assert sum(n == 0 for n in niceness.values()) >= 2, niceness  # main thread + the backlog's writer

    os.kill(pid, signal.SIGKILL)
    more = _observe(server, 6, "b")  # queued while the worker is dead or restarting
    restarted = wait_for(lambda: (s := _background(server)["supervisor"])["pid"] != pid and s["alive"] and s,
                         timeout=30, interval=0.2, message="the supervisor did not restart the worker")
    assert restarted["restarts"] == 1 and restarted["lastExit"]["code"] == -signal.SIGKILL
    assert wait_for(lambda: _vector_hits(server, "rollout shard canary fleet") >= set(ids + more), timeout=60,
                    interval=0.3, message="work queued around the crash was lost")
    health = requests.get(server.api("/health"), timeout=10).json()
    assert health["vectors"]["backlog"] == 0 and health["vectors"]["embeddedSinceStart"] == 0

    new_pid = restarted["pid"]
    with requests.Session() as client:  # a client still connected: the request process lingers for it
        client.get(server.api("/health"), timeout=10)
        server.stop()  # SIGTERM to the group: the server stops its worker too
    assert not _alive(new_pid)
    # The worker hears the group's SIGTERM with its server and often exits first: that is the stop,
    # not a crash. One restart (the SIGKILL's), no warning and nothing spawned during the stop.
    log = server.log()
    assert log.count("background worker started") == 2, log[-3000:]
    assert log.count("restarting in") == 1, log[-3000:]
    assert f"background worker {new_pid} exited with" in log and "the server is stopping; not restarted" in log
    # Every process loaded faiss; none logged the CPU-specific builds it could not load, which
    # read like a failure ("Could not load library with AVX512 support due to: ModuleNotFoundError")
    assert "vector index" in server.log() and "Could not load library" not in server.log()


def test_external_mode_spawns_nothing_and_a_worker_started_by_hand_drains_the_backlog(live_server, tmp_path):
    server = live_server(env={"EMBEDDING_PROVIDER": "hash", "AGENTMEMORY_BACKGROUND": "external"})
    ids = _observe(server, 5, "x")
    time.sleep(1.0)
    health = requests.get(server.api("/health"), timeout=10).json()
    assert health["background"]["supervisor"] is None and health["background"]["workers"] == []
    assert health["vectors"]["backlog"] == 5  # nobody embeds: no worker yet
    env = {**server.env}
    worker = subprocess.Popen([sys.executable, "-m", "agentmemory_server.adapters.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: _vector_hits(server, "rollout shard canary fleet") >= set(ids), timeout=60,
                        interval=0.3, message="the external worker did not embed the backlog", proc=worker)
        workers = wait_for(lambda: _background(server)["workers"], timeout=20, interval=0.3)
        assert [w["pid"] for w in workers] == [worker.pid]
    finally:
        end_process_group(worker)
    assert worker.returncode == 0  # SIGTERM is a clean stop
    assert wait_for(lambda: _background(server)["workers"] == [], timeout=10, interval=0.2)


def test_rows_a_request_process_shed_are_embedded_by_the_worker_once_the_backlog_drains(live_server):
    server = live_server(env={"EMBEDDING_PROVIDER": "hash", "AGENTMEMORY_EMBED_BACKLOG_MAX": "3"})
    pid = wait_for(lambda: _background(server)["workers"], timeout=30, interval=0.2)[0]["pid"]
    time.sleep(3.0)  # the worker's start-up reconcile found nothing: it now only embeds the backlog
    os.kill(pid, signal.SIGSTOP)  # the backlog fills while the worker cannot take from it
    try:
        ids = _observe(server, 8, "s")
        queue = requests.get(server.api("/health"), timeout=10).json()["queues"]["embedBacklog"]
        assert queue["size"] == 3 and queue["shed"] == 5
    finally:
        os.kill(pid, signal.SIGCONT)
    # The server shed them, not the worker: the board tells the worker, which queues them again.
    assert wait_for(lambda: _vector_hits(server, "rollout shard canary fleet") >= set(ids), timeout=60,
                    interval=0.3, message="records shed by the server were never embedded")


def test_a_worker_whose_server_died_stops(tmp_path):
    """The server is SIGKILLed: its worker notices its parent is gone and leaves."""
    env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "data"), "EMBEDDING_PROVIDER": "hash"}
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time; "
         "p = subprocess.Popen([sys.executable, '-m', 'agentmemory_server.adapters.cli', 'worker', "
         "'--parent-pid', str(os.getpid())]); print(p.pid, flush=True); time.sleep(120)"],
        env=env, stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=str(SRC))
    try:
        worker_pid = int(parent.stdout.readline())
        wait_for(lambda: _alive(worker_pid) and (tmp_path / "data" / "agentmemory.db").exists(), timeout=20)
        time.sleep(1.5)
        assert _alive(worker_pid)
        parent.kill()
        parent.wait()
        wait_for(lambda: not _alive(worker_pid), timeout=15, message="the orphaned worker kept running")
    finally:
        end_process_group(parent)
        parent.stdout.close()


def test_a_jobs_last_error_is_kept_after_a_good_run_and_marked_recovered(make_runtime):
    """/health's jobs kept the lastError of a run that failed hours ago after every later run had
    succeeded: nothing said the job had recovered."""
    rt = make_runtime()
    outcomes = [OSError("No space left on device"), None, RuntimeError("again")]

    def sweep():
        if (outcome := outcomes.pop(0)) is not None:
            raise outcome

    rt.every(3600, "sweep", sweep, per_node=True)
    status = lambda: next(j for j in ToolCaller(rt)("health")["jobs"] if j["name"] == "sweep")  # noqa: E731
    rt.jobs.run_now("sweep")
    failed = status()
    assert failed["lastError"] == "No space left on device" and failed["lastErrorAt"] and failed["recoveredAt"] is None
    rt.jobs.run_now("sweep")
    recovered = status()
    assert (recovered["lastError"], recovered["lastErrorAt"]) == (failed["lastError"], failed["lastErrorAt"])
    assert recovered["recoveredAt"] >= recovered["lastErrorAt"] and recovered["runs"] == 1
    rt.jobs.run_now("sweep")
    assert status()["lastError"] == "again" and status()["recoveredAt"] is None


def test_a_shared_periodic_jobs_error_says_when_and_is_marked_recovered_by_a_later_run(make_runtime):
    """The shared schedule (background.periodic in /health) kept the last failed run's message
    forever with no time, whatever ran after it, and a known failure (an AppError: disk full, the
    database busy) was recorded as a good run. It now says when the error happened and when a
    later run succeeded; /status alerts only while the error stands. Runs on PostgreSQL too with
    AGENTMEMORY_TEST_BACKEND=postgresql."""
    rt = make_runtime()
    outcomes = [Unavailable("the database is busy"), None, None, RuntimeError("disk on fire")]

    def nightly():
        if (outcome := outcomes.pop(0)) is not None:
            raise outcome

    rt.every(3600, "nightly", nightly)
    assert not rt._claim_periodic("nightly", 3600)  # first sight: the row exists, due in an hour
    call = ToolCaller(rt)
    entry = lambda: next(j for j in call("health")["background"]["periodic"] if j["name"] == "nightly")  # noqa: E731
    alerts = lambda: [a for a in call("status")["alerts"] if "nightly" in a["message"]]  # noqa: E731

    rt.jobs.run_now("nightly")
    failed = entry()
    assert failed["lastError"] == "the database is busy" and failed["errors"] == 1
    assert failed["lastErrorAt"].endswith("Z") and failed["recoveredAt"] is None
    assert len(alerts()) == 1 and "the database is busy" in alerts()[0]["message"]

    rt.jobs.run_now("nightly")
    recovered = entry()
    assert (recovered["lastError"], recovered["lastErrorAt"]) == (failed["lastError"], failed["lastErrorAt"])
    assert recovered["recoveredAt"] >= recovered["lastErrorAt"] and recovered["runs"] == 2
    assert alerts() == []
    rt.jobs.run_now("nightly")  # a second good run keeps the recovery's time
    assert entry()["recoveredAt"] == recovered["recoveredAt"]

    rt.jobs.run_now("nightly")
    again = entry()
    assert again["lastError"] == "disk on fire" and again["recoveredAt"] is None and again["errors"] == 2
    assert again["lastErrorAt"] >= recovered["recoveredAt"] and len(alerts()) == 1


def test_a_shared_periodic_jobs_schedule_gives_its_times_as_iso_utc_as_the_rest_of_the_api(make_runtime):
    """The shared schedule (background.periodic in /health) gave when a job runs next and last
    ran only as epoch seconds, while every other time of the API, its own lastErrorAt included,
    is ISO-8601 UTC. nextRunAt and lastRunAt now say them readably (null before the first run);
    the epoch numbers stay for scripts. Runs on PostgreSQL too."""
    from datetime import datetime

    rt = make_runtime()
    rt.every(3600, "nightly", lambda: None)
    assert not rt._claim_periodic("nightly", 3600)  # first sight: the row exists, due in an hour
    call = ToolCaller(rt)
    entry = lambda: next(j for j in call("health")["background"]["periodic"] if j["name"] == "nightly")  # noqa: E731
    seen = lambda at: datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()  # noqa: E731

    before = entry()
    assert before["lastRun"] is None and before["lastRunAt"] is None
    assert before["nextRunAt"].endswith("Z") and abs(seen(before["nextRunAt"]) - before["nextRun"]) < 0.001
    rt.jobs.run_now("nightly")
    after = entry()
    assert after["lastRunAt"].endswith("Z") and abs(seen(after["lastRunAt"]) - after["lastRun"]) < 0.001


def test_periodic_jobs_run_once_per_database_across_workers(make_runtime):
    a = make_runtime()
    b = make_runtime()
    assert not a._claim_periodic("nightly", 3600)  # first sight: due one period from now
    with a.db.transaction("test") as tx:  # make it due
        tx.conn.execute("UPDATE periodic_jobs SET next_run = 0 WHERE name = 'nightly'")
    claims = [a._claim_periodic("nightly", 3600), b._claim_periodic("nightly", 3600)]
    assert claims == [True, False]  # the second worker sees the run taken
    a._periodic_done("nightly", None)
    status = b.db.reader().jobs.periodic_status()
    assert status[0]["name"] == "nightly" and status[0]["runs"] == 1 and status[0]["holder"] == a.worker_id


# A worker process that claims the due run of "nightly" (its claim lasting argv[3] seconds) and
# is still in the middle of it when the test kills it.
_CLAIMING_WORKER = """
import os, sys, time
from pathlib import Path
from agentmemory_server.kernel import periodic, runtime
from agentmemory_server.kernel.settings import Settings
periodic.CLAIM_LEASE_SECONDS = float(sys.argv[3])
settings = Settings.from_env(os.environ, data_dir=sys.argv[1], background_jobs=False, embedding_provider="none",
                             auth="off")
rt = runtime.Runtime(settings, role="worker")
marker = Path(sys.argv[2])

def nightly():
    marker.write_text(rt.worker_id)
    time.sleep(3600)

rt.every(3600, "nightly", nightly)
rt.jobs._due(rt.jobs._jobs[0])
"""


def _periodic_row(rt, name: str) -> dict:
    return next(j for j in rt.db.reader().jobs.periodic_status() if j["name"] == name)


def _make_due(rt, name: str) -> None:
    assert not rt._claim_periodic(name, 3600)  # first sight: the row exists, due in an hour
    with rt.db.transaction("test") as tx:
        tx.conn.execute(f"UPDATE periodic_jobs SET next_run = 0 WHERE name = '{name}'")


def test_a_periodic_run_whose_worker_was_killed_mid_run_is_run_by_another_worker_once_its_claim_lapses(
        make_runtime, tmp_path):
    """A worker claimed the due run of a daily job and was SIGKILLed in the middle of it (out of
    memory, its node lost). The claim had moved the job's next run a period on, so nobody ran it
    for a day. Now a claim lasts a lease its holder renews while it runs: once the dead worker's
    lapses, another worker runs the job, and records the next run one period after its own claim.
    Runs on PostgreSQL too (AGENTMEMORY_TEST_BACKEND=postgresql)."""
    rt = make_runtime()
    _make_due(rt, "nightly")
    marker = tmp_path / "running"
    url = rt.settings.database_url
    env = {**clean_environ(), **({"AGENTMEMORY_DATABASE_URL": url} if url else {})}
    worker = subprocess.Popen([sys.executable, "-c", _CLAIMING_WORKER, str(tmp_path / "data"), str(marker), "2"],
                              env=env, cwd=str(SRC), start_new_session=True)
    try:
        killed = wait_for(lambda: marker.exists() and marker.read_text(), timeout=60, proc=worker,
                          message="the worker never started the run")
        assert _periodic_row(rt, "nightly")["holder"] == killed
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        end_process_group(worker)
    ran: list[float] = []
    rt.every(3600, "nightly", lambda: ran.append(time.time()))
    job = next(j for j in rt.jobs._jobs if j["name"] == "nightly")
    wait_for(lambda: rt.jobs._due(job) or ran, timeout=60, interval=0.2,
             message="the killed worker's run was not taken up by another worker (lost until the next period)")
    row = _periodic_row(rt, "nightly")
    assert ran and row["holder"] == rt.worker_id != killed and row["runs"] == 1, row
    assert row["nextRun"] > ran[0] + 3500, row  # the next run is a period on, not a lease


def test_a_worker_refused_a_claim_polls_again_when_it_lapses_not_up_to_a_minute_later(make_runtime, monkeypatch):
    """Worker A claimed a daily job's due run and died (it never renews the claim). Worker B,
    refused the claim, asked again a minute later, whatever the claim's lease: the run started
    up to its lease plus 60 s late. Now B polls again when the schedule says the claim lapses
    (``next_run``), and takes the run up at that poll: once, as a claim is one conditional
    write. Runs on PostgreSQL too (AGENTMEMORY_TEST_BACKEND=postgresql)."""
    from agentmemory_server.kernel import periodic

    monkeypatch.setattr(periodic, "CLAIM_LEASE_SECONDS", 2.0)
    a, b = make_runtime(), make_runtime()
    _make_due(a, "nightly")
    assert a._claim_periodic("nightly", 3600)  # and A dies: its claim lapses in 2 s
    lapses = _periodic_row(b, "nightly")["nextRun"]
    ran: list[str] = []
    b.every(3600, "nightly", lambda: ran.append(b.worker_id))
    job = next(j for j in b.jobs._jobs if j["name"] == "nightly")
    b.jobs._due(job)  # B's poll: refused, A's claim holds
    assert not ran
    polls_at = job["next"] - time.monotonic() + time.time()  # B's next poll, in epoch seconds
    assert abs(polls_at - lapses) < 1.0, (polls_at - lapses)  # before: a minute after the refusal
    wait_for(lambda: time.monotonic() >= job["next"], timeout=30, interval=0.1)  # as B's loop waits
    b.jobs._due(job)
    row = _periodic_row(b, "nightly")
    assert ran == [b.worker_id] and (row["holder"], row["runs"]) == (b.worker_id, 1), (ran, row)
    assert not a._periodic_done("nightly", None, lapses + 3600)  # A's finish, were it to wake, is refused


def test_a_periodic_run_longer_than_its_claim_keeps_other_workers_off_while_its_worker_lives(
        make_runtime, monkeypatch):
    """A claim lasts a few minutes, not the period: the worker renews it while the run goes on,
    so a run longer than that is not run a second time by another worker; recording the run
    sets the next one a period after the claim. Runs on PostgreSQL too."""
    from agentmemory_server.kernel import periodic

    monkeypatch.setattr(periodic, "CLAIM_LEASE_SECONDS", 3.0)
    a, b = make_runtime(), make_runtime()
    started, release = threading.Event(), threading.Event()
    a.every(3600, "nightly", lambda: (started.set(), release.wait(120)))
    _make_due(a, "nightly")
    job = next(j for j in a.jobs._jobs if j["name"] == "nightly")
    runner = threading.Thread(target=a.jobs._due, args=(job,), daemon=True)
    claimed_by = time.time()
    runner.start()
    try:
        assert started.wait(30)
        first_lease = _periodic_row(b, "nightly")["nextRun"]
        assert first_lease < claimed_by + 600  # the claim lasts the lease, not the period
        wait_for(lambda: _periodic_row(b, "nightly")["nextRun"] > first_lease + 3, timeout=60, interval=0.1,
                 message="the running worker did not renew its claim past the first lease")
        assert not b._claim_periodic("nightly", 3600)  # its run goes on: nobody else runs it
    finally:
        release.set()
        runner.join(timeout=30)
    row = _periodic_row(b, "nightly")
    assert row["runs"] == 1 and row["nextRun"] > time.time() + 3500, row  # one period after the claim
    assert not b._claim_periodic("nightly", 3600)


def test_a_finished_run_whose_claim_another_worker_took_up_is_not_recorded_over_its_run(make_runtime):
    """Worker A's claim lapsed (it was stopped past its lease) and worker B took the run up and
    recorded it. A's finish, recorded afterwards, still counted a second run and set the job's
    last run and error over B's. Now it is refused: the schedule, the count and the outcome are
    B's. Runs on PostgreSQL too (AGENTMEMORY_TEST_BACKEND=postgresql)."""
    a, b = make_runtime(), make_runtime()
    _make_due(a, "nightly")
    a_claimed = time.time()
    assert a._claim_periodic("nightly", 3600)
    with a.db.transaction("test") as tx:  # A's lease lapsed: it did not renew it
        tx.conn.execute("UPDATE periodic_jobs SET next_run = 0 WHERE name = 'nightly'")
    b_claimed = time.time()
    assert b._claim_periodic("nightly", 3600)
    b._periodic_done("nightly", None, b_claimed + 3600)
    refused = a._periodic_done("nightly", "disk on fire", a_claimed + 3600)
    row = _periodic_row(a, "nightly")
    assert (row["holder"], row["runs"], row["errors"], row["lastError"]) == (b.worker_id, 1, 0, None), row
    assert row["nextRun"] == b_claimed + 3600 and refused is False, row


def test_two_runtimes_made_in_one_process_in_the_same_second_have_different_worker_ids(make_runtime):
    """The worker id was host:pid:start second, so two runtimes of one process started in the
    same second shared it, and with it their claims of periodic runs (either could renew or
    record the other's). It now ends with a random part."""
    for _attempt in range(5):
        a, b = make_runtime(), make_runtime()
        if int(a.started_at) == int(b.started_at):
            break
    assert int(a.started_at) == int(b.started_at)
    assert a.worker_id != b.worker_id, (a.worker_id, b.worker_id)
    host, pid = a.worker_id.split(":")[:2]
    assert host and pid == str(os.getpid())  # still says where it runs


# A worker process that claims the due run of the eviction sweep (its claim lasting argv[3]
# seconds) and, once the sweep has read what it is to do, waits for the file argv[4]: the test
# stops it (SIGSTOP) there, past its claim, and lets it go on (SIGCONT) once another worker ran
# the sweep.
_STALLED_EVICT_WORKER = """
import os, sys, time
from pathlib import Path
from agentmemory_server.kernel import periodic
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.memory import retention
from agentmemory_server.wiring import build_runtime
periodic.CLAIM_LEASE_SECONDS = float(sys.argv[3])
settings = Settings.from_env(os.environ, data_dir=sys.argv[1], background_jobs=False, embedding_provider="none",
                             auth="off")
rt = build_runtime(settings, role="worker")
reading, go = Path(sys.argv[2]), Path(sys.argv[4])
read = retention._stale_sessions

def read_then_wait(*args, **kwargs):
    found = read(*args, **kwargs)
    reading.write_text(rt.worker_id)
    while not go.exists():
        time.sleep(0.05)
    return found

retention._stale_sessions = read_then_wait
rt.jobs._due(next(j for j in rt.jobs._jobs if j["name"] == "evict"))
rt.close()
"""


def test_a_run_whose_worker_was_stopped_past_its_claim_does_not_do_the_work_again_when_it_wakes(
        make_runtime, tmp_path):
    """Worker A claimed the eviction sweep, read an idle session to summarise, and was stopped
    (SIGSTOP) past its claim; worker B took the run up, summarised the session and recorded the
    run. Woken (SIGCONT), A summarised the session a second time (a second model call where a
    model is set) and recorded a second run over B's. Now A stops at its next checkpoint: the
    session is summarised once, and the schedule is B's. Runs on PostgreSQL too."""
    rt = make_runtime()
    call = ToolCaller(rt)
    call("agent_observe", **hook("idle", data={"tool_name": "Bash", "tool_input": {"command": "make release"}}))
    with rt.db.transaction("test") as tx:  # the session has been idle for two months
        session = tx.records.get(SESSIONS, "idle")
        session["startedAt"] = session["updatedAt"] = "2020-01-01T00:00:00.000Z"
        tx.records.set(SESSIONS, "idle", session, now=session["updatedAt"])
    _make_due(rt, "evict")
    reading, go = tmp_path / "reading", tmp_path / "go"
    url = rt.settings.database_url
    env = {**clean_environ(), **({"AGENTMEMORY_DATABASE_URL": url} if url else {})}
    worker = subprocess.Popen(
        [sys.executable, "-c", _STALLED_EVICT_WORKER, str(tmp_path / "data"), str(reading), "2", str(go)],
        env=env, cwd=str(SRC), start_new_session=True)
    try:
        stalled = wait_for(lambda: reading.exists() and reading.read_text(), timeout=60, proc=worker,
                           message="the worker never read what its sweep was to do")
        worker.send_signal(signal.SIGSTOP)
        job = next(j for j in rt.jobs._jobs if j["name"] == "evict")
        claimed_by = time.time()
        wait_for(lambda: rt.jobs._due(job) or _periodic_row(rt, "evict")["runs"], timeout=60, interval=0.2,
                 message="the stopped worker's run was not taken up once its claim lapsed")
        assert call("session_get", sessionId="idle")["session"]["summary"]
        go.touch()
        worker.send_signal(signal.SIGCONT)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.send_signal(signal.SIGCONT)
        end_process_group(worker)
    assert call("memory_audit", operation="summarize")["total"] == 1  # the session was summarised once
    row = _periodic_row(rt, "evict")
    assert row["holder"] == rt.worker_id != stalled and row["runs"] == 1, row
    assert row["nextRun"] >= claimed_by + job["every"], row  # a period after the second worker's claim


def test_an_eviction_read_before_its_claim_was_taken_up_does_not_apply_that_reading(make_runtime, monkeypatch):
    """Worker A's eviction sweep read its victims (one observation over the project's cap of 2)
    and stalled past its claim. Meanwhile a user deleted another observation of the project and
    worker B, taking the run up, found the project within its cap. A, going on, still deleted
    its victim: the project fell below the cap. The sweep's delete now checks the claim inside its
    transaction and writes nothing once the run is another worker's. Runs on PostgreSQL too."""
    from agentmemory_server.memory import retention

    a, b = make_runtime(max_obs_per_project=2), make_runtime(max_obs_per_project=2)
    call = ToolCaller(a)
    ids = [call("agent_observe", **hook("busy", timestamp=f"2026-11-0{i + 1}T10:00:00.000Z",
                                        data={"tool_name": "Bash", "tool_input": {"command": f"deploy shard {i}"}}))
           ["observationId"] for i in range(3)]
    runner_name = "stalled-evict"
    read_it, go_on = threading.Event(), threading.Event()
    read = retention._stale_sessions

    def read_then_stall(*args, **kwargs):  # after the victims were read, in A's run only
        found = read(*args, **kwargs)
        if threading.current_thread().name == runner_name:
            read_it.set()
            go_on.wait(60)
        return found

    monkeypatch.setattr(retention, "_stale_sessions", read_then_stall)
    job_a, job_b = (next(j for j in rt.jobs._jobs if j["name"] == "evict") for rt in (a, b))
    _make_due(a, "evict")
    assert a.jobs._take(job_a)
    runner = threading.Thread(target=a.jobs.run, args=(job_a,), name=runner_name, daemon=True)
    runner.start()
    try:
        assert read_it.wait(30)
        with a.db.transaction("test") as tx:  # A's claim lapses
            tx.conn.execute("UPDATE periodic_jobs SET next_run = 0 WHERE name = 'evict'")
        call("memory_forget", sessionId="busy", observationIds=[ids[2]])  # the user deletes one
        b.jobs._due(job_b)  # B takes the run up: the project is within its cap
        assert _periodic_row(b, "evict")["holder"] == b.worker_id
    finally:
        go_on.set()
        runner.join(30)
    left = [o["id"] for o in call("memory_observations", sessionId="busy")["observations"]]
    assert sorted(left) == sorted(ids[:2]), left  # A's old reading evicted nothing
    row = _periodic_row(a, "evict")
    assert row["holder"] == b.worker_id and row["runs"] == 1, row


@pytest.mark.sqlite_only  # local snapshots are of a SQLite file (PostgreSQL is backed up by its server)
def test_a_local_snapshot_run_taken_up_by_another_worker_is_not_taken_again_by_the_first(make_runtime):
    """Worker A claimed the local snapshot and stalled before taking it; worker B took the run up
    and took the snapshot. A, going on, took a second one in the same period, which pushed a good
    older snapshot out of the kept ones. A run now finds the period's snapshot written since it
    was claimed and takes none, and its finish is not recorded over B's."""
    a, b = make_runtime(local_backup_interval=3600), make_runtime(local_backup_interval=3600)
    job_a, job_b = (next(j for j in rt.jobs._jobs if j["name"] == "local_backup") for rt in (a, b))
    _make_due(a, "local_backup")
    assert a.jobs._take(job_a)  # A claims the run, then stalls past its claim
    with a.db.transaction("test") as tx:
        tx.conn.execute("UPDATE periodic_jobs SET next_run = 0 WHERE name = 'local_backup'")
    b.jobs._due(job_b)
    assert len(local_backup.snapshots(b.services["backups"].directory)) == 1
    a.jobs.run(job_a)  # A wakes and goes on with its run
    assert len(local_backup.snapshots(a.services["backups"].directory)) == 1
    row = _periodic_row(a, "local_backup")
    assert row["holder"] == b.worker_id and row["runs"] == 1, row


@pytest.mark.sqlite_only  # local snapshots are of a SQLite file (PostgreSQL is backed up by its server)
def test_a_snapshot_taken_by_a_run_that_stalled_before_recording_it_is_not_taken_again_by_the_run_that_took_it_up(
        make_runtime, monkeypatch):
    """Worker A's local snapshot run took its snapshot and stalled before recording the run; its
    claim lapsed and worker B took the run up. B looked only for a snapshot taken since its own
    claim, found none, and took a second one, which pushed the oldest good snapshot out of the
    three kept. Now a run looks for one taken since its period began (its due time): B takes
    none, records the run, and every older snapshot is kept. The next period's run takes one."""
    a, b = make_runtime(local_backup_interval=3600), make_runtime(local_backup_interval=3600)
    folder = a.services["backups"].directory
    keep = a.settings.local_backup_keep
    older = [local_backup.take(a.db.path, folder, keep=keep, reserve_bytes=0)["file"]
             for _ in range(keep - 1)]  # earlier periods' snapshots: room for one more in the kept ones
    assert not a._claim_periodic("local_backup", 3600)  # first sight: the row exists, due in an hour
    due = time.time()  # the run is due now, after the earlier periods' snapshots
    with a.db.transaction("test") as tx:
        tx.conn.execute("UPDATE periodic_jobs SET next_run = ? WHERE name = 'local_backup'", (due,))
    taken, go_on = threading.Event(), threading.Event()
    take = local_backup.take

    def take_then_stall(*args, **kwargs):  # A's run: its snapshot is written, then it stalls
        found = take(*args, **kwargs)
        if threading.current_thread().name == "stalled-backup":
            taken.set()
            go_on.wait(60)
        return found

    monkeypatch.setattr(local_backup, "take", take_then_stall)
    job_a, job_b = (next(j for j in rt.jobs._jobs if j["name"] == "local_backup") for rt in (a, b))
    assert a.jobs._take(job_a)
    runner = threading.Thread(target=a.jobs.run, args=(job_a,), name="stalled-backup", daemon=True)
    runner.start()
    try:
        assert taken.wait(30)
        stalled = [str(p) for p in local_backup.snapshots(folder)]
        assert len(stalled) == keep and set(older) < set(stalled), stalled
        with a.db.transaction("test") as tx:  # A's claim lapses (its lease's end is past)
            tx.conn.execute("UPDATE periodic_jobs SET next_run = ? WHERE name = 'local_backup'", (time.time(),))
        b.jobs._due(job_b)  # B takes the run up
        assert [str(p) for p in local_backup.snapshots(folder)] == stalled  # no second snapshot, none pushed out
        row = _periodic_row(b, "local_backup")
        assert row["holder"] == b.worker_id and row["runs"] == 1 and not row["lastError"], row  # B recorded it
    finally:
        go_on.set()
        runner.join(30)
    assert [str(p) for p in local_backup.snapshots(folder)] == stalled
    with b.db.transaction("test") as tx:  # the next period
        tx.conn.execute("UPDATE periodic_jobs SET next_run = ? WHERE name = 'local_backup'", (time.time(),))
    b.jobs._due(job_b)
    now_kept = [str(p) for p in local_backup.snapshots(folder)]
    assert len(now_kept) == keep and now_kept[1:] == stalled[:-1], now_kept  # a new one; the oldest goes


def _due_since(rt, name: str, due: float) -> None:
    """The shared schedule as a node that went down leaves it: the run of ``name`` was claimed by
    one of its workers, whose claim lapsed at ``due``; the run has been due since."""
    with rt.db.transaction("test") as tx:
        tx.jobs.claim_periodic(name, time.time(), due, "a worker of a node that went down")
    assert rt.db.reader().jobs.periodic_due_at(name) == due


def test_a_periodic_run_long_overdue_has_the_period_before_its_claim_not_the_time_it_became_due(make_runtime):
    """A run due a day ago (its node was down; or a due time an older version left) is claimed
    now. The work it looks back at (a local snapshot taken since its period began) is of the
    period that ends at its claim, not of the whole day since it became due. Before,
    ``period_began`` gave the due time, a day back. Runs on PostgreSQL too
    (AGENTMEMORY_TEST_BACKEND=postgresql)."""
    rt = make_runtime()
    seen: list[tuple[float | None, float]] = []
    rt.every(3600, "nightly", lambda: seen.append((rt.jobs.period_began(), job["claimedAt"])))
    job = next(j for j in rt.jobs._jobs if j["name"] == "nightly")
    _due_since(rt, "nightly", time.time() - 86400)
    rt.jobs._due(job)
    [(began, claimed)] = seen
    assert began == claimed - 3600, (began, claimed)
    assert _periodic_row(rt, "nightly")["holder"] == rt.worker_id


@pytest.mark.sqlite_only  # local snapshots are of a SQLite file (PostgreSQL is backed up by its server)
def test_a_local_snapshot_run_long_overdue_takes_a_snapshot_though_an_earlier_period_took_one_since_it_was_due(
        make_runtime):
    """The hourly local snapshot's run has been due for a day (the node was down) and a snapshot
    was taken two hours ago (by hand, or before the node went down). The run claimed now takes a
    snapshot: the one of two hours ago is an earlier period's. Before, the run's period began
    when it became due, the old snapshot counted as this period's, and none was taken, though
    the newest one kept was two hours old."""
    rt = make_runtime(local_backup_interval=3600)
    folder = rt.services["backups"].directory
    taken = Path(local_backup.take(rt.db.path, folder, keep=rt.settings.local_backup_keep, reserve_bytes=0)["file"])
    two_hours_ago = folder / f"{local_backup.PREFIX}{hf_sync.stamp(time.time() - 7200)}.db"
    taken.rename(two_hours_ago)  # its name says when it was taken
    assert local_backup.snapshots(folder) == [two_hours_ago]
    _due_since(rt, "local_backup", time.time() - 86400)
    rt.jobs._due(next(j for j in rt.jobs._jobs if j["name"] == "local_backup"))
    kept = local_backup.snapshots(folder)
    assert len(kept) == 2 and kept[1] == two_hours_ago, kept  # a new one, taken now
    assert local_backup.newest_taken_at(folder) > time.time() - 600, kept
    row = _periodic_row(rt, "local_backup")
    assert row["holder"] == rt.worker_id and row["runs"] == 1 and not row["lastError"], row


def test_a_claimed_batch_of_a_dead_worker_is_taken_over(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    registry_call = __import__("agentmemory_server.kernel.registry", fromlist=["call"])
    for i in range(3):
        registry_call.call(registry_call.Ctx(rt), "agent_observe", {"sessionId": "s", "content": f"note {i}"})
    now = time.time()
    with rt.db.transaction("dead_worker") as tx:  # a worker claims the batch, then dies
        assert len(tx.vectors.backlog_claim(10, now, now + 600)) == 3
    svc = vectors.service(rt)
    assert svc.drain() == 0  # hidden by the lease
    assert svc.release_leases() == 3 and svc.drain() == 3  # what a starting worker does
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 0 and len(svc.index) == 3


def test_the_activity_board_shows_requests_in_flight(tmp_path):
    db = tmp_path / "x.db"
    assert not background.busy(db, 0.05)
    board = background.ActivityBoard(db)
    try:
        board.begin()
        assert background.busy(db, 0.05)
        board.end()
        assert background.busy(db, 10.0) and wait_for(lambda: not background.busy(db, 0.05), timeout=2)
        board.post_shed(4)
        assert background.shed_by_process(db) == {os.getpid(): 4}
    finally:
        board.close()
    board.post_shed(5)  # a thread still running at shutdown: nothing to post, nothing raised
    board.begin()
    board.end()
    stale = background.board_dir(db) / "999999999.bin"  # a process that died without cleaning up
    stale.write_bytes(b"\x01" + b"\x00" * 15)
    assert not background.busy(db, 0.05) and not stale.exists()


def test_missed_heartbeats_while_the_database_does_not_answer_are_one_warning_without_a_traceback(
        make_runtime, monkeypatch, caplog):
    # Each missed beat logged an ERROR with a traceback, every 5 s of a PostgreSQL restart.
    rt = make_runtime()
    status = rt.services["background"]

    def no_answer(*_args, **_kwargs):
        raise Unavailable("the database does not answer; retry when it is back")

    monkeypatch.setattr(rt.db, "transaction", no_answer)
    with caplog.at_level(logging.WARNING, logger="agentmemory.background"):
        for _ in range(3):
            status.beat_or_say_why()
    said = [r for r in caplog.records if r.name == "agentmemory.background"]
    assert [r.levelname for r in said] == ["WARNING"] and said[0].exc_info is None, said
    assert "does not answer" in said[0].getMessage()


def test_roles_decide_where_loops_run():
    assert background.runs_loops("process", True, "worker") and background.runs_loops("external", True, "worker")
    assert not background.runs_loops("process", True, "server") and background.runs_loops("inline", True, "server")
    assert not background.runs_loops("inline", False, "server") and not background.runs_loops("inline", True, "tool")


def test_a_worker_started_while_the_previous_one_of_its_node_runs_waits_for_it(tmp_path):
    """A request process holding the spawn lock is SIGKILLed: its worker A is still finishing when a
    sibling spawns worker B. B holds back (the node's worker lock) until A has exited, and A leaves at
    once (the kernel signals it when its server dies), so no two workers run jobs at the same time."""
    env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "data"), "EMBEDDING_PROVIDER": "hash"}
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    worker = [sys.executable, "-m", "agentmemory_server.adapters.cli", "worker", "--parent-pid"]
    with open(a_log, "wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-c",
             f"import os, subprocess, sys, time; p = subprocess.Popen({worker!r} + [str(os.getpid())]); "
             "print(p.pid, flush=True); time.sleep(120)"],
            env=env, stdout=subprocess.PIPE, stderr=out, text=True, start_new_session=True, cwd=str(SRC))
    second = None
    try:
        a_pid = int(parent.stdout.readline())
        wait_for(lambda: f"background worker {a_pid} running" in a_log.read_text(), timeout=30, proc=parent,
                 message=lambda: f"worker A never ran: {a_log.read_text()[-2000:]}")
        with open(b_log, "wb") as out:
            second = subprocess.Popen(worker + [str(os.getpid())], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=str(SRC))
        said = wait_for(lambda: next((t for t in [b_log.read_text()] if "waiting for the previous" in t
                                      or " running on " in t), None),
                        timeout=30, proc=second, message=lambda: b_log.read_text()[-2000:])
        assert " running on " not in said, f"worker B ran while worker A ({a_pid}) was running:\n{said}"
        time.sleep(0.5)
        assert _alive(a_pid) and " running on " not in b_log.read_text()
        killed = time.monotonic()
        parent.kill()
        b_ran = wait_for(lambda: " running on " in b_log.read_text(), timeout=30, interval=0.01, proc=second,
                         message=lambda: f"worker B never ran:\n{b_log.read_text()[-2000:]}")
        assert b_ran and not _alive(a_pid), "worker B ran jobs while worker A was still alive"
        a_left = time.monotonic() - killed
        assert a_left < 10, a_left
        assert "the server that started it" in a_log.read_text()
    finally:
        end_process_group(parent)
        parent.stdout.close()
        if second is not None:
            end_process_group(second)


def test_several_request_processes_of_a_node_run_one_background_worker(live_server):
    # Kept-alive connections outlast the waits below (the backlog's embedding can take more than the
    # default 5 s on a loaded machine), so each pinned session stays with its request process.
    server = live_server(env={"EMBEDDING_PROVIDER": "hash", "AGENTMEMORY_WORKERS": "3", "AGENTMEMORY_THREADS": "8",
                              "AGENTMEMORY_KEEPALIVE": "120"})

    def seen(sessions: list[requests.Session]) -> tuple[set[int], set[int], set[int]]:
        """Asked of every request process: workers alive in the database, and supervisors that spawned or
        stand by."""
        workers, spawning, standing_by = set(), set(), set()
        for session in sessions:
            health = session.get(server.api("/health"), timeout=10).json()
            workers |= {w["pid"] for w in health["background"]["workers"]}
            supervisor = health["background"]["supervisor"]
            if supervisor and not supervisor["standby"]:
                spawning.add(supervisor["pid"])
            elif supervisor:
                standing_by.add(health["live"]["bus"]["origin"])
        return workers, spawning, standing_by

    with server.pinned_sessions(3) as sessions:
        workers, spawning, standing_by = wait_for(lambda: (s := seen(sessions))[0] and s, timeout=30, interval=0.5)
        assert len(workers) == 1 and spawning == workers, (workers, spawning)
        assert len(standing_by) == 2, f"two of the three processes stand by: {standing_by}"
        ids = _observe(server, 4, "one")
        assert wait_for(lambda: _vector_hits(server, "rollout shard canary fleet") >= set(ids), timeout=60,
                        interval=0.3, message="the node's one worker did not embed the backlog")
        time.sleep(2.5)  # the standby supervisors poll the lock every 2 s: none may spawn meanwhile
        assert seen(sessions)[0] == workers


def test_the_background_worker_finds_the_package_without_an_install(tmp_path):
    # README's quick start runs `python src/app.py` from a checkout with only requirements.txt
    # installed: the worker child (`python -m agentmemory_server...`) must find the package
    # through its environment. `-S` hides the editable install the test virtualenv has.
    from agentmemory_server.adapters import supervisor

    code = "import agentmemory_server; print(agentmemory_server.__file__)"
    bare = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert bare.returncode != 0  # the control: nothing else makes it importable here
    found = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           env=supervisor.worker_env())
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == Path(supervisor.agentmemory_server.__file__).resolve()


def test_the_model_runs_on_a_low_priority_thread_and_the_batch_is_written_from_the_caller(make_runtime):
    """A batch's transactions must not run at the lowest priority: a thread that holds the
    database's write lock and waits for a core stalls every writer."""
    rt = make_runtime(embedding_provider="hash")
    registry_call = __import__("agentmemory_server.kernel.registry", fromlist=["call"])
    for i in range(3):
        registry_call.call(registry_call.Ctx(rt), "agent_observe", {"sessionId": "s", "content": f"note {i}"})
    svc = vectors.service(rt)
    model, seen = svc.embedder.embed, []

    def embed_and_note_the_thread(texts, **kwargs):
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return model(texts, **kwargs)

    svc.embedder.embed = embed_and_note_the_thread
    caller = threading.get_native_id()
    assert os.getpriority(os.PRIO_PROCESS, caller) == 0
    assert svc.drain() == 3
    assert seen and all(tid != caller and nice == 19 for tid, nice in seen), seen
    assert os.getpriority(os.PRIO_PROCESS, caller) == 0  # the writer kept its priority
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 0 and len(svc.index) == 3


def test_a_closing_runtime_keeps_the_activity_board_until_its_services_have_stopped(tmp_path):
    """A service's threads (the vector index follower posts on the board every step) run until
    the service closes; the board used to close first, and a server stopped while a slower
    service closed logged the follower's failure four times a second until the process ended."""
    from agentmemory_server.kernel.runtime import Runtime
    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.wiring import SUBSYSTEMS

    seen: list[bool] = []

    class PostsUntilClosed:
        def __init__(self, rt: Runtime):
            self.rt = rt

        def close(self) -> None:
            seen.append(self.rt.activity.path.exists())
            self.rt.activity.post_shed(1)

    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), background_jobs=True, background="inline",
                                 embedding_provider="none", auth="off")
    rt = Runtime(settings, subsystems=[*SUBSYSTEMS, ("posts_until_closed", PostsUntilClosed)])
    assert rt.activity is not None
    board = rt.activity.path
    rt.close()
    assert seen == [True] and not board.exists()


def test_a_worker_row_whose_pid_now_names_a_process_started_after_it_counts_as_ended(make_runtime):
    """A worker row keeps its pid after the worker died; once the system gives that pid to
    another process, the pid is alive but the worker is not. Before, ``still_running`` kept
    such a row (a spool waiting on a worker that no longer exists, a health page counting it).
    Now a process that started after the row's ``startedAt`` (the worker runtime's start, later
    than its own process's) is another process. A live process started before its row stays."""
    import socket

    rt = make_runtime()
    host = socket.gethostname()
    later = subprocess.Popen(["sleep", "60"])  # a live process started after the rows below
    try:
        with rt.db.transaction("beats") as tx:
            now = time.time()
            tx.jobs.worker_beat("reused", host, later.pid, now - 3600, now, {"role": "worker"})
            tx.jobs.worker_beat("ours", host, os.getpid(), rt.started_at, now, {"role": "worker"})
        rows = rt.db.reader().jobs.workers(time.time() - 60)
        assert {row["id"] for row in rows} == {"reused", "ours"}, rows
        running = background.still_running(rows)
        assert [row["id"] for row in running] == ["ours"], running
    finally:
        later.kill()
        later.wait()
