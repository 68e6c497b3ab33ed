"""Backup, restore and admin-CLI costs on a generated store, against a loopback fake Hub.

    python bench/backup.py [--observations 20000] [--per-session 100]

Builds a database of N observations (plus one memory per session) through the import tool,
then measures: the unchanged check (``_quick_hash``), a snapshot through the SQLite backup API,
a backup upload and an unchanged backup against the fake Hub (tests/fake_hub.py on 127.0.0.1),
a restore into an empty directory, and the CLI's streaming export, batched import and reindex
as child processes, with each child's peak RSS next to the peak RSS of building the same export
in memory (what GET /export does). Prints a table and ends with one JSON line. Timings are noisy
on a shared 2-core machine: compare rows rather than reading them as absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]
os.environ.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")

from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.memory import transfer  # noqa: E402
from agentmemory_server.operations import maintenance  # noqa: E402
from agentmemory_server.storage.sqlite import hf_sync as sync  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402
from fake_hub import FakeHub  # noqa: E402

IN_MEMORY_EXPORT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from agentmemory_server.wiring import build_runtime
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.memory import transfer, transfer_sinks
rt = build_runtime(Settings.from_env({}, db_path=sys.argv[2], background_jobs=False))
sink = transfer_sinks.TreeSink()
transfer.write_export(rt.db.reader(), sink, exported_at="now", now=0.0)
text = json.dumps(sink.result)
rt.close()
print(len(text))
"""


def generated_export(observations: int, per_session: int) -> dict:
    sessions, obs, memories = [], {}, []
    for s in range(max(1, observations // per_session)):
        sid = f"bench-{s}"
        sessions.append({"id": sid, "project": "bench", "cwd": "/w", "startedAt": f"2026-01-01T00:00:{s % 60:02d}Z",
                         "status": "completed", "observationCount": per_session})
        obs[sid] = [{"id": f"obs_{s}_{i}", "timestamp": f"2026-01-01T01:{i // 60 % 60:02d}:{i % 60:02d}Z",
                     "type": "command_run", "title": f"pytest tests/test_{i}.py session {s}",
                     "narrative": "collected 42 items; " + "log line with some detail " * 20,
                     "facts": [], "concepts": ["pytest"], "files": [f"tests/test_{i}.py"], "importance": 5}
                    for i in range(per_session)]
        memories.append({"id": f"mem_{s}", "title": f"memory {s}", "content": f"lesson number {s} about module{s}",
                         "type": "fact", "isLatest": True, "createdAt": "2026-01-01T00:00:00Z",
                         "updatedAt": "2026-01-01T00:00:00Z", "version": 1})
    return {"version": transfer.FORMAT_VERSION, "sessions": sessions, "observations": obs, "memories": memories}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# Runs a script and reports its peak RSS (VmHWM of the new process image; ru_maxrss from wait4
# would include the parent's memory inherited through fork + exec).
PEAK = """
import runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("PEAK_KB", hwm.split()[1], file=sys.stderr)
sys.exit(code)
"""


def child(script: str, *args: str) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of ``python script args`` in a child process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, script, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{script} {args} failed: {proc.stderr[-500:]}")
    return elapsed, int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=20_000)
    parser.add_argument("--per-session", type=int, default=100)
    opts = parser.parse_args()
    # The store, its copies and exports: about 200 MB at 20k observations, removed at the end.
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as scratch:
        measure(opts, Path(scratch))


def measure(opts: argparse.Namespace, tmp: Path) -> None:
    db = tmp / "data" / "agentmemory.db"
    rt = build_runtime(Settings.from_env({}, db_path=str(db), background_jobs=False))
    document = generated_export(opts.observations, opts.per_session)
    seed_s, _ = timed(lambda: maintenance.import_document(Ctx(rt, source="bench"), document, "merge", batch=5000))
    rt.close()
    records = opts.observations + 2 * len(document["sessions"])
    size_mb = db.stat().st_size / 1e6
    hub = FakeHub().start()
    os.environ["HF_HOME"] = str(tmp / "hf")
    cfg = sync.Config(db_path=db, repo="bench/backup", token=hub.token, endpoint=hub.url, retries=0)
    rows: dict[str, float] = {"seed_import_s": seed_s}
    rows["quick_hash_us"] = timed(lambda: [sync._quick_hash(db) for _ in range(1000)])[0] * 1000
    rows["snapshot_s"] = timed(lambda: sync.snapshot(db, tmp / "snap.db"))[0]
    rows["backup_upload_s"] = timed(lambda: sync.backup(cfg))[0]
    rows["backup_unchanged_ms"] = timed(lambda: sync.backup(cfg))[0] * 1000
    restore_cfg = sync.Config(**{**cfg.__dict__, "db_path": tmp / "restored" / "agentmemory.db"})
    rows["restore_s"] = timed(lambda: sync.restore(restore_cfg))[0]
    hub.stop()
    cli, db_args = str(ROOT / "src" / "cli.py"), ("--db", str(db), "-q")
    rows["cli_export_s"], rows["cli_export_rss_mb"] = child(cli, *db_args, "export", "-o", str(tmp / "e.json"))
    script = tmp / "in_memory_export.py"
    script.write_text(IN_MEMORY_EXPORT)
    rows["in_memory_export_s"], rows["in_memory_export_rss_mb"] = child(str(script), str(ROOT / "src"), str(db))
    rows["cli_reindex_s"], rows["cli_reindex_rss_mb"] = child(cli, *db_args, "reindex")
    rows["cli_import_s"], rows["cli_import_rss_mb"] = child(cli, "--db", str(tmp / "other.db"), "-q", "import",
                                                            str(tmp / "e.json"))
    print(f"store: {opts.observations} observations in {len(document['sessions'])} sessions, "
          f"{records} records, {size_mb:.1f} MB database")
    for name, value in rows.items():
        print(f"  {name:<26} {value:10.2f}")
    for name in ("cli_export", "cli_reindex", "cli_import"):
        print(f"  {name:<26} {records / rows[name + '_s']:10.0f} records/s (process start included)")
    print(json.dumps({"bench": "backup", "observations": opts.observations, "records": records,
                      "db_mb": round(size_mb, 2), **{k: round(v, 3) for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
