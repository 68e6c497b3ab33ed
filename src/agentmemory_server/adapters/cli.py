"""The ``agentmemory`` command: run the server and administer its database.

    agentmemory serve [--host H] [--port P] [--threads N] [--dev]   run the server
    agentmemory worker                                              run the background work (see AGENTMEMORY_BACKGROUND)
    agentmemory stats [--json]                                      counts, sizes, schema version
    agentmemory export [-o FILE] [--jsonl]                          everything as JSON (GET /export's format)
    agentmemory import FILE [--strategy S]                          merge (default) | skip | replace
    agentmemory reindex                                             rebuild the search index (and vectors)
    agentmemory recompress [--dry-run]                              compress stored observations again with
                                                                    today's capture code (titles, files)
    agentmemory recompress --with-model [--other-models] [--dry-run] [--project P] [--since DATE] [--limit N]
                                                                    the model's compressions and summaries for
                                                                    those written without one (resumable;
                                                                    --other-models: and by another model)
    agentmemory migrate --to postgresql://...|FILE.db [--to-redis URL|none]
                                                                    copy the store to another backend (resumable),
                                                                    working memory to where the target keeps it
    agentmemory tokens create PRINCIPAL [--kind K] [--project P]... [--rights read,write]
    agentmemory tokens list | tokens revoke ID                      API tokens for people and agents
    agentmemory backup [--force] [--local]                          upload a snapshot to the HF dataset now
                                                                    (--local: a verified snapshot on this disk)
    agentmemory restore [--force] [--from-backup]                   download the latest backup (--from-backup:
                                                                    the newest good local or HF backup replaces
                                                                    a damaged database)
    agentmemory llm test [--json]                                   one tiny request to the model provider

(``python src/cli.py ...`` is the same from a checkout.) A thin adapter: each admin command calls
the library function a tool also calls (``maintenance``, ``transfer``) or ``hf_sync``, in this
process, on the database from the settings (AGENTMEMORY_DB / AGENTMEMORY_DATA_DIR) or ``--db``.
Safe beside a running server on the same file: work runs in short transactions (a ``replace``
import is one) and waits for the server's writer instead of failing; an import or migrate holds
the store's lease (``memory/transfer_lease.py``), so a second one exits 1 saying what runs.
Progress bars go to stderr (``--quiet`` turns them off); results go to stdout as JSON, or as
the tables of cli_tables.py (``stats`` and ``llm test`` without ``--json``).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmemory_server import errors
from agentmemory_server.adapters import cli_agents
from agentmemory_server.adapters.cli_tables import print_llm_test, print_stats
from agentmemory_server.errors import AppError, InvalidInput
from agentmemory_server.kernel import auth, privacy, registry
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.setting_types import postgres_url, redis_url
from agentmemory_server.kernel.settings import Settings, SettingsError
from agentmemory_server.memory import transfer_lease
from agentmemory_server.models import llm
from agentmemory_server.operations import maintenance, migrate, recompress, recompress_model, tokens
from agentmemory_server.storage.sqlite import hf_sync, local_backup
from agentmemory_server.wiring import build_runtime

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")

PROG = "agentmemory"


def _progress(quiet: bool) -> maintenance.Progress:
    if quiet:
        return maintenance.no_progress
    from tqdm import tqdm  # only a terminal run draws bars

    def make_bar(label: str, total: int) -> maintenance.Bar:
        return tqdm(total=total, desc=label, unit="rec", file=sys.stderr, mininterval=0.25, dynamic_ncols=True)

    return make_bar


def _with_runtime(settings: Settings, work: Callable[[Runtime], Any]) -> Any:
    rt = build_runtime(settings, role="tool")
    try:
        return work(rt)
    finally:
        rt.close()


def cmd_serve(settings: Settings, opts: argparse.Namespace) -> Any:
    from agentmemory_server.adapters import server  # the HTTP stack loads only to serve

    server.announce_and_serve(settings, dev=opts.dev)
    return None


def cmd_worker(settings: Settings, opts: argparse.Namespace) -> Any:
    from agentmemory_server.adapters.worker import run_worker

    return run_worker(settings, parent_pid=opts.parent_pid)


def cmd_export(settings: Settings, opts: argparse.Namespace) -> Any:
    progress = _progress(opts.quiet)
    lines = opts.jsonl or (opts.output or "").endswith(JSON_LINES_SUFFIXES)
    if opts.output in (None, "-"):
        return _with_runtime(
            settings, lambda rt: maintenance.stream_export(rt, sys.stdout, progress=progress, lines=lines)
        )
    target = Path(opts.output)
    partial = target.with_name(target.name + ".partial")  # never leave half a file under the real name
    try:
        with open(partial, "w", encoding="utf-8") as out:
            summary = _with_runtime(
                settings, lambda rt: maintenance.stream_export(rt, out, progress=progress, lines=lines)
            )
        os.replace(partial, target)
    except BaseException as exc:
        # Half an export is no export, and on a full disk it holds the little room that is left.
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _export_write_failed(target, exc) from None
        raise
    return {**summary, "file": str(target), "bytes": target.stat().st_size}


def _export_write_failed(target: Path, exc: OSError) -> AppError:
    """The one-line error of an export file that could not be written (nothing is left of it)."""
    if exc.errno == errno.ENOSPC:
        return errors.InsufficientStorage(
            f"no room to write the export {target}: the disk is full; nothing was kept. "
            "Free some space or write it to another disk (-o PATH)"
        )
    return InvalidInput(f"cannot write the export {target}: {exc.strerror or exc}; nothing was kept")


def cmd_import(settings: Settings, opts: argparse.Namespace) -> Any:
    path = Path(opts.file)
    progress = _progress(opts.quiet)
    running = f"an import ({opts.strategy}) of {path.name}"
    if path.name.endswith(JSON_LINES_SUFFIXES):
        if not path.is_file():
            raise InvalidInput(f"cannot read {path}: no such file")

        def lines(rt: Runtime) -> Any:
            with transfer_lease.hold(rt, operation=running):
                return maintenance.import_lines(
                    Ctx(rt, source="cli"), path, opts.strategy, batch=opts.batch or 5000, progress=progress
                )

        return _with_runtime(settings, lines)
    document = maintenance.load_export(path)

    def whole(rt: Runtime) -> Any:
        with transfer_lease.hold(rt, operation=running):
            return maintenance.import_document(
                Ctx(rt, source="cli"), document, opts.strategy, batch=opts.batch or 1000, progress=progress
            )

    return _with_runtime(settings, whole)


def cmd_reindex(settings: Settings, opts: argparse.Namespace) -> Any:
    return _with_runtime(settings, lambda rt: maintenance.reindex(rt, progress=_progress(opts.quiet)))


def cmd_recompress(settings: Settings, opts: argparse.Namespace) -> Any:
    if opts.with_model:
        if opts.batch is not None:
            raise InvalidInput("--batch sizes the run without a model; --with-model writes each answer as it comes")
        return _with_runtime(
            settings,
            lambda rt: recompress_model.recompress_with_model(
                rt,
                project=opts.project,
                since=opts.since,
                limit=opts.limit,
                dry_run=opts.dry_run,
                other_models=opts.other_models,
                progress=_progress(opts.quiet),
            ),
        )
    chosen = [
        flag
        for flag, value in (("--project", opts.project), ("--since", opts.since), ("--limit", opts.limit))
        if value is not None
    ] + (["--other-models"] if opts.other_models else [])
    if chosen:
        raise InvalidInput(
            f"{', '.join(chosen)}: only with --with-model (the run without a model goes over every stored observation)"
        )
    return _with_runtime(
        settings,
        lambda rt: recompress.recompress(
            rt, dry_run=opts.dry_run, batch=opts.batch or 500, progress=_progress(opts.quiet)
        ),
    )


def cmd_stats(settings: Settings, opts: argparse.Namespace) -> Any:
    return _with_runtime(settings, maintenance.stats)


def cmd_migrate(settings: Settings, opts: argparse.Namespace) -> Any:
    if postgres_url(opts.to):
        target_settings = settings.replace(database_url=postgres_url(opts.to))
    elif "://" in opts.to:  # a URL of another database, which would otherwise become a SQLite file named after it
        scheme = opts.to.split("://")[0]
        raise InvalidInput(f"--to takes a postgresql:// URL or a SQLite file's path, not a {scheme!r} URL")
    else:
        target_settings = settings.replace(database_url=None, db_path=str(Path(opts.to).expanduser()))
    target_settings = _target_working_memory(settings, target_settings, opts)
    if (
        target_settings.database_url == settings.database_url
        and target_settings.database_path == settings.database_path
    ):
        raise InvalidInput("--to names the store being migrated from")
    # role "tool": a Redis this command cannot reach must not move the servers' store to the fallback
    source = build_runtime(settings, role="tool")
    try:
        # migrate opens the target from its settings: a refused run leaves no SQLite target it created.
        return migrate.migrate(
            source,
            target_settings,
            settings.database_path.parent,
            progress=_progress(opts.quiet),
            batch=opts.batch or 5000,
        )
    finally:
        source.close()


def _target_working_memory(settings: Settings, target: Settings, opts: argparse.Namespace) -> Settings:
    """Where the target of a migration keeps working memory: ``--to-redis URL`` (a Redis, under
    ``--to-redis-prefix``), ``--to-redis none`` (its database), or where the source does."""
    prefix = opts.to_redis_prefix
    if opts.to_redis is None:
        if prefix is not None and settings.working_memory_backend != "redis":
            raise InvalidInput(
                "--to-redis-prefix needs --to-redis URL: the source keeps working memory in its database"
            )
        return target if prefix is None else target.replace(working_memory_redis_prefix=prefix)
    if opts.to_redis.strip().lower() == "none":
        if prefix is not None:
            raise InvalidInput("--to-redis-prefix goes with --to-redis URL, not --to-redis none")
        return target.replace(working_memory_backend="sqlite")
    try:
        url = redis_url(opts.to_redis)
    except ValueError as exc:
        raise InvalidInput(f"--to-redis takes a Redis URL or none: {exc}") from None
    return target.replace(
        working_memory_backend="redis",
        redis_url=url,
        working_memory_redis_prefix=prefix if prefix is not None else settings.working_memory_redis_prefix,
    )


# What the one positional argument of `tokens` is, per action (None: the action takes none).
_TOKEN_ARGUMENT = {"create": "PRINCIPAL (who the token speaks for)", "revoke": "ID (from `tokens list`)", "list": None}


def cmd_tokens(settings: Settings, opts: argparse.Namespace) -> Any:
    wanted = _TOKEN_ARGUMENT[opts.action]
    if wanted and not opts.principal:
        raise InvalidInput(f"tokens {opts.action} needs {wanted}: agentmemory tokens {opts.action} {wanted.split()[0]}")
    if not wanted and opts.principal:
        raise InvalidInput(f"tokens {opts.action} takes no argument, got {opts.principal!r}")

    def work(rt: Runtime) -> Any:
        ctx = Ctx(rt, source="cli")
        if opts.action == "create":
            args = {"principal": opts.principal, "kind": opts.kind, "projects": opts.project or []}
            args["rights"] = [r.strip() for r in opts.rights.split(",") if r.strip()]
            return registry.run(tokens.tokens_create, ctx, {**args, **({"note": opts.note} if opts.note else {})})
        if opts.action == "revoke":
            return registry.run(tokens.tokens_revoke, ctx, {"id": opts.principal})
        return registry.run(tokens.tokens_list, ctx, {})

    return _with_runtime(settings, work)


def _sync_config(settings: Settings) -> hf_sync.Config:
    hf_sync.setup_logging()
    return hf_sync.Config.from_env(os.environ, db_path=settings.database_path)


def _sqlite_only(settings: Settings, command: str) -> None:
    if settings.database_url:
        raise InvalidInput(
            f"`agentmemory {command}` copies the SQLite file; this store is PostgreSQL: back it up with the "
            "server's own tools (pg_dump, base backups) or `agentmemory export --jsonl`"
        )


def cmd_backup(settings: Settings, opts: argparse.Namespace) -> Any:
    _sqlite_only(settings, "backup")
    if opts.local:
        return local_backup.take(
            settings.database_path,
            settings.local_backup_path,
            keep=settings.local_backup_keep,
            reserve_bytes=settings.disk_reserve_mb * 1024 * 1024,
        )
    return hf_sync.backup(_sync_config(settings), force=opts.force)


def cmd_restore(settings: Settings, opts: argparse.Namespace) -> Any:
    _sqlite_only(settings, "restore")
    if opts.from_backup:
        config = _sync_config(settings)
        return local_backup.restore_last_good(
            settings.database_path, settings.local_backup_path, config if config.repo else None, force=opts.force
        )
    return hf_sync.restore(_sync_config(settings), force=opts.force)


# -- agentmemory llm ... (model provider commands) ------------------------------------------------------


def cmd_llm_test(settings: Settings, opts: argparse.Namespace) -> Any:
    return _with_runtime(settings, lambda rt: llm.service(rt).check())


def llm_test_failed(result: dict[str, Any]) -> bool:
    requests = [result["request"] or {}, *result.get("otherModels", [])]
    return not all(request.get("ok") for request in requests)


def _records(what: str) -> Callable[[str], int]:
    """An argparse type for a whole number of records, at least 1 (``what`` names them)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} {what}: it must be at least 1")
        return value

    return parse


_batch_size = _records("records per transaction")  # --batch
_count = _records("records")  # --limit


def _provider_was_down(result: dict[str, Any]) -> bool:
    """``recompress --with-model`` exits 1 when it stopped because the provider is down (a used-up
    budget is the configuration working: exit 0, ``stopped`` says so)."""
    return (result.get("stopped") or {}).get("reason") == "providerDown"


def _admin_reads_text() -> str:
    """Which admin tools need read too, as their registrations declare (``answers_with_records``)."""
    named = ", ".join(t.name for t in registry.REGISTRY.all() if t.answers_with_records)
    return f"{named} answer with records and need read too"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="agentmemory-python: the server and its admin commands")
    parser.add_argument("--db", help="database file (default: AGENTMEMORY_DB or <AGENTMEMORY_DATA_DIR>/agentmemory.db)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    serve = commands.add_parser("serve", help="run the server (gunicorn; --dev for Werkzeug)")
    serve.add_argument("--dev", action="store_true", help="use the Werkzeug development server")
    serve.add_argument("--host", help="interface to bind (default HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default III_REST_PORT / PORT or 3111)")
    serve.add_argument("--threads", type=int, help="gunicorn gthread threads")
    serve.set_defaults(run=cmd_serve)
    worker = commands.add_parser(
        "worker", help="run the background work (embeddings, model jobs, sweeps) at low priority"
    )
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by the server that starts it
    worker.set_defaults(run=cmd_worker)
    stats = commands.add_parser("stats", help="counts, sizes and schema version")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(run=cmd_stats)
    export = commands.add_parser("export", help="stream every record as one JSON document")
    export.add_argument("-o", "--output", help="file to write (default: stdout); .jsonl/.ndjson writes JSON Lines")
    export.add_argument("--jsonl", action="store_true", help="JSON Lines: a header line, then one record a line")
    export.set_defaults(run=cmd_export)
    imp = commands.add_parser("import", help="import an export file (.json, or .jsonl streamed in batches)")
    imp.add_argument("file")
    imp.add_argument(
        "--strategy",
        choices=("merge", "skip", "replace"),
        default="merge",
        help="merge: imported records win; skip: existing win; replace: wipe first (atomic)",
    )
    imp.add_argument(
        "--batch",
        type=_batch_size,
        help="records per transaction (default 1000; 5000 for JSON Lines, replace included)",
    )
    imp.set_defaults(run=cmd_import)
    commands.add_parser("reindex", help="rebuild the search index (and vectors) from the records").set_defaults(
        run=cmd_reindex
    )
    again = commands.add_parser(
        "recompress",
        help="compress stored observations again with today's capture code (titles, files); --with-model: "
        "the model's compressions and summaries for those written without one (--other-models: or by another "
        "provider or model)",
    )
    again.add_argument("--dry-run", action="store_true", help="only count and show what would change")
    again.add_argument("--batch", type=_batch_size, help="records per transaction (default 500)")
    again.add_argument(
        "--with-model",
        action="store_true",
        help="ask the configured model for the compressions (AGENTMEMORY_AUTO_COMPRESS) and session summaries "
        "written without one; resumable, stops when the day's token budget is used up or the provider is down "
        "(--dry-run: how many, and the tokens estimated against the budget)",
    )
    again.add_argument("--project", help="with --with-model: only this project's records")
    again.add_argument(
        "--since", metavar="DATE", help="with --with-model: only records written since (ISO-8601 date or time)"
    )
    again.add_argument("--limit", type=_count, help="with --with-model: at most this many records this run")
    again.add_argument(
        "--other-models",
        action="store_true",
        help="also redo what another provider or model wrote (needs --with-model; a record older than this "
        "option counts only when its provider differs)",
    )
    again.set_defaults(run=cmd_recompress, failed=_provider_was_down)
    move = commands.add_parser(
        "migrate", help="copy every record and working memory to another store (PostgreSQL or SQLite), resumably"
    )
    move.add_argument("--to", required=True, help="postgresql://user:password@host/db, or a SQLite file path")
    move.add_argument("--batch", type=_batch_size, help="records per transaction (default 5000)")
    move.add_argument(
        "--to-redis",
        metavar="URL|none",
        help="where the target keeps working memory: a Redis (redis://host:port/db) or none (its database); "
        "default: where the source keeps it (WORKING_MEMORY_BACKEND, REDIS_URL)",
    )
    move.add_argument(
        "--to-redis-prefix",
        metavar="PREFIX",
        help="key prefix in the target's Redis (default: WORKING_MEMORY_REDIS_PREFIX)",
    )
    move.set_defaults(run=cmd_migrate)
    toks = commands.add_parser("tokens", help="API tokens for people and agents: create, list, revoke")
    toks.add_argument("action", choices=("create", "list", "revoke"))
    toks.add_argument("principal", nargs="?", help="create: who it speaks for; revoke: the token id")
    toks.add_argument("--kind", choices=("person", "agent"), default="agent")
    toks.add_argument("--project", action="append", help="a project it may touch (repeat; default: all)")
    toks.add_argument(
        "--rights",
        default="read,write",
        help=f"comma-separated: read, write, admin (admin: only without --project; {_admin_reads_text()})",
    )
    toks.add_argument("--note", help="what the token is for")
    toks.set_defaults(run=cmd_tokens)
    for name, run, text in (
        ("backup", cmd_backup, "upload a snapshot to the HuggingFace dataset now (--local: to this disk)"),
        ("restore", cmd_restore, "download the latest backup (stop the server first)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--force", action="store_true", help="override the safety checks (see README)")
        sub.set_defaults(run=run)
        if name == "backup":
            sub.add_argument(
                "--local", action="store_true", help="a verified snapshot in AGENTMEMORY_LOCAL_BACKUP_DIR instead"
            )
        else:
            sub.add_argument(
                "--from-backup",
                action="store_true",
                help="replace a damaged database with the newest good backup (local snapshot or HF dataset)",
            )
    cli_agents.add_agent_commands(commands)
    _add_llm_commands(commands)
    return parser


def _add_llm_commands(commands: Any) -> None:
    group = commands.add_parser("llm", help="model provider: `llm test` sends one tiny request and shows each feature")
    sub = group.add_subparsers(dest="llm_command", required=True, metavar="llm_command")
    test = sub.add_parser("test", help="one tiny request: latency, and each feature's provider, model and budget")
    test.add_argument("--json", action="store_true", help="print JSON instead of a table")
    test.set_defaults(run=cmd_llm_test, show=print_llm_test, failed=llm_test_failed)


def settings_for(opts: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if opts.db:
        overrides["db_path"] = str(Path(opts.db).expanduser())
    if opts.command == "serve":
        overrides.update({k: v for k in ("host", "port", "threads") if (v := getattr(opts, k))})
    elif opts.command != "worker":
        overrides["background_jobs"] = False  # an admin command does its work and exits
    return Settings.from_env(os.environ, **overrides)


def _token_file(settings: Settings) -> str | None:
    """The generated token, so a worker or admin command never logs it either."""
    try:
        return auth.read_secret_file(settings.secret_path)
    except (OSError, UnicodeDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        settings = settings_for(opts)
        privacy.redact_logs([*settings.secret_values(), os.environ.get("HF_TOKEN"), _token_file(settings)])
        result = opts.run(settings, opts)
    except (AppError, SettingsError, hf_sync.SyncError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    if opts.command in ("serve", "worker"):
        return int(result or 0)
    if result is None:
        return 0
    if opts.command == "export" and opts.output in (None, "-"):
        print(json.dumps(result), file=sys.stderr)
    elif opts.command == "stats" and not opts.json:
        print_stats(result)
    elif getattr(opts, "show", None) and not opts.json:
        opts.show(result)
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    failed = getattr(opts, "failed", None)
    return 1 if failed is not None and failed(result) else 0


if __name__ == "__main__":
    sys.exit(main())
