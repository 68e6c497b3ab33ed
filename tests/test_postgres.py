"""What only the PostgreSQL backend has: jsonb records that keep any text, its schema lock,
pgvector's HNSW index, the per-node Tantivy outbox and periodic runs claimed once per database.
Everything else runs on both backends through the shared suites (conftest.BOTH_BACKENDS)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faults
import numpy as np
import psycopg
import pytest

from agentmemory_server.adapters.server import SHUTDOWN_GRACE_SECONDS
from agentmemory_server.adapters.web import create_app
from agentmemory_server.kernel.util import Clock
from agentmemory_server.retrieval import search, vectors
from agentmemory_server import errors
from agentmemory_server.errors import Unavailable
from agentmemory_server.storage.postgres import PostgresDatabase, pool as pg_pool
from agentmemory_server.storage.postgres import faults as pg_faults
from agentmemory_server.storage.postgres import migrations as pg_migrations
from agentmemory_server.storage.postgres import schema as pg_schema
from agentmemory_server.storage.postgres.schema import SchemaTooNew
from agentmemory_server.storage.urls import without_password
from conftest import LiveServer, ManualClock, ToolCaller, free_port, hook, jobs_waiting, periodic_run_due_now, post, wait_for


@pytest.fixture
def url(pg_cluster):
    made = pg_cluster.create_database()
    yield made
    pg_cluster.drop_database(made)


def test_records_keep_text_jsonb_cannot_hold(url, make_runtime):
    rt = make_runtime(database_url=url)
    odd = {"nul": "a\x00b", "lone": "x\ud800y", "emoji": "ok \U0001f600", "nested": {"k\x00": ["\x00"]}}
    with rt.db.transaction("t") as tx:
        tx.records.set("mem:test", "odd", odd, now="t")
        tx.records.set("mem:test", "plain", {"n": 1}, now="t")
    store = rt.db.reader()
    assert store.records.get("mem:test", "odd") == odd and store.records.get("mem:test", "plain") == {"n": 1}
    ToolCaller(rt)("memory_save", content="binary junk \x00 in a memory about zebras")
    assert search.bm25(rt.db.reader(), "zebras", limit=5)


def test_the_location_hides_the_password_and_a_newer_schema_is_refused(url, tmp_path):
    assert without_password("postgresql://me:s3cret@db:5432/mem") == "postgresql://me:***@db:5432/mem"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE agentmemory_schema SET version = version + 5")
    with pytest.raises(SchemaTooNew):
        PostgresDatabase(url, local_path=tmp_path / "x.db", now=Clock().iso, background=False)


def test_a_schema_7_database_upgrades_with_nothing_lost_and_its_periodic_schedule_gains_error_times(
        pg_cluster, tmp_path):
    """PostgreSQL migration 8 adds when a periodic job's last error happened and when a later run
    succeeded. A database at schema 7 (made by migrations 1-7, which are never edited) keeps its
    records and its schedule's rows; an error from before has no time, and the next good run marks
    it recovered."""
    name = f"upgrade7_{os.getpid()}"
    pg_cluster._admin(f"CREATE DATABASE {name}")
    url = pg_cluster.url_of(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # what schema 7's code left
            conn.execute("CREATE TABLE agentmemory_schema (version INTEGER NOT NULL, id TEXT NOT NULL)")
            for _name, migrate in pg_migrations.MIGRATIONS[:7]:
                with conn.transaction():
                    migrate(conn)
            conn.execute("INSERT INTO agentmemory_schema VALUES (7, 'abcdef123456')")
            conn.execute("INSERT INTO kv_store (scope, key, value, updated_at) VALUES "
                         "('mem:memories', 'm1', '{\"id\": \"m1\"}', '2026-12-01T00:00:00Z')")
            conn.execute("INSERT INTO periodic_jobs (name, next_run, holder, runs, errors, last_run, last_error) "
                         "VALUES ('retention', 1900000000, 'host:1:2', 7, 2, 1899990000, 'OSError: disk full')")
        db = PostgresDatabase(url, local_path=tmp_path / "x.db", now=Clock().iso, background=False)
        try:
            assert db.schema_version == len(pg_migrations.MIGRATIONS) == 9
            assert db.reader().records.get("mem:memories", "m1") == {"id": "m1"}
            assert db.reader().jobs.periodic_status() == [
                {"name": "retention", "nextRun": 1_900_000_000.0, "holder": "host:1:2", "runs": 7, "errors": 2,
                 "lastRun": 1_899_990_000.0, "lastError": "OSError: disk full", "lastErrorAt": None,
                 "recoveredAt": None}]
            assert db.reader().jobs.periodic_due_at("retention") == 1_900_000_000.0  # migration 9: due at its next run
            with db.transaction("test") as tx:
                tx.jobs.periodic_done("retention", 1_900_000_005.0, None)
            (retention,) = db.reader().jobs.periodic_status()
            assert retention["lastError"] == "OSError: disk full" and retention["recoveredAt"] == 1_900_000_005.0
        finally:
            db.close()
    finally:
        pg_cluster._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_vectors_get_an_hnsw_index_per_model_and_nearest_uses_it(url, make_runtime):
    rt = make_runtime(database_url=url)
    call = ToolCaller(rt)
    ids = [call("memory_save", content=" ".join(f"v{i}x{k}" for k in range(6)))["memory"]["id"] for i in range(20)]
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = rt.db.reader().index.lookup(ids, {})
    with rt.db.transaction("embed") as tx:
        for row, vector in zip(rows, vectors, strict=True):
            assert tx.vectors.put(row["rowid"], "test-model", vector.astype("<f4").tobytes(), 8, "t")
    assert rt.db.reader().vectors.counts() == {"test-model/8": 20}
    loaded = {rowid: np.frombuffer(blob, "<f4") for rowid, blob, *_ in rt.db.reader().vectors.load("test-model", 8)}
    assert len(loaded) == 20
    best = rt.db.reader().vectors.search("test-model", 8, vectors[3], 3, {})
    assert best[0][0] == rows[3]["rowid"] and best[0][1] == pytest.approx(1.0, abs=1e-5) and len(best) == 3
    assert rt.db.reader().vectors.search("test-model", 8, vectors[3], 3, {"kinds": ["no-such-kind"]}) == []
    assert rt.db.vector_index("test-model", 8).status()["vectors"] == 20
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # 20 rows: without this the planner scans
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT v.doc_rowid FROM search_vectors v JOIN search_docs d ON d.id = v.doc_rowid "
            "WHERE v.model = 'test-model' AND v.dim = 8 "
            "ORDER BY v.vector::vector(8) <=> '[1,0,0,0,0,0,0,0]'::vector(8) LIMIT 3"))
        indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'search_vectors'")]
    assert any("hnsw" in d and "vector_cosine_ops" in d for d in indexes), indexes
    assert "search_vectors_hnsw" in plan, plan  # the search's query shape can use the model's index


def test_each_node_keeps_its_own_index_and_the_outbox_waits_for_the_slowest(url, make_runtime, tmp_path):
    a = make_runtime(data_dir=str(tmp_path / "a"), database_url=url, node_id="node-a")
    b = make_runtime(data_dir=str(tmp_path / "b"), database_url=url, node_id="node-b")
    assert a.db.lexical.dir != b.db.lexical.dir
    call = ToolCaller(a)
    for i in range(10):  # distinct words: no memory supersedes another
        call("memory_save", content=f"platypus " + " ".join(f"w{i}x{k}" for k in range(6)))
    a.db.flush()
    b.db.flush()
    assert b.db.lexical.health()["documents"] == 10  # B applied what A wrote
    with psycopg.connect(url) as conn:
        nodes = dict(conn.execute("SELECT node, applied_seq FROM lexical_nodes").fetchall())
        conn.execute("UPDATE lexical_outbox SET at = 0")  # old enough to prune
        conn.execute("UPDATE lexical_nodes SET applied_seq = 0 WHERE node = 'node-b'")  # B is behind
    assert set(nodes) == {"node-a", "node-b"}
    call("memory_save", content="platypus one more entirely different statement")
    a.db.flush()
    with psycopg.connect(url) as conn:
        kept = conn.execute("SELECT count(*) FROM lexical_outbox").fetchone()[0]
    assert kept >= 11  # nothing B has not applied was pruned
    hits = search.bm25(b.db.reader(), "platypus", limit=20)
    assert len(hits) == 11  # B finds the newest one from its pending tail


def test_full_text_answers_while_a_node_builds_its_index(url, make_runtime, tmp_path):
    a = make_runtime(data_dir=str(tmp_path / "a"), database_url=url)
    ToolCaller(a)("memory_save", content="the kingfisher dives for fish")
    builtin = make_runtime(data_dir=str(tmp_path / "c"), database_url=url, lexical_engine="builtin")
    hits = search.bm25(builtin.db.reader(), "kingfisher fish", limit=5)
    assert hits and hits[0]["score"] > 0


def test_a_periodic_run_is_claimed_by_one_node_only(url, make_runtime, tmp_path):
    nodes = [make_runtime(data_dir=str(tmp_path / n), database_url=url) for n in ("a", "b")]
    claims: list[tuple[str, float]] = []
    lock = threading.Lock()
    start = 1_900_000_000.0

    barrier = threading.Barrier(4)

    def tick(rt, holder: str) -> None:
        for period in range(1, 31):  # 30 periods of 60 s, every worker of both nodes trying each
            barrier.wait(timeout=60)  # one clock for all: nobody is in the next period yet
            now = start + period * 60
            with rt.db.transaction("periodic") as tx:
                won = tx.jobs.claim_periodic("retention", now, now + 60, holder)
            if won:
                with lock:
                    claims.append((holder, now))

    threads = [threading.Thread(target=tick, args=(rt, f"node-{i}-t{t}")) for i, rt in enumerate(nodes)
               for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = [now for _holder, now in claims]
    assert len(times) == len(set(times)), "two workers claimed the same run"
    assert len(times) == 29  # the first sight of a job schedules it one period later, then one run a period


def test_writers_waiting_for_the_lock_leave_a_search_its_connection(url, make_runtime):
    """Writers and searches at once with two pooled connections: every call finishes. (Writers
    waiting for the cluster lock used to hold every connection while a search holding the
    search engine's pending lock waited for one, and the lock holder, searching inside its
    transaction, waited for that search: a deadlock the pool's 30 s timeout broke with a 503.)"""
    rt = make_runtime(database_url=url, database_pool=2)
    call = ToolCaller(rt)
    call("memory_save", content="the heron queue drains at night")
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(6):
                if i % 2:
                    call("memory_save", content=f"heron queue note {i} {j}", project="p")
                else:
                    call("memory_smart_search", query="heron queue")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not [t for t in threads if t.is_alive()] and not failures, failures[:3]
    assert rt.db.reader().records.count("mem:memories") == 1 + 4 * 6  # every save kept (as a version)


def test_record_indexes_are_left_alone_by_an_opener_that_declares_none(url, tmp_path):
    """As on SQLite (tests/test_schema_upgrades.py): a node declaring the record indexes keeps
    them; a tool's connection declaring none does not drop them under the other nodes."""
    import psycopg

    from agentmemory_server.kernel.scopes import RECORD_INDEXES
    from agentmemory_server.storage import open_database
    from agentmemory_server.storage.postgres.records import index_name

    def indexes() -> set[str]:
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'kv_idx_%'").fetchall()
        return {r[0] for r in rows}

    declared = {index_name(spec) for spec in RECORD_INDEXES}
    assert indexes() == declared  # the template was made by a node declaring them
    open_database(tmp_path / "x.db", now=lambda: "t", url=url, lexical_engine="builtin", background=False).close()
    assert indexes() == declared
    open_database(tmp_path / "x.db", now=lambda: "t", url=url, lexical_engine="builtin", background=False,
                  record_indexes=RECORD_INDEXES[:2]).close()
    assert indexes() == {index_name(spec) for spec in RECORD_INDEXES[:2]}


def _start(tmp_path: Path, database_url: str) -> subprocess.CompletedProcess:
    server = LiveServer(tmp_path, {"AGENTMEMORY_DATABASE_URL": database_url}, [], start=False)
    app = Path(__file__).parent.parent / "src" / "app.py"
    return subprocess.run([sys.executable, str(app)], env=server.env, capture_output=True, text=True, timeout=120)


def test_a_server_that_cannot_use_its_postgresql_says_why_in_one_line(url, tmp_path):
    # Nothing listens on the port: every request process used to fail to boot with a traceback.
    down = _start(tmp_path, f"postgresql://alice:hunter2@127.0.0.1:{free_port()}/memory")
    assert down.returncode != 0 and "listening" not in down.stdout
    assert "not serving: cannot connect to postgresql://alice:***@127.0.0.1:" in down.stderr, down.stderr
    assert "To fix: start PostgreSQL" in down.stderr and "Traceback" not in down.stderr
    assert "hunter2" not in down.stdout + down.stderr
    # Another database's URL is refused before anything connects, naming only its scheme.
    other = _start(tmp_path, "mysql://alice:hunter2@127.0.0.1/memory")
    assert other.returncode != 0 and "AGENTMEMORY_DATABASE_URL: expected postgresql://" in other.stderr, other.stderr
    assert "'mysql' URL" in other.stderr and "hunter2" not in other.stderr and "Traceback" not in other.stderr
    # A database a newer release wrote.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE agentmemory_schema SET version = version + 5")
    newer = _start(tmp_path, url)
    assert newer.returncode != 0 and "not serving" in newer.stderr and "schema version" in newer.stderr, newer.stderr
    assert "upgrade agentmemory-python" in newer.stderr and "Traceback" not in newer.stderr


def test_the_start_up_line_names_the_postgresql_store_without_its_password(url, tmp_path):
    with_password = url.replace("://postgres:@", "://postgres:pw-not-checked@", 1)  # the test cluster trusts its users
    # libpq also reads a password from the query string
    with_password += ("&" if "?" in with_password else "?") + "password=pw-in-query-not-checked"
    assert with_password != url and with_password.startswith("postgresql://"), url
    # A URL's scheme is case-insensitive; libpq takes only the lower-case one, so the setting lowers it.
    shouted = "PostgreSQL" + with_password[len("postgresql") :]
    server = LiveServer(tmp_path, {"AGENTMEMORY_DATABASE_URL": shouted}, [])
    try:
        banner = server.log_path.read_text().splitlines()[0]
        assert f"(database {without_password(with_password)};" in banner and "agentmemory.db" not in banner, banner
        # the background worker's line named a SQLite file in the data directory it never opened
        wait_for(lambda: "running on" in server.log(), timeout=60, message="the background worker never started")
        worker = next(line for line in server.log().splitlines() if "running on" in line)
        database = url.split("?", 1)[0].rsplit("/", 1)[1]
        assert "running on postgresql://" in worker and f"/{database}?" in worker, worker
        assert "agentmemory.db" not in worker, worker
        assert "pw-not-checked" not in server.log_path.read_text()
        assert "pw-in-query-not-checked" not in server.log_path.read_text()
    finally:
        server.stop()


def test_a_server_with_an_embedder_runs_its_vector_index_follower_without_failing(pg_cluster, tmp_path):
    # The follower asked pgvector's index how many changes were unsaved, which it does not count:
    # each request process logged a KeyError traceback four times a second, and never reached
    # requeueing shed vectors (the default embedder on PostgreSQL, since 2026-12-05).
    url = pg_cluster.create_database()
    server = LiveServer(tmp_path, {"AGENTMEMORY_DATABASE_URL": url, "EMBEDDING_PROVIDER": "hash"}, [])
    try:
        for i in range(3):
            r = post(server.api("/observe"), hook("vectors", content=f"upload retry with backoff, step {i}",
                                                  timestamp=f"2026-11-01T10:00:0{i}Z"))
            assert r.status_code == 201, r.text
        wait_for(lambda: post(server.api("/smart-search"), {"query": "upload retry backoff"}).json().get("mode")
                 == "hybrid", timeout=30, message="the records were never embedded")
        time.sleep(1.0)  # four follower steps in each request process
    finally:
        server.stop()
        pg_cluster.drop_database(url)
    log = server.log()
    assert "vector index failed" not in log and "Traceback" not in log, log[-3000:]


def test_a_server_whose_database_is_gone_still_stops_promptly_on_sigterm(pg_cluster, tmp_path):
    # Threads waiting for a pooled connection (the lexical applier, the event bus) used to wait
    # out the pool's 30 s while shutdown joined them, past the grace after which gunicorn kills
    # the request processes.
    url = pg_cluster.create_database()
    server = LiveServer(tmp_path, {"AGENTMEMORY_DATABASE_URL": url}, [])
    try:
        assert post(server.api("/observe"), hook("gone")).status_code == 201
        pg_cluster.drop_database(url)
        assert server.proc is not None
        asked = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=SHUTDOWN_GRACE_SECONDS + 30)
        took = time.monotonic() - asked
    finally:
        server.stop()
        pg_cluster.drop_database(url)
    log = server.log()
    assert took < SHUTDOWN_GRACE_SECONDS, f"stopped after {took:.1f} s: the request processes were killed\n{log[-3000:]}"
    assert "shutting down without postgresql://" in log and "Traceback" not in log.split("Handling signal: term")[-1]


def test_hook_events_wait_on_disk_while_the_database_does_not_answer_and_are_stored_when_it_is_back(
    pg_cluster, make_runtime
):
    # Before, each event got a 503 and was lost: the capture inbox that keeps a failed event lives
    # in the database that does not answer, and Claude Code's http hooks do not resend.
    url = pg_cluster.create_database()
    name = url.split("?", 1)[0].rsplit("/", 1)[1]
    rt = make_runtime(database_url=url)
    client = create_app(runtime=rt).test_client()

    def claude(event, **fields):
        payload = {"session_id": "cc-pg", "cwd": "/home/u/shop", "hook_event_name": event, **fields}
        return client.post("/agentmemory/hooks/claude-code", json=payload)

    assert claude("SessionStart", source="startup").status_code == 200
    pg_cluster.drop_database(url)
    answers = [
        claude("UserPromptSubmit", prompt="Make the upload retry with backoff"),
        claude("PostToolUse", tool_name="Edit", tool_use_id="t-1", tool_response={"success": True},
               tool_input={"file_path": "/home/u/shop/src/retry.ts", "old_string": "a", "new_string": "b"}),
        claude("SessionEnd", reason="exit"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    noted = client.post("/agentmemory/observe", json=hook("rest-pg", content="noted while it was gone"))
    assert noted.status_code == 202 and noted.json["spooled"] is True, noted.json
    assert "does not answer" in noted.json["error"], noted.json
    health = client.get("/agentmemory/health")
    assert health.status_code == 503 and health.json["capture_spool"]["events"] == 5, health.json
    assert rt.services["capture_retry"].drain_spool()["waiting"] == 5  # still gone: they wait
    pg_cluster._admin(f"CREATE DATABASE {name} TEMPLATE {pg_cluster.TEMPLATE}")  # back, though empty
    drained = rt.services["capture_retry"].drain_spool()
    assert (drained["recovered"], drained["waiting"]) == (5, 0), drained
    stored = client.get("/agentmemory/observations?sessionId=cc-pg").json["observations"]
    assert sorted((o["timestamp"], o["hookType"]) for o in stored)[-1][1] == "session_end"
    assert [o["hookType"] for o in sorted(stored, key=lambda o: o["timestamp"])] == [
        "prompt_submit", "post_tool_use", "session_end"]
    sessions = {s["id"]: s for s in client.get("/agentmemory/sessions").json["sessions"]}
    assert sessions["cc-pg"]["status"] == "completed", sessions["cc-pg"]
    assert client.get("/agentmemory/health").json["capture_spool"]["events"] == 0
    assert client.post("/agentmemory/observe", json=hook("rest-pg", content="noted while it was gone")).status_code == 200
    pg_cluster.drop_database(url)


def test_after_an_event_the_store_did_not_answer_the_next_ones_go_to_the_spool_without_another_try(
        pg_cluster, make_runtime, caplog):
    """An event whose write met the store not answering went to the spool. Before, only a lock
    held past the wait was remembered so: each later event tried the database again (and logged
    its failure) while the outage lasted. Now an outage is remembered the same way: this
    process's next events go to the spool at once, for up to 30 s or until a write commits.
    The runtime's clock stands still: no event's turn to try the store comes (one a second
    after the failure, test_spool.py)."""
    url = pg_cluster.create_database()
    rt = make_runtime(database_url=url, clock=Clock(lambda: 1_800_000_000.0))
    client = create_app(runtime=rt).test_client()
    assert client.post("/agentmemory/observe", json=hook("gone-pg", content="before")).status_code == 201
    pg_cluster.drop_database(url)
    with caplog.at_level("WARNING", logger="agentmemory.capture"):
        answers = [client.post("/agentmemory/observe", json=hook("gone-pg", content=f"while gone {i}"))
                   for i in range(3)]
    assert [(a.status_code, a.json.get("spooled")) for a in answers] == [(202, True)] * 3, [a.json for a in answers]
    assert all("does not answer" in a.json["error"] for a in answers), [a.json for a in answers]
    tried = [r.getMessage() for r in caplog.records if r.getMessage().startswith("storing observation ")]
    assert len(tried) == 1, tried  # the first event only; before: one per event
    assert rt.services["capture_spool"].status()["events"] == 3


def test_once_the_store_answers_again_an_event_a_second_or_two_later_is_stored_directly_not_spooled(
        pg_cluster, make_runtime, caplog):
    """Before, after an event met the store not answering, every event of the process went to
    the spool for 30 s (or until another write committed), though the database was back within a
    second. Now one event tries the store a second after the failure, the next one 2 s after
    that try failed, and so on; the first that is stored lets the others through. Time is the
    runtime's clock, moved by hand."""
    url = pg_cluster.create_database()
    name = url.split("?", 1)[0].rsplit("/", 1)[1]
    manual = ManualClock(start=time.time())
    rt = make_runtime(database_url=url, clock=manual.clock)
    client = create_app(runtime=rt).test_client()

    def observe(session):
        return client.post("/agentmemory/observe", json=hook(session, content=f"note of {session}"))

    def tries():
        return sum(r.getMessage().startswith("storing observation ") for r in caplog.records)

    assert observe("pg-0").status_code == 201
    pg_cluster.drop_database(url)
    steps = []
    with caplog.at_level("WARNING", logger="agentmemory.capture"):
        for session, moved in (("pg-1", 0), ("pg-2", 0.5), ("pg-3", 0.6), ("pg-4", 1.0)):
            manual.advance(moved)
            answer = observe(session)
            steps.append((session, answer.status_code, answer.json.get("spooled"), tries()))
        pg_cluster._admin(f"CREATE DATABASE {name} TEMPLATE {pg_cluster.TEMPLATE}")  # back, though empty
        manual.advance(1.5)  # 2.5 s after the try that failed: the next one is due
        back = [observe("pg-5"), observe("pg-6")]
    assert steps == [("pg-1", 202, True, 1), ("pg-2", 202, True, 1), ("pg-3", 202, True, 2),
                     ("pg-4", 202, True, 2)], steps
    assert [a.status_code for a in back] == [201, 201], [a.json for a in back]  # stored directly
    # The commit showed the database takes writes: the spool drains by itself (background jobs off).
    spool = rt.services["capture_spool"]
    wait_for(lambda: spool.status()["events"] == 0, timeout=20, message=lambda: f"still spooled: {spool.status()}")
    sessions = [f"pg-{i}" for i in range(1, 7)]
    stored = [s for s in sessions if client.get(f"/agentmemory/observations?sessionId={s}").json["observations"]]
    assert stored == sessions, stored
    pg_cluster.drop_database(url)


def test_a_hook_event_that_finds_every_connection_in_use_as_the_database_goes_away_is_spooled_without_the_pools_wait(
    pg_cluster, make_runtime
):
    # Before, a request that came in while the database was gone but before any thread had found a
    # broken connection (none idle: every one in use) waited for the pool's whole timeout, 30 s,
    # longer than any hook waits for its answer; now each second of its wait asks whether the
    # database answers. (The bound below is half the pool's timeout: the answer takes about 1 s.)
    url = pg_cluster.create_database()
    rt = make_runtime(database_url=url, database_pool=2)
    client = create_app(runtime=rt).test_client()
    assert client.post("/agentmemory/observe", json=hook("busy-pg", content="before")).status_code == 201
    held = [rt.db.pool.getconn() for _ in range(rt.db.pool.max_size)]  # other requests' connections
    try:
        pg_cluster.drop_database(url)
        started = time.monotonic()
        noted = client.post("/agentmemory/observe", json=hook("busy-pg", content="noted while it was gone"))
        waited = time.monotonic() - started
    finally:
        for conn in held:
            rt.db.pool.putconn(conn)
    assert noted.status_code == 202 and noted.json["spooled"] is True, noted.json
    assert "does not answer" in noted.json["error"], noted.json
    assert waited < pg_pool.POOL_TIMEOUT_SECONDS / 2, f"answered after {waited:.1f} s"


def test_the_capture_spool_keeps_the_disk_reserve_free(pg_cluster, make_runtime, tmp_path):
    # The database is elsewhere, so only the spool writes on this disk; past the reserve it refuses.
    url = pg_cluster.create_database()
    with faults.tmpfs(tmp_path / "disk", 24) as disk:
        rt = make_runtime(database_url=url, data_dir=str(disk / "data"), disk_reserve_mb=4)
        client = create_app(runtime=rt).test_client()
        pg_cluster.drop_database(url)
        filler = faults.fill(disk, leave_bytes=3 * faults.MB)
        refused = client.post("/agentmemory/observe", json=hook("reserve", content="no room for it"))
        # The drop ends the pooled connections: the request meets one of them or finds the database
        # already marked gone, whichever came first; either way the same 503 (before, the first
        # was database_busy, "the database is unavailable (...)"), and nothing spooled past the reserve.
        assert refused.status_code == 503 and refused.json["code"] == "unavailable", refused.json
        assert "does not answer: " in refused.json["error"] and refused.headers["Retry-After"] == "5", refused.json
        assert rt.services["capture_spool"].status()["events"] == 0 and faults.free_bytes(disk) > 2 * faults.MB
        filler.unlink()
        kept = client.post("/agentmemory/observe", json=hook("reserve", content="room again"))
        assert kept.status_code == 202 and kept.json["spooled"] is True, kept.json
        rt.close()


def test_while_the_database_does_not_answer_requests_say_so_at_once_and_resume_when_it_is_back(
    pg_cluster, make_runtime, monkeypatch
):
    # Each request used to wait the pool's 30 s and then report "no database connection free",
    # which reads as a busy pool, not as a database that is gone; hooks give up after 10-15 s.
    monkeypatch.setattr(pg_pool, "POOL_TIMEOUT_SECONDS", 600.0)  # a wait would outlast the test's timeout
    url = pg_cluster.create_database()
    name = url.split("?", 1)[0].rsplit("/", 1)[1]
    rt = make_runtime(database_url=url)
    with rt.db.transaction("t") as tx:
        tx.records.set("mem:test", "kept", {"n": 1}, now="t")
    pg_cluster.drop_database(url)
    refusals = []
    while len(refusals) < 3 and not any("does not answer" in str(r) for r in refusals):
        with pytest.raises(Unavailable) as refused:  # the pool's open connection fails first (AdminShutdown)
            rt.db.reader().records.get("mem:test", "kept")
        refusals.append(refused.value)
    said = refusals[-1]
    assert "does not answer: connection failed: " in str(said) and f'database "{name}" does not exist' in str(said), \
        refusals
    assert said.code == "unavailable"
    with pytest.raises(Unavailable, match="does not answer"):
        rt.db.reader().records.get("mem:test", "kept")
    with pytest.raises(Unavailable, match="does not answer"), rt.db.transaction("t") as tx:
        tx.records.set("mem:test", "lost", {"n": 0}, now="t")
    # The periodic check cannot run: unfinished, not a finding of damage (which refuses writes).
    assert rt.db.run_integrity_check(5.0, "periodic integrity check") is None and rt.db.damage is None
    assert rt.db.last_check["result"] == "unfinished"
    health, status = ToolCaller(rt).status("health")  # still a health document, for monitoring
    assert status == 503 and health["status"] == "critical", health
    assert "does not answer" in health["db"]["error"] and "counts" not in health, health
    pg_cluster._admin(f"CREATE DATABASE {name} TEMPLATE {pg_cluster.TEMPLATE}")  # back, though empty
    monkeypatch.setattr(pg_pool, "POOL_TIMEOUT_SECONDS", 30.0)
    assert rt.db.reader().records.get("mem:test", "kept") is None
    with rt.db.transaction("t") as tx:
        tx.records.set("mem:test", "after", {"n": 2}, now="t")
    assert rt.db.reader().records.get("mem:test", "after") == {"n": 2}
    health, status = ToolCaller(rt).status("health")
    assert "error" not in health["db"] and health["counts"]["sessions"] == 0, health


def _bare_store(url: str, tmp_path: Path) -> PostgresDatabase:
    """A store with no thread of its own (no Tantivy applier): only the test's requests use its pool."""
    return PostgresDatabase(url, local_path=tmp_path / "x.db", now=Clock().iso, lexical_engine="builtin",
                            background=False)


def test_the_request_that_meets_a_dropped_database_first_is_refused_as_every_later_one_is(pg_cluster, tmp_path):
    """An outage gives one answer, whichever request meets it first. Before, a request on a pooled
    connection the outage had ended answered 503 database_busy ("the database is unavailable (...)",
    which reads as another writer's lock), and only the requests after it 503 unavailable ("...
    does not answer"): which one a client saw was a race between its request and the others'."""
    url = pg_cluster.create_database()
    db = _bare_store(url, tmp_path)
    try:
        with db.transaction("t") as tx:
            tx.records.set("mem:test", "kept", {"n": 1}, now="t")
        assert db.pool.get_stats()["pool_available"] >= 1  # idle in the pool, to be met by the next request
        pg_cluster.drop_database(url)  # WITH (FORCE): ends the pool's connections
        refusals = []
        for request in ("write", "read", "write"):  # the first meets a connection the drop ended
            with pytest.raises(Unavailable) as refused:
                if request == "read":
                    db.reader().records.get("mem:test", "kept")
                else:
                    with db.transaction("t") as tx:
                        tx.records.set("mem:test", "lost", {"n": 0}, now="t")
            refusals.append(refused.value)
        assert [r.code for r in refusals] == ["unavailable"] * 3, [(r.code, r.message) for r in refusals]
        assert {r.retry_after for r in refusals} == {pg_faults.GONE_RETRY_SECONDS}
        assert len({r.message for r in refusals}) == 1, [r.message for r in refusals]
        assert f"{db.location} does not answer: connection failed: " in refusals[0].message, refusals[0].message
    finally:
        db.close()
        pg_cluster.drop_database(url)


def _end_every_connection_of(pg_cluster, url: str, pool=None, idle: int = 3, pool_only: bool = False) -> int:
    """pg_terminate_backend on every connection to ``url``'s database, as a PostgreSQL restart
    ends them; first, with ``pool``, ``idle`` connections left idle in it to be met next. With
    ``pool_only``, only those: a runtime's event listener, whose own connection a restart ends
    too, reconnects and reads, and that read (run again on a fresh connection) replaces the
    pool's idle connections before a job meets one. Returns how many were ended."""
    pids: list[int] = []
    if pool is not None:
        held = [pool.getconn() for _ in range(idle)]
        pids = [conn.info.backend_pid for conn in held]
        for conn in held:
            pool.putconn(conn)
    name = url.split("?", 1)[0].rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as admin:
        return admin.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid() AND (NOT %s OR pid = ANY(%s))",
                             (name, pool_only, pids)).fetchone()[0]


def _end_the_connection_of(pg_cluster, tx) -> bool:
    """pg_terminate_backend on the connection of the write transaction ``tx``, from inside its
    block: a restart during the work, after its BEGIN and write lock went through."""
    pid = tx.conn.raw.info.backend_pid
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as admin:
        return admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()[0]


def test_a_read_on_a_connection_an_administrator_ended_runs_again_and_a_write_ended_under_its_work_is_refused(
        pg_cluster, url, tmp_path, caplog):
    """pg_terminate_backend (or a restart that is already over) ends the pool's idle connections
    while the database still answers. A read that meets one runs again, once, on a fresh
    connection: a restart is invisible to it (before, it was refused 503 unavailable). A write
    transaction whose connection ends under its work is not run again (it could have committed
    before its connection broke): refused 503 unavailable naming what happened, with Retry-After,
    nothing written; and the pool's other connections from before are replaced at once, so the
    next write is served."""
    db = _bare_store(url, tmp_path)
    try:
        with db.transaction("t") as tx:
            tx.records.set("mem:test", "kept", {"n": 1}, now="t")
        with pytest.raises(Unavailable) as refused, db.transaction("t") as tx:
            tx.records.set("mem:test", "lost", {"n": 0}, now="t")
            assert _end_the_connection_of(pg_cluster, tx)
            tx.records.set("mem:test", "lost too", {"n": 0}, now="t")
        assert (refused.value.code, refused.value.retry_after) == ("unavailable", 1), refused.value.to_dict()
        assert isinstance(refused.value, pg_faults.ConnectionEnded), refused.value
        # In pipeline mode libpq reports the end as "server closed the connection unexpectedly".
        assert "does not answer on this request's connection (" in refused.value.message, refused.value.message
        assert refused.value.message.endswith("), though it takes new ones: retry"), refused.value.message
        with db.transaction("t") as tx:
            tx.records.set("mem:test", "after", {"n": 2}, now="t")
        assert _end_every_connection_of(pg_cluster, url, db.pool) >= 3
        with caplog.at_level("INFO", logger="agentmemory.postgres"):
            assert db.reader().records.get("mem:test", "kept") == {"n": 1}  # before: 503 unavailable
        assert "a read runs again on a fresh connection: " in caplog.text, caplog.text
        assert db.reader().records.get("mem:test", "after") == {"n": 2}
        assert db.reader().records.get("mem:test", "lost") is None
        assert db.reader().records.get("mem:test", "lost too") is None
        assert _end_every_connection_of(pg_cluster, url, db.pool) >= 3
        with db.snapshot_reader() as snapshot:  # an export's one transaction: its BEGIN runs again
            assert snapshot.records.get("mem:test", "kept") == {"n": 1}
    finally:
        db.close()


def test_a_read_whose_database_is_gone_is_refused_at_once_and_not_run_again(pg_cluster, tmp_path, caplog):
    """The read's one retry is for a connection the server ended while the database answers;
    a read whose database is gone (dropped here, a stopped server alike) is refused 503
    unavailable "does not answer" with Retry-After at once, never run again."""
    url = pg_cluster.create_database()
    db = _bare_store(url, tmp_path)
    try:
        with db.transaction("t") as tx:
            tx.records.set("mem:test", "kept", {"n": 1}, now="t")
        assert db.pool.get_stats()["pool_available"] >= 1  # idle in the pool, to be met by the read
        pg_cluster.drop_database(url)
        with caplog.at_level("INFO", logger="agentmemory.postgres"), pytest.raises(Unavailable) as refused:
            db.reader().records.get("mem:test", "kept")
        assert (refused.value.code, refused.value.retry_after) == ("unavailable", pg_faults.GONE_RETRY_SECONDS)
        assert f"{db.location} does not answer: connection failed: " in refused.value.message, refused.value.message
        assert not isinstance(refused.value, pg_faults.ConnectionEnded) and errors.is_store_outage(refused.value)
        assert "runs again" not in caplog.text, caplog.text
        # What a background job waits for at no cost: the store's outage, never another dependency's
        # 503 unavailable (a model provider's, Redis's), which is the job's own failure.
        assert errors.waits_for_the_store(refused.value)
        assert not errors.waits_for_the_store(Unavailable("the model provider does not answer", retry_after=5))
        assert not errors.waits_for_the_store(Unavailable("Redis failed", code=errors.WORKING_MEMORY_UNAVAILABLE))
        assert not errors.waits_for_the_store(Unavailable("the embedder failed", code=errors.EMBEDDING_FAILED))
    finally:
        db.close()


def test_a_postgresql_restart_is_invisible_to_searches_and_lists(pg_cluster, url, make_runtime):
    """A restart (its connections ended, here by pg_terminate_backend) while every pooled
    connection sat idle. Before, the first request after it was refused 503 unavailable ("does
    not answer on this request's connection"); now the read runs again on a fresh connection
    and the request answers 200 with its records."""
    rt = make_runtime(database_url=url)
    client = create_app(runtime=rt).test_client()
    saved = client.post("/agentmemory/remember", json={"content": "the invoice parser drops trailing zeros"})
    assert saved.status_code in (200, 201), saved.json
    memory_id = saved.json["memory"]["id"] if "memory" in saved.json else saved.json["id"]
    assert _end_every_connection_of(pg_cluster, url, rt.db.pool) >= 3
    listed = client.get("/agentmemory/memories")
    assert listed.status_code == 200, listed.json
    assert [m["id"] for m in listed.json["memories"]] == [memory_id], listed.json
    assert _end_every_connection_of(pg_cluster, url, rt.db.pool) >= 3
    found = client.post("/agentmemory/search", json={"query": "invoice parser"})
    assert found.status_code == 200, found.json
    assert memory_id in str(found.json), found.json


def test_the_first_write_after_a_postgresql_restart_is_served_and_stored_once(pg_cluster, url, tmp_path, caplog):
    """A restart ended every pooled connection while they sat idle. Before, the first write
    after it was refused 503 unavailable ("does not answer on this request's connection"),
    though nothing of it had run: the ended connection fails on the transaction's BEGIN and
    write lock, before the work's first statement is sent. Now the transaction starts again,
    once, on a fresh connection: the write is served and committed once. (Over HTTP a request's
    reads usually meet the ended connection first and replace the pool's idle ones; a model job,
    a hook's session start or a periodic run often writes first.)"""
    db = _bare_store(url, tmp_path)
    try:
        with db.transaction("first") as tx:
            tx.records.set("mem:test", "kept", {"n": 1}, now="t")
        assert _end_every_connection_of(pg_cluster, url, db.pool, pool_only=True) >= 3
        with caplog.at_level("INFO", logger="agentmemory.postgres"), db.transaction("after_restart") as tx:
            tx.records.set("mem:test", "after", {"n": 2}, now="t")  # before: 503 unavailable
        assert "a write transaction starts again on a fresh connection: " in caplog.text, caplog.text
        assert "does not answer on this request's connection" in caplog.text, caplog.text
        assert db.reader().records.get("mem:test", "after") == {"n": 2}
        with psycopg.connect(url, autocommit=True) as conn:  # the commits: one, not two
            audited = conn.execute("SELECT operation, count(*) FROM audit_log WHERE operation IN ('first', 'after_restart') GROUP BY operation").fetchall()
        assert sorted(audited) == [("after_restart", 1), ("first", 1)], audited
    finally:
        db.close()


def test_an_embedded_batch_whose_store_stops_answering_is_stored_once_it_answers_with_no_error(
        pg_cluster, url, make_runtime, caplog):
    """The embedding backlog claimed a batch and embedded it; then the store stopped answering
    (a PostgreSQL restart or outage; here its database refuses connections and every one it had
    is ended) before the vectors were stored. Before, that store step raised out of the batch:
    the embedded vectors were lost, and the batch waited for its lease to run out to be embedded
    again. Now it waits for the store as for a busy one and stores the batch once it answers:
    embedded once, no failed batch, no error."""
    rt = make_runtime(database_url=url, embedding_provider="hash")
    client = create_app(runtime=rt).test_client()
    saved = client.post("/agentmemory/remember", json={"content": "the invoice parser drops trailing zeros"})
    assert saved.status_code in (200, 201), saved.json
    service = vectors.service(rt)
    name = url.split("?", 1)[0].rsplit("/", 1)[1]
    embed, embedded = service.embedder.embed, []

    def embed_as_the_store_stops_answering(texts, **kwargs):
        embedded.append(list(texts))
        pg_cluster._admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        _end_every_connection_of(pg_cluster, url)
        return embed(texts, **kwargs)

    service.embedder.embed = embed_as_the_store_stops_answering
    outcome: dict = {}

    def drain() -> None:
        try:
            outcome["batch"] = service.drain_once()
        except Exception as exc:  # noqa: BLE001 - what lead did: the batch failed
            outcome["raised"] = exc

    worker = threading.Thread(target=drain)
    with caplog.at_level("WARNING", logger="agentmemory.vectors"):
        worker.start()
        try:
            wait_for(lambda: "stored once the database takes writes" in caplog.text or not worker.is_alive(),
                     timeout=60, message="the batch neither waited for the store nor ended")
        finally:
            pg_cluster._admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")  # the store answers again
            worker.join(60)
    assert not worker.is_alive()
    assert outcome == {"batch": 1}, outcome
    assert "does not answer" in caplog.text, caplog.text
    assert len(embedded) == 1, embedded  # not embedded again
    assert (service.embedded, service.failed_batches, service.error) == (1, 0, None)
    store = rt.db.reader()
    assert store.vectors.count(service.embedder.model_id, service.embedder.dim) == 1
    assert store.vectors.backlog_stats()["pending"] == 0


def test_a_model_job_whose_write_meets_a_restart_is_kept_without_using_an_attempt(
        pg_cluster, url, llm_runtime, caplog):
    """A PostgreSQL restart ended a model job's connection under its write: 503 unavailable from
    the store. Before, that was the job's own failure: a traceback and one of its few attempts
    used up (an outage of a few minutes could exhaust them and drop the job). Now it waits for the
    store as it waits for a busy one: kept, retried later, no attempt used, no traceback."""
    from agentmemory_server.models import llm, llm_jobs

    rt = llm_runtime(database_url=url)
    if "store-restart-test" not in llm_jobs.JOB_KINDS:

        @llm_jobs.job_handler("store-restart-test")
        def _write_during_a_restart(ctx, ref, args):
            with ctx.rt.db.transaction("job_write") as tx:
                assert _end_the_connection_of(ctx.rt.test_restart, tx)
                tx.records.set("mem:test", ref, {"done": True}, now="2026-01-01T00:00:00Z")

    rt.test_restart = pg_cluster
    runner = llm.service(rt).jobs
    with rt.db.transaction("queue") as tx:
        runner.enqueue(tx, "store-restart-test", "job-1")
    assert runner.drain_once() == 1
    assert jobs_waiting(rt) == [("store-restart-test", "job-1", 0)]
    waiting = rt.db.reader().jobs.stats()
    assert waiting["pending"] == 1 and "does not answer on this request's connection" in waiting["lastError"], waiting
    assert "LLM job store-restart-test job-1 failed" not in caplog.text and "Traceback" not in caplog.text
    assert rt.db.reader().records.get("mem:test", "job-1") is None


def test_a_periodic_run_that_meets_a_restart_is_kept_and_done_at_its_next_poll_not_counted_a_failure(
        pg_cluster, url, make_runtime, caplog):
    """A periodic job claimed its run, and a PostgreSQL restart then ended its connection under
    its write. Before, that counted as the job's failure (its error in /health, recorded in the
    shared schedule) and the run was over until the next period; now the run is owed, as when
    the database is busy, and done at the job's next poll."""
    rt = make_runtime(database_url=url)
    restarted = []
    written = []

    def sweep():
        with rt.db.transaction("sweep") as tx:
            if not restarted:
                restarted.append(_end_the_connection_of(pg_cluster, tx))
            tx.records.set("mem:test", "swept", {"n": 1}, now="2026-01-01T00:00:00Z")
        written.append(1)

    job, status = periodic_run_due_now(rt, "nightly", sweep)
    rt.jobs._due(job)  # claims the run; its write then meets the restart
    assert restarted == [True], restarted
    assert written == [] and status()["errors"] == 0 and status()["lastError"] is None, status()
    assert "waits for the database" in caplog.text and "Traceback" not in caplog.text, caplog.text
    rt.jobs._due(job)  # its next poll: the kept run is done
    assert written == [1] and status()["runs"] == 1, status()
    assert rt.db.reader().records.get("mem:test", "swept") == {"n": 1}


def test_a_store_opens_while_a_long_write_holds_its_records_and_makes_its_new_index_once_they_are_free(
        pg_cluster, tmp_path, caplog, monkeypatch):
    """Opening a store creates the record indexes it lacks (a newer version declares one), which
    needs the records' table, and a replace import holds that table until it commits. Before, the
    start waited for the whole import (and every other start waited for it, behind the migration
    lock). Now it opens without the new index and says so; and the running store makes it once
    the import is over, without a restart (before: only the next start did, so a long-lived
    server served listings without it until it was restarted)."""
    from agentmemory_server.kernel.scopes import RECORD_INDEXES
    from agentmemory_server.storage import owed_indexes
    from agentmemory_server.storage.interfaces import RecordIndex
    from agentmemory_server.storage.postgres.records import index_name
    from test_transfer import _answered_within

    monkeypatch.setattr(owed_indexes, "RETRY_SECONDS", 0.2)  # not a minute, for the test
    url = pg_cluster.create_database()
    newer = (*RECORD_INDEXES, RecordIndex("mem:memories", ("importance",)))

    def open_store(name, indexes):
        return PostgresDatabase(url, local_path=tmp_path / name / "x.db", now=Clock().iso, record_indexes=indexes,
                                lexical_engine="builtin", background=False)

    def indexed() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                                (index_name(newer[-1]),)).fetchone()[0] == 1

    importer = open_store("importer", RECORD_INDEXES)
    holding, release = threading.Event(), threading.Event()

    def long_import():
        with importer.transaction("import") as tx:
            tx.admin.wipe_records()  # as a replace import does first: the records' table is held until the commit
            tx.records.set("mem:memories", "m1", {"id": "m1", "content": "imported"}, now="x")
            tx.admin.table_counts()  # a read waits for the pipelined writes: the table is held from here
            holding.set()
            release.wait(120)

    writer = threading.Thread(target=long_import, daemon=True)
    writer.start()
    opened = None
    try:
        assert holding.wait(30)
        opened = _answered_within(60, lambda: open_store("during", newer))
        assert opened.reader().records.get("mem:memories", "m1") is None  # it reads the store before the import
        assert "record indexes not brought up to date" in caplog.text and not indexed()
    finally:
        release.set()
        writer.join(60)
    try:
        # The same open store, not a new start, makes it once the import committed.
        assert wait_for(indexed, timeout=60, interval=0.2, message="the running store never made its index")
        assert not opened.owed_indexes
    finally:
        if opened is not None:
            opened.close()
        importer.close()
        pg_cluster.drop_database(url)


def test_the_owed_index_retry_skips_its_attempt_while_a_start_or_a_long_write_holds_what_it_needs(
        url, tmp_path, monkeypatch):
    """A store opened while a replace import held the records' table owes a record index and tries
    to make it once a minute. Before, each attempt waited without limit for the migration lock (a
    start holds it while it migrates), then waited for the records' table (5 s) holding that lock,
    so a start waited behind it. Now, as on SQLite, an attempt that finds either held gives up at
    once having done nothing, and makes the index once both are free. (Each holder below lets go
    only after the attempt returned, or after 30 s: an attempt that waited for it would then make
    the index and return True.)"""
    from agentmemory_server.kernel.scopes import RECORD_INDEXES
    from agentmemory_server.storage.interfaces import RecordIndex
    from agentmemory_server.storage.postgres.advisory_locks import MIGRATE_LOCK
    from agentmemory_server.storage.postgres.records import index_name

    # The start's own wait for a table, which the retry used to wait too: longer than the test.
    monkeypatch.setattr(pg_schema, "SCHEMA_LOCK_WAIT_SECONDS", 600.0)
    newer = (*RECORD_INDEXES, RecordIndex("mem:memories", ("importance",)))
    opened = _bare_store(url, tmp_path)
    opened.schema.owed_indexes = newer  # as a start that found the records' table held leaves it

    def indexed() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                                (index_name(newer[-1]),)).fetchone()[0] == 1

    def attempt_while(holding: threading.Event, release: threading.Event) -> bool:
        assert holding.wait(30)
        answer: dict[str, bool] = {}
        attempt = threading.Thread(target=lambda: answer.update(made=opened.make_owed_indexes()), daemon=True)
        attempt.start()
        attempt.join(30)
        release.set()
        attempt.join(60)
        return answer["made"]

    def migrating_start(holding: threading.Event, release: threading.Event) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
            holding.set()
            release.wait(120)

    importer = _bare_store(url, tmp_path / "importer")

    def long_import(holding: threading.Event, release: threading.Event) -> None:
        with importer.transaction("import") as tx:
            tx.admin.wipe_records()  # as a replace import does first: the records' table is held until the commit
            # A write transaction pipelines its statements: the DELETEs may still sit in the
            # client's buffer. A read waits for them, so the server holds the table from here.
            tx.admin.table_counts()
            holding.set()
            release.wait(120)

    try:
        for holder in (migrating_start, long_import):
            holding, release = threading.Event(), threading.Event()
            thread = threading.Thread(target=holder, args=(holding, release), daemon=True)
            thread.start()
            try:
                assert attempt_while(holding, release) is False, holder.__name__
            finally:
                release.set()
                thread.join(60)
            assert opened.owed_indexes == newer and not indexed(), holder.__name__  # nothing done; still owed
        assert opened.make_owed_indexes() is True and not opened.owed_indexes and indexed()
    finally:
        opened.close()
        importer.close()


def test_a_migration_that_waits_for_a_table_a_long_write_holds_is_refused_naming_it(pg_cluster, tmp_path):
    """A start that must migrate the schema while a long transaction holds the table the migration
    alters (a replace import holds the store's tables until it commits) waits a few seconds, then
    is refused with database_busy naming the migration. Before, it waited for that transaction,
    holding the migration lock, so every other start waited too. Once it is over, it migrates."""
    from test_transfer import _answered_within

    name = f"held7_{os.getpid()}"
    pg_cluster._admin(f"CREATE DATABASE {name}")
    url = pg_cluster.url_of(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # schema 7: migration 8 alters periodic_jobs
            conn.execute("CREATE TABLE agentmemory_schema (version INTEGER NOT NULL, id TEXT NOT NULL)")
            for _name, migrate in pg_migrations.MIGRATIONS[:7]:
                with conn.transaction():
                    migrate(conn)
            conn.execute("INSERT INTO agentmemory_schema VALUES (7, 'abcdef123456')")
        with psycopg.connect(url) as writer:  # a long write's transaction, holding the table
            writer.execute("INSERT INTO periodic_jobs (name, next_run) VALUES ('retention', 1900000000)")

            def start():
                try:
                    PostgresDatabase(url, local_path=tmp_path / "x.db", now=Clock().iso, background=False).close()
                except Unavailable as exc:
                    return exc
                return None

            refused = _answered_within(60, start)
            writer.rollback()
        assert refused is not None and refused.code == "database_busy", refused
        assert "schema migration 8 (periodic_error_times)" in refused.message and refused.retry_after == 30
        db = PostgresDatabase(url, local_path=tmp_path / "x.db", now=Clock().iso, background=False)
        assert db.schema_version == len(pg_migrations.MIGRATIONS)
        db.close()
    finally:
        pg_cluster._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_guard_of_a_step_of_opening_refuses_only_a_table_lock_held_past_the_wait(url, tmp_path):
    """The one guard both steps of opening that wait for a table run under (a schema migration on
    the bare connection, the record indexes through TxConnection, which turns psycopg's error
    into an AppError caused by it): a lock not granted becomes the refusal naming the step, which
    a migration lets through and the record indexes take as owed; any other failure, a lost
    connection's included, goes through as it was."""
    from agentmemory_server.errors import AppError
    from agentmemory_server.storage.owed_indexes import LockHeldAtOpen

    db = PostgresDatabase(url, local_path=tmp_path / "x.db", now=Clock().iso, lexical_engine="builtin",
                          background=False)

    def through_tx_connection(cause: Exception) -> AppError:
        failure = pg_faults.classify(cause, "the database")
        assert failure is not None
        failure.__cause__ = cause
        return failure

    try:
        for held in (psycopg.errors.LockNotAvailable("lock timeout"),
                     through_tx_connection(psycopg.errors.LockNotAvailable("lock timeout"))):
            with pytest.raises(LockHeldAtOpen) as refused:
                with db.schema.table_lock_waited("schema migration 9 (later)"):
                    raise held
            assert refused.value.code == "database_busy" and refused.value.retry_after == 30
            assert "schema migration 9 (later) of " in refused.value.message
            assert "for a table another transaction holds" in refused.value.message
        for other in (through_tx_connection(psycopg.OperationalError("server closed the connection")),
                      psycopg.errors.UndefinedTable("no such table")):
            with pytest.raises(type(other)) as passed:
                with db.schema.table_lock_waited("schema migration 9 (later)"):
                    raise other
            assert passed.value is other
    finally:
        db.close()


def test_a_statement_sent_after_an_earlier_one_failed_in_its_pipeline_is_not_taken_for_an_outage(pg_cluster):
    """psycopg raises PipelineAborted, an OperationalError with no SQLSTATE, for a statement sent
    after an earlier one of the same pipeline failed: a fault of the code that went on, on a
    healthy connection. Before, every OperationalError without a SQLSTATE counted as a lost
    connection: a store outage ("does not answer"), which model jobs and periodic runs wait out
    for ever instead of counting an attempt."""
    import psycopg

    url = pg_cluster.create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE once (k int PRIMARY KEY)")
            conn.execute("INSERT INTO once VALUES (1)")
            with pytest.raises(psycopg.errors.PipelineAborted) as aborted, conn.pipeline():
                with contextlib.suppress(psycopg.errors.UniqueViolation):
                    conn.execute("INSERT INTO once VALUES (1)").fetchone()
                conn.execute("SELECT 2").fetchone()
            assert conn.execute("SELECT 3").fetchone() == (3,)  # the connection itself is fine
        assert not pg_faults.connection_failed(aborted.value)
        refusal = pg_faults.classify(aborted.value, "the database")
        assert not errors.waits_for_the_store(refusal), refusal
    finally:
        pg_cluster.drop_database(url)


# -- a failure that is no wait: a bug, 500 internal_error, never database_busy ------------------------------

def _alter(url: str, statement: str) -> None:
    """``statement`` run on the store's database through a connection of its own, as an
    administrator would (the server's pool does not know)."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(statement)


def test_a_statement_the_schema_refuses_is_a_500_internal_error_not_database_busy(url, make_runtime, caplog):
    """A violated CHECK constraint (IntegrityError) or a column that is not there
    (ProgrammingError) is a bug: retrying cannot help. Before, any psycopg error faults.classify
    did not know became 503 database_busy, "retry shortly": clients retried it for ever. Now it is
    the app's answer to an unexpected error, its traceback logged."""
    rt = make_runtime(database_url=url)
    client = create_app(runtime=rt).test_client()
    scope = {"project": "p", "sessionId": "s1"}
    assert client.post("/agentmemory/working/set", json={**scope, "key": "fine", "value": 1}).status_code == 200
    _alter(url, "ALTER TABLE wm_kv ADD CONSTRAINT test_refused CHECK (key <> 'refused')")

    def internal(answer) -> dict:  # the envelope of a bug, naming its logged errorId
        error_id = answer.json["details"]["errorId"]
        assert f"errorId={error_id}" in caplog.text
        return {"ok": False, "error": f"internal error; see the server log for errorId={error_id}",
                "code": "internal_error", "status": 500, "details": {"errorId": error_id}}

    answer = client.post("/agentmemory/working/set", json={**scope, "key": "refused", "value": 1})
    assert (answer.status_code, answer.json) == (500, internal(answer)), answer.json
    assert "Retry-After" not in answer.headers
    assert "unhandled error on POST /agentmemory/working/set" in caplog.text and "CheckViolation" in caplog.text
    caplog.clear()
    _alter(url, "ALTER TABLE wm_kv RENAME COLUMN updated_at TO updated_at_gone")
    answer = client.post("/agentmemory/working/set", json={**scope, "key": "other", "value": 1})
    assert (answer.status_code, answer.json) == (500, internal(answer)), answer.json
    assert "UndefinedColumn" in caplog.text and "Traceback" in caplog.text


def test_an_integrity_check_that_meets_a_statement_the_schema_refuses_is_left_unfinished(url, make_runtime, caplog):
    """A check that fails for a reason that is no damage (a column renamed under it: psycopg's own
    error since such errors are no longer called busy) is not a finding: the check is left
    unfinished with its traceback logged, nothing is marked damaged, and no exception reaches the
    periodic check or `diagnose` that ran it."""
    rt = make_runtime(database_url=url)
    _alter(url, "ALTER TABLE kv_store RENAME COLUMN raw TO raw_gone")
    assert rt.db.run_integrity_check(5, "test") is None
    assert rt.db.last_check["result"] == "unfinished" and rt.db.damage is None
    assert "UndefinedColumn" in caplog.text


def test_a_model_job_whose_write_is_refused_by_the_schema_uses_an_attempt_rather_than_waiting(
        url, llm_runtime, caplog):
    """A model job's write that violates a constraint is the job's failure: one attempt used,
    its traceback logged. Before, it was taken for a busy store: kept with no attempt used, and
    met again at every try until the job's maximum age."""
    from agentmemory_server.models import llm, llm_jobs

    rt = llm_runtime(database_url=url)
    if "store-refuses-test" not in llm_jobs.JOB_KINDS:

        @llm_jobs.job_handler("store-refuses-test")
        def _write_refused(ctx, ref, args):
            with ctx.rt.db.transaction("job_write") as tx:
                tx.records.set("mem:test", ref, {"done": True}, now="2026-01-01T00:00:00Z")

    _alter(url, "ALTER TABLE kv_store ADD CONSTRAINT test_refused CHECK (key <> 'job-1')")
    runner = llm.service(rt).jobs
    with rt.db.transaction("queue") as tx:
        runner.enqueue(tx, "store-refuses-test", "job-1")
    assert runner.drain_once() == 1
    assert jobs_waiting(rt) == [("store-refuses-test", "job-1", 1)]
    assert "LLM job store-refuses-test job-1 failed" in caplog.text and "CheckViolation" in caplog.text
    assert "database_busy" not in caplog.text and "retry shortly" not in caplog.text


def test_a_periodic_run_whose_write_is_refused_by_the_schema_counts_a_failure_rather_than_waiting(
        url, make_runtime, caplog):
    """A periodic run that meets a violated constraint failed: its error counted and shown, the
    run over until its next period. Before, it was owed as if the database were busy, and tried
    again at every poll."""
    rt = make_runtime(database_url=url)
    _alter(url, "ALTER TABLE kv_store ADD CONSTRAINT test_refused CHECK (key <> 'swept')")

    def sweep():
        with rt.db.transaction("sweep") as tx:
            tx.records.set("mem:test", "swept", {"n": 1}, now="2026-01-01T00:00:00Z")

    job, status = periodic_run_due_now(rt, "nightly", sweep)
    rt.jobs._due(job)
    assert status()["errors"] == 1 and "violates check constraint" in (status()["lastError"] or ""), status()
    assert not job["owed"], job
    assert "background job nightly failed" in caplog.text and "waits for the database" not in caplog.text
