"""The admin CLI (python src/cli.py) and the maintenance library behind it."""

from __future__ import annotations

import io
import dataclasses
import os
import gc
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from agentmemory_server import wiring
from agentmemory_server.errors import AppError, InvalidInput
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.operations import maintenance
from agentmemory_server.wiring import build_runtime
from agentmemory_server.memory import transfer
from agentmemory_server.kernel.scopes import MEMORIES
from conftest import (HUB_REPO, SRC, ToolCaller, clean_environ, hook, post, seed_store, sqlite_table_counts,
                      sync_env, wait_for)
from agentmemory_server.storage.sqlite import MIGRATIONS

# The console script `pip install .` gives (requirements-dev.txt installs the project editable).
AGENTMEMORY = str(Path(sys.executable).with_name("agentmemory"))


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTMEMORY, *args], env=env or clean_environ(),
                          capture_output=True, text=True, timeout=timeout)


def env_of(rt) -> dict[str, str]:
    """The environment that points the CLI at ``rt``'s store (its PostgreSQL database, if any;
    ``--db`` names its file or local path)."""
    url = rt.settings.database_url
    return {**clean_environ(), **({"AGENTMEMORY_DATABASE_URL": url} if url else {})}


def ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def without_time(export: dict) -> dict:
    return {k: v for k, v in export.items() if k != "exportedAt"}


def db_of(data_dir: Path) -> str:
    return str(data_dir / "agentmemory.db")


def test_export_matches_get_export_and_import_round_trips(client, call, tmp_path, rt):
    for i in range(5):
        client.post("/agentmemory/observe", json=hook(f"s{i % 2}", timestamp=f"2026-01-01T00:00:0{i}Z"))
    call("memory_save", content="Use WAL mode for SQLite")
    with rt.db.transaction("test") as tx:
        tx.records.set("mem:summaries", "s0", {"sessionId": "s0", "title": "done"}, now="x")
        tx.records.set("mem:lessons", "lsn_1", {"id": "lsn_1", "content": "a lesson"}, now="x")
        tx.records.set("mem:obs:orphan", "obs_o", {"id": "obs_o", "sessionId": "orphan", "title": "no session row"}, now="x")
    out = tmp_path / "export.json"
    summary = ok(cli("--db", str(rt.db.path), "export", "-o", str(out), env=env_of(rt)))  # while this runtime has it open
    assert summary["records"] == 2 + 5 + 1 + 1 + 1 + 1 and out.stat().st_size == summary["bytes"]
    assert "export: 100%" in cli("--db", str(rt.db.path), "export", "-o", str(out), env=env_of(rt)).stderr  # progress bar
    exported = json.loads(out.read_text())
    assert without_time(exported) == without_time(client.get("/agentmemory/export").json)
    to_stdout = cli("--db", str(rt.db.path), "-q", "export", env=env_of(rt))
    assert without_time(json.loads(to_stdout.stdout)) == without_time(exported)
    assert json.loads(to_stdout.stderr)["records"] == 11
    other = tmp_path / "other.db"
    imported = ok(cli("--db", str(other), "-q", "import", str(out), "--batch", "3"))
    assert imported["imported"] == 11 and imported["counts"]["observations"]["imported"] == 6
    again = tmp_path / "again.json"
    ok(cli("--db", str(other), "-q", "export", "-o", str(again)))
    assert without_time(json.loads(again.read_text())) == without_time(exported)
    assert ok(cli("--db", str(other), "-q", "import", str(out), "--strategy", "skip"))["skipped"] == 11
    replaced = ok(cli("--db", str(other), "-q", "import", str(out), "--strategy", "replace"))
    assert replaced["imported"] == 11


def test_import_validates_everything_before_writing(tmp_path):
    bad = tmp_path / "bad.json"
    good_then_bad = {"version": transfer.FORMAT_VERSION, "sessions": [{"id": "fine"}, {"no": "id"}]}
    bad.write_text(json.dumps(good_then_bad))
    db = tmp_path / "x.db"
    proc = cli("--db", str(db), "-q", "import", str(bad), "--batch", "1")
    assert proc.returncode == 1 and "exportData.sessions[1].id must be a non-empty string" in proc.stderr
    assert sqlite_table_counts(db)["kv_store"] == 0
    bad.write_text("{not json")
    proc = cli("--db", str(db), "import", str(bad))
    assert proc.returncode == 1 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_json_lines_export_and_import_round_trip(client, call, tmp_path, rt):
    """export --jsonl writes a header line and one record a line; importing it (streamed, in
    batches) into an empty store gives back the same export."""
    for i in range(5):
        client.post("/agentmemory/observe", json=hook(f"s{i % 2}", timestamp=f"2026-01-01T00:00:0{i}Z"))
    call("memory_save", content="Use WAL mode for SQLite")
    with rt.db.transaction("test") as tx:
        tx.records.set("mem:lessons", "lsn_1", {"id": "lsn_1", "content": "a lesson"}, now="x")
    lines_file = tmp_path / "export.jsonl"
    summary = ok(cli("--db", str(rt.db.path), "-q", "export", "-o", str(lines_file), env=env_of(rt)))
    lines = [json.loads(line) for line in lines_file.read_text().splitlines()]
    assert lines[0]["version"] == transfer.FORMAT_VERSION and len(lines) == 2 + summary["records"]
    assert {"observations": {"s0": [lines[3]["observations"]["s0"][0]]}} == lines[3]  # one record a line
    assert lines[-2] == {"kv": {"mem:lessons": {"lsn_1": {"id": "lsn_1", "content": "a lesson"}}}}
    assert lines[0]["endMarker"] is True and lines[-1] == {"end": {"lines": summary["records"]}}
    other = tmp_path / "other.db"
    imported = ok(cli("--db", str(other), "-q", "import", str(lines_file), "--batch", "2"))
    assert imported["imported"] == summary["records"] and imported["counts"]["observations"]["imported"] == 5
    again = tmp_path / "again.json"
    ok(cli("--db", str(other), "-q", "export", "-o", str(again)))
    assert without_time(json.loads(again.read_text())) == without_time(client.get("/agentmemory/export").json)
    found = ok(cli("--db", str(other), "-q", "import", str(lines_file), "--strategy", "skip"))
    assert found["skipped"] == summary["records"]


def test_a_cut_json_lines_export_is_refused_as_truncated_and_nothing_is_imported(client, call, tmp_path, rt):
    """A JSON Lines export ends with its end line; a file cut off after any line, or inside one,
    is refused before anything is written (a replace import would otherwise wipe the store and
    load only the file's first part)."""
    for i in range(4):
        client.post("/agentmemory/observe", json=hook(f"s{i}", timestamp=f"2026-01-01T00:00:0{i}Z"))
    call("memory_save", content="Use WAL mode for SQLite")
    whole = tmp_path / "whole.jsonl"
    ok(cli("--db", str(rt.db.path), "-q", "export", "-o", str(whole), env=env_of(rt)))
    lines = whole.read_text().splitlines(keepends=True)
    target = tmp_path / "target.db"
    ok(cli("--db", str(target), "-q", "import", str(whole)))
    before = sqlite_table_counts(target)["kv_store"]
    for name, text in (("at-a-line.jsonl", "".join(lines[:-3])), ("in-a-line.jsonl", "".join(lines)[:-30])):
        cut = tmp_path / name
        cut.write_text(text)
        proc = cli("--db", str(target), "-q", "import", str(cut), "--strategy", "replace", "--batch", "1")
        assert proc.returncode == 1 and "looks truncated" in proc.stderr and "nothing was imported" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert sqlite_table_counts(target)["kv_store"] == before  # the replace wiped nothing
    # A JSON (not JSON Lines) export cut off says so too.
    document = tmp_path / "whole.json"
    ok(cli("--db", str(rt.db.path), "-q", "export", "-o", str(document), env=env_of(rt)))
    cut = tmp_path / "cut.json"
    cut.write_text(document.read_text()[: document.stat().st_size // 2])
    with pytest.raises(InvalidInput, match="looks truncated"):
        maintenance.load_export(cut)


def test_json_lines_import_names_the_bad_line_and_keeps_earlier_batches(tmp_path):
    good = {"sessions": [{"id": "fine"}]}
    path = tmp_path / "bad.jsonl"
    db = tmp_path / "x.db"
    path.write_text(json.dumps(good) + "\n")
    proc = cli("--db", str(db), "-q", "import", str(path))
    assert proc.returncode == 1 and "line 1: the first line must be the header" in proc.stderr
    header = json.dumps({"version": transfer.FORMAT_VERSION})
    path.write_text("\n".join([header, json.dumps(good), "", json.dumps({"sessions": [{"no": "id"}]})]) + "\n")
    proc = cli("--db", str(db), "-q", "import", str(path), "--batch", "1")
    assert proc.returncode == 1 and "line 4:" in proc.stderr and "must be a non-empty string" in proc.stderr
    assert sqlite_table_counts(db)["kv_store"] == 1  # the batch before the bad line was written
    path.write_text(header + "\n{oops\n")
    proc = cli("--db", str(db), "-q", "import", str(path))
    assert proc.returncode == 1 and "line 2: not JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("--db", str(db), "-q", "import", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 1 and "no such file" in proc.stderr


def test_a_big_json_lines_import_parses_in_a_second_process(make_runtime, tmp_path, monkeypatch):
    """Past PARALLEL_IMPORT_BYTES the lines are parsed and stripped in a worker process: the same
    records arrive, secrets stripped, and a bad line deep in the file is still named."""
    monkeypatch.setattr(maintenance, "PARALLEL_IMPORT_BYTES", 0)
    monkeypatch.setattr(maintenance.os, "cpu_count", lambda: 2)
    lines = [json.dumps({"version": transfer.FORMAT_VERSION})]
    for i in range(30):
        memory = {"id": f"mem_{i}", "content": f"note {i} api_key=sk-{'a' * 40}", "type": "fact",
                  "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z", "isLatest": True}
        lines.append(json.dumps({"memories": [memory]}))
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rt = make_runtime()
    result = maintenance.import_lines(Ctx(rt, source="cli"), path, "merge", batch=7)
    assert result["imported"] == 30
    # Tantivy got each batch uncommitted and the end committed them all: every record is in the
    # committed index (verify runs only once nothing is left uncommitted), and the import's
    # pause of the cyclic garbage collector is over.
    assert rt.db.lexical.verify(force=True) == {**rt.db.lexical.verified, "documents": 30, "records": 30, "ok": True}
    assert gc.isenabled()
    stored = rt.db.reader().records.get("mem:memories", "mem_29")
    assert "sk-aaaa" not in json.dumps(stored) and "[REDACTED_SECRET]" in stored["content"]
    path.write_text("\n".join([*lines, "[1, 2]"]) + "\n")
    with pytest.raises(AppError, match=r"line 32: expected a JSON object"):
        maintenance.import_lines(Ctx(rt, source="cli"), path, "skip", batch=7)


def test_reindex_restores_search_after_the_index_is_emptied(tmp_path):
    data = tmp_path / "data"
    seed_store(data)
    db = db_of(data)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM search_fts")
    conn.execute("INSERT INTO search_docs (doc_id, kind, scope, key, ts) "
                 "VALUES ('ghost', 'memory', 'mem:memories', 'ghost', 'x')")  # a record that is gone
    conn.close()
    from agentmemory_server.wiring import build_runtime
    from agentmemory_server.kernel.settings import Settings

    def search(query: str) -> list:
        runtime = build_runtime(Settings.from_env({}, db_path=db, background_jobs=False, embedding_provider="none", auth="off"))
        try:
            return ToolCaller(runtime)("memory_recall", query=query)["results"]
        finally:
            runtime.close()

    assert search("zebra0 deployments") == [] and search("alpha1") == []
    result = ok(cli("--db", db, "reindex", env={**clean_environ(), "EMBEDDING_PROVIDER": "none"}))
    assert result["indexed"] == {"observation": 12, "memory": 2} and result["staleRemoved"] == 1
    assert search("zebra0 deployments")[0]["memory"]["content"].startswith("Remember zebra0 deployments")
    assert len(search("alpha1")) == 4
    assert sqlite_table_counts(Path(db))["search_docs"] == 14


def test_reindex_hooks_run_after_the_rebuild(settings):
    seen = []

    def reembed(runtime, progress):
        seen.append(runtime.db.reader().index.kind_counts())
        return {"vectors": 1}

    rt = build_runtime(settings, hooks=dataclasses.replace(wiring.HOOKS, reindex=(reembed,)))
    try:
        ToolCaller(rt)("memory_save", content="hooked memory")
        result = maintenance.reindex(rt)
    finally:
        rt.close()
    assert seen == [{"memory": 1}] and result["hooks"]["reembed"] == {"vectors": 1}


def test_reindex_reembeds_every_record(tmp_path):
    data = tmp_path / "data"
    seed_store(data)
    db = db_of(data)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM search_vectors")
    conn.close()
    env = {**clean_environ(), "EMBEDDING_PROVIDER": "hash"}
    result = ok(cli("--db", db, "reindex", env=env))
    assert result["hooks"]["reembed_vectors"]["embedded"] == 14
    assert result["hooks"]["reembed_vectors"]["leftToWorker"] == 0  # no server ran: all embedded here
    assert sqlite_table_counts(Path(db))["search_vectors"] == 14
    assert sqlite_table_counts(Path(db))["embed_backlog"] == 0


def test_stats_numbers(tmp_path):
    data = tmp_path / "data"
    seed_store(data, sessions=2, per_session=3, memories=4)
    stats = ok(cli("--db", db_of(data), "stats", "--json"))
    assert stats["scopes"] == {"mem:memories": 4, "mem:obs:*": 6, "mem:sessions": 2}
    assert stats["sessionsWithObservations"] == 2 and stats["indexed"] == {"observation": 6, "memory": 4}
    assert stats["db"]["schemaVersion"] == len(MIGRATIONS)
    assert stats["db"]["sizeBytes"] == Path(db_of(data)).stat().st_size
    assert stats["tables"]["kv_store"] == 12 and stats["tables"]["audit_log"] == 10
    text = cli("--db", db_of(data), "stats").stdout
    assert "mem:sessions" in text and f"schema v{len(MIGRATIONS)}" in text


def test_stream_export_reads_in_batches_and_equals_get_export(rt, call):
    for i in range(7):
        call("agent_observe", **hook("s1", timestamp=f"2026-01-01T00:00:0{i}Z", data={"n": i}))
    with rt.db.transaction("test") as tx:  # observations whose session row is gone export too
        tx.records.set("mem:obs:gone", "obs_g", {"id": "obs_g", "sessionId": "gone"}, now="x")
    out = io.StringIO()
    assert maintenance.stream_export(rt, out, batch=2)["records"] == 9
    expected = call("memory_export")
    assert without_time(json.loads(out.getvalue())) == without_time(expected)
    assert set(expected["observations"]) == {"s1", "gone"} and len(expected["observations"]["s1"]) == 7


def test_export_pages_sessions_and_filters_by_agent(rt, call):
    for i in range(5):
        call("agent_observe", **hook(f"s{i}", timestamp=f"2026-01-01T00:00:0{i}Z"), agentId="ann" if i % 2 else "bob")
    call("memory_save", content="only bob knows", agentId="bob")
    page = call("memory_export", maxSessions=2, offset=1)
    assert [s["id"] for s in page["sessions"]] == ["s1", "s2"] and set(page["observations"]) == {"s1", "s2"}
    assert "memories" not in page and page["pagination"] == {"offset": 1, "limit": 2, "total": 5, "hasMore": True}
    ann = call("memory_export", agentId="ann")
    assert [s["id"] for s in ann["sessions"]] == ["s1", "s3"] and ann["memories"] == []
    assert ann["pagination"]["total"] == 2 and ann["pagination"]["hasMore"] is False


def test_cli_runs_safely_beside_a_live_server(live_server, tmp_path):
    server = live_server()
    stop, failures, written = threading.Event(), [], []

    def writer() -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set() and n < 400:
            body = hook("live", timestamp=f"2026-02-01T00:{n // 60:02d}:{n % 60:02d}Z",
                        data={"tool_name": "Bash", "tool_input": {"command": f"pytest -k case{n}"}})
            r = session.post(server.api("/observe"), json=body)
            (written if r.status_code == 201 else failures).append(r.status_code)
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        db = str(server.db_path)
        export_file = tmp_path / "live.json"
        ok(cli("--db", db, "-q", "export", "-o", str(export_file)))
        ok(cli("--db", db, "-q", "reindex"))
        ok(cli("--db", db, "-q", "import", str(export_file)))
        assert ok(cli("--db", db, "stats", "--json"))["scopes"]["mem:sessions"] == 1
    finally:
        stop.set()
        thread.join()
    assert failures == [] and written
    assert "database is locked" not in server.log()
    stats = ok(cli("--db", str(server.db_path), "stats", "--json"))
    health = requests.get(server.api("/health")).json()
    assert stats["scopes"]["mem:obs:*"] == len(written) == health["counts"]["observations"]
    # The CLI's reindex rebuilt the index under the running server, whose lexical engine notices
    # and catches up in the background (progress in /health): every record is found once it has.
    wait_for(lambda: len(post(server.api("/search"), {"query": "pytest", "limit": 100}).json()["results"])
             == min(100, len(written)), message=lambda: f"search misses records: {requests.get(server.api('/health')).json()['storage']}")


def test_cli_backup_and_restore_use_sync(hf_hub, tmp_path):
    data = tmp_path / "data"
    seed_store(data)
    env = sync_env(hf_hub, tmp_path, tmp_path / "unused")
    assert ok(cli("--db", db_of(data), "backup", env=env))["status"] == "uploaded"
    restored = tmp_path / "restored.db"
    assert ok(cli("--db", str(restored), "restore", env=env))["status"] == "restored"
    assert sqlite_table_counts(restored) == sqlite_table_counts(Path(db_of(data)))
    proc = cli("--db", str(tmp_path / "fresh.db"), "backup", env=env)
    assert proc.returncode == 1 and "no database" in proc.stderr
    seed_store(tmp_path / "unrelated", sessions=1, per_session=1, memories=0)
    proc = cli("--db", db_of(tmp_path / "unrelated"), "backup", env=env)
    assert proc.returncode == 3 and "Refusing to overwrite" in proc.stderr
    assert hf_hub.commit_count(HUB_REPO) == 2


@pytest.mark.parametrize("args", [["import", "/no/such/file.json"], ["stats", "--bogus"], []])
def test_cli_usage_errors_are_clear(args, tmp_path):
    proc = cli("--db", str(tmp_path / "x.db"), *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.strip()


def test_every_cli_command_is_in_the_readme():
    from agentmemory_server.adapters import cli as cli_module

    readme = (SRC.parent / "README.md").read_text().split("<!-- BEGIN cli -->")[1].split("<!-- END cli -->")[0]
    parser = cli_module.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in commands:
        assert f"| `agentmemory {name}` |" in readme, name




def test_an_export_to_a_full_disk_says_so_and_leaves_no_partial_file(tmp_path):
    """A full disk under the export's file is a one-line error naming the file and the cause,
    exit 1, and the half-written ``.partial`` is removed (it would hold the little room left)."""
    from faults import fill, tmpfs

    db = tmp_path / "data" / "agentmemory.db"
    seed_store(db.parent)
    with tmpfs(tmp_path / "small", 1) as small:
        fill(small)
        proc = cli("--db", str(db), "-q", "export", "-o", str(small / "export.json"))
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        assert "no room" in proc.stderr and str(small / "export.json") in proc.stderr
        assert sorted(p.name for p in small.iterdir()) == ["filler"]


def _memory_lines(path: Path, count: int, word: str) -> Path:
    """A JSON Lines export of ``count`` memories whose content says ``word``."""
    lines = [json.dumps({"version": transfer.FORMAT_VERSION, "endMarker": True})]
    for i in range(count):
        memory = {"id": f"mem_{word}{i}", "content": f"{word} note {i}", "type": "fact", "isLatest": True,
                  "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
        lines.append(json.dumps({"memories": [memory]}))
    lines.append(json.dumps({"end": {"lines": count}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _import_caught_midway(db: Path, lines: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``agentmemory import`` started, returned once its progress bar (stderr) shows it between
    10 % and 80 % of the file: batches are being written."""
    import re

    proc = subprocess.Popen([AGENTMEMORY, "--db", str(db), "import", str(lines), *extra],
                            env=env or clean_environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while proc.poll() is None:
        seen += proc.stderr.read1(4096)
        done = [int(p) for p in re.findall(rb"import:\s+(\d+)%", seen)]
        if done and 10 <= done[-1] <= 80:
            return proc
    raise AssertionError(f"the import ended before it was caught midway: {seen[-500:]!r}")


def test_a_killed_json_lines_replace_import_leaves_the_old_store_and_frees_its_lease(tmp_path):
    """A replace import killed while it writes its batches: the store is the old one (its one
    transaction never committed), not wiped and half loaded; the lease the dead process held
    does not stop the next import."""
    db = tmp_path / "store.db"
    ok(cli("--db", str(db), "-q", "import", str(_memory_lines(tmp_path / "old.jsonl", 3, "old"))))
    before = sqlite_table_counts(db)
    proc = _import_caught_midway(db, _memory_lines(tmp_path / "new.jsonl", 6000, "new"), "--strategy", "replace",
                                 "--batch", "5")
    proc.kill()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: its lease must be free
    with sqlite3.connect(db) as conn:
        contents = sorted(c for (c,) in conn.execute("SELECT json_extract(value, '$.content') FROM kv_store "
                                                     "WHERE scope = 'mem:memories'"))
    assert contents == ["old note 0", "old note 1", "old note 2"]
    assert sqlite_table_counts(db)["kv_store"] == before["kv_store"]
    again = ok(cli("--db", str(db), "-q", "import", str(tmp_path / "new.jsonl"), "--strategy", "replace"))
    assert again["imported"] == 6000
    proc.communicate(timeout=30)


def test_a_second_import_while_one_runs_is_refused_with_409_naming_it(client, rt, tmp_path):
    """While an import runs (another process), a second import of the same store, by the CLI or
    over HTTP, is refused at once (409 transfer_running: what runs and since when; the CLI exits
    1) instead of interleaving with it; the first one finishes as if alone."""
    db = Path(rt.db.path)
    new = _memory_lines(tmp_path / "new.jsonl", 6000, "new")
    other = _memory_lines(tmp_path / "other.jsonl", 2, "other")
    import signal

    first = _import_caught_midway(db, new, "--strategy", "replace", "--batch", "5", env=env_of(rt))
    first.send_signal(signal.SIGSTOP)  # held midway while the others try (a slow disk, a busy machine)
    try:
        refused = client.post("/agentmemory/import", json={"exportData": {"version": transfer.FORMAT_VERSION,
                                                                          "memories": []}})
        second = cli("--db", str(db), "-q", "import", str(other), env=env_of(rt))
    finally:
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=120)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert "an import (replace) of new.jsonl is running on this store since" in second.stderr
    assert refused.status_code == 409 and refused.json["code"] == "transfer_running", refused.json
    assert refused.json["details"]["running"] == "an import (replace) of new.jsonl"
    assert refused.json["details"]["since"] and refused.json["details"]["pid"] == first.pid
    assert first.returncode == 0, err
    assert json.loads(out)["imported"] == 6000
    assert rt.db.reader().records.count(MEMORIES) == 6000  # none of the other file's records
    assert ok(cli("--db", str(db), "-q", "import", str(other), env=env_of(rt)))["imported"] == 2  # the lease is free again
