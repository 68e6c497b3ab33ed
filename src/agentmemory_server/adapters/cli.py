"""Admin command line for an agentmemory database.

    python src/cli.py [--db PATH] export [-o FILE]             stream everything as JSON (GET /export's format)
    python src/cli.py [--db PATH] import FILE [--strategy S]   merge (default) | skip | replace
    python src/cli.py [--db PATH] reindex                      rebuild the search index from the records
    python src/cli.py [--db PATH] stats [--json]               counts, sizes, schema version
    python src/cli.py [--db PATH] backup [--force]             upload a snapshot now (sync.py backup)
    python src/cli.py [--db PATH] restore [--force]            download the latest backup (sync.py restore)

A thin adapter: each command calls one library function (``maintenance``, the tool registry, or
``sync.py``'s functions) in this process, on the database from the settings (AGENTMEMORY_DB /
AGENTMEMORY_DATA_DIR) or ``--db``. Safe beside a running server on the same file: work runs in
short transactions and waits for the server's writer instead of failing. Progress bars go to
stderr (``--quiet`` turns them off); results go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmemory_server.errors import AppError
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.settings import Settings, SettingsError
from agentmemory_server.operations import hf_sync as sync
from agentmemory_server.operations import maintenance
from agentmemory_server.wiring import build_runtime


def _progress(quiet: bool) -> maintenance.Progress:
    if quiet:
        return maintenance.no_progress
    from tqdm import tqdm

    def make_bar(label: str, total: int) -> maintenance.Bar:
        return tqdm(total=total, desc=label, unit="rec", file=sys.stderr, mininterval=0.25, dynamic_ncols=True)

    return make_bar


def _with_runtime(settings: Settings, work: Callable[[Runtime], Any]) -> Any:
    rt = build_runtime(settings)
    try:
        return work(rt)
    finally:
        rt.close()


def cmd_export(settings: Settings, opts: argparse.Namespace) -> Any:
    progress = _progress(opts.quiet)
    if opts.output in (None, "-"):
        return _with_runtime(settings, lambda rt: maintenance.stream_export(rt, sys.stdout, progress=progress))
    target = Path(opts.output)
    partial = target.with_name(target.name + ".partial")  # never leave half a file under the real name
    with open(partial, "w", encoding="utf-8") as out:
        summary = _with_runtime(settings, lambda rt: maintenance.stream_export(rt, out, progress=progress))
    os.replace(partial, target)
    return {**summary, "file": str(target), "bytes": target.stat().st_size}


def cmd_import(settings: Settings, opts: argparse.Namespace) -> Any:
    document = maintenance.load_export(Path(opts.file))
    return _with_runtime(
        settings,
        lambda rt: maintenance.import_document(
            Ctx(rt, source="cli"), document, opts.strategy, batch=opts.batch, progress=_progress(opts.quiet)
        ),
    )


def cmd_reindex(settings: Settings, opts: argparse.Namespace) -> Any:
    return _with_runtime(settings, lambda rt: maintenance.reindex(rt, progress=_progress(opts.quiet)))


def cmd_stats(settings: Settings, opts: argparse.Namespace) -> Any:
    return _with_runtime(settings, maintenance.stats)


def _sync_config(settings: Settings) -> sync.Config:
    sync.setup_logging()
    return sync.Config.from_env(os.environ, db_path=settings.database_path)


def cmd_backup(settings: Settings, opts: argparse.Namespace) -> Any:
    return sync.backup(_sync_config(settings), force=opts.force)


def cmd_restore(settings: Settings, opts: argparse.Namespace) -> Any:
    return sync.restore(_sync_config(settings), force=opts.force)


def _print_stats(result: dict[str, Any]) -> None:
    db = result["db"]
    print(
        f"database   {db['path']}  schema v{db['schemaVersion']}  "
        f"{db['sizeBytes']:,} bytes + WAL {db['walBytes']:,} bytes"
    )
    print("records by scope:")
    for scope, n in result["scopes"].items():
        print(f"  {scope:<24} {n:>10,}")
    print(f"  (observations in {result['sessionsWithObservations']:,} session(s))")
    print("indexed for search:")
    for kind, n in sorted(result["indexed"].items()):
        print(f"  {kind:<24} {n:>10,}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description="agentmemory admin commands")
    parser.add_argument("--db", help="database file (default: AGENTMEMORY_DB or <AGENTMEMORY_DATA_DIR>/agentmemory.db)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="stream every record as one JSON document")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.set_defaults(run=cmd_export)
    imp = commands.add_parser("import", help="import an export file")
    imp.add_argument("file")
    imp.add_argument(
        "--strategy",
        choices=("merge", "skip", "replace"),
        default="merge",
        help="merge: imported records win; skip: existing win; replace: wipe first (atomic)",
    )
    imp.add_argument("--batch", type=int, default=1000, help="records per transaction (merge/skip)")
    imp.set_defaults(run=cmd_import)
    commands.add_parser("reindex", help="rebuild the search index (and vectors) from the records").set_defaults(
        run=cmd_reindex
    )
    stats = commands.add_parser("stats", help="counts, sizes and schema version")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(run=cmd_stats)
    for name, run, text in (
        ("backup", cmd_backup, "upload a snapshot to the HuggingFace dataset now"),
        ("restore", cmd_restore, "download the latest backup (stop the server first)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--force", action="store_true", help="override the safety checks (see README)")
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {"background_jobs": False}
        if opts.db:
            overrides["db_path"] = str(Path(opts.db).expanduser())
        settings = Settings.from_env(os.environ, **overrides)
        result = opts.run(settings, opts)
    except (AppError, SettingsError, sync.SyncError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    if opts.command == "export" and opts.output in (None, "-"):
        print(json.dumps(result), file=sys.stderr)
    elif opts.command == "stats" and not opts.json:
        _print_stats(result)
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
