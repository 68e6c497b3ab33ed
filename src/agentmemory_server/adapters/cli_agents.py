"""The ``agentmemory`` commands that connect coding agents and run the server as a service:

    agentmemory connect CLIENT [--scope user|project] [--mcp stdio|http|none] [--yes] [--dry-run]
    agentmemory disconnect CLIENT                   remove what connect wrote (originals restored)
    agentmemory status [--json]                     which agents are connected; does the server answer
                                                    (if not: what waits in its capture spool)
    agentmemory hook ...                            the hook command of agents that run commands
    agentmemory service install|uninstall|status    run the server at login (systemd / launchd)

Kept apart from cli.py's store administration: these touch the user's agent configuration files
(adapters/connect) and service manager (adapters/service), never the database. ``connect`` shows
the diff and asks before it writes (``--yes``; never waits for input without a terminal).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from agentmemory_server import errors
from agentmemory_server.adapters import connect, hook_client, hook_spool, service
from agentmemory_server.capture import spool
from agentmemory_server.errors import AppError
from agentmemory_server.kernel import auth
from agentmemory_server.kernel.settings import Settings


class Declined(AppError):
    status = 400
    code = errors.CONFIRMATION_DECLINED


def _confirm(opts: argparse.Namespace) -> None:
    """Go ahead with --yes; ask on a terminal; never wait for input anywhere else."""
    if opts.yes:
        return
    if not sys.stdin.isatty():
        raise Declined("the changes above were not written: stdin is not a terminal; re-run with --yes")
    if input("Write these changes? [y/N] ").strip().lower() not in ("y", "yes"):
        raise Declined("nothing was written")


def _connect_options(settings: Settings, opts: argparse.Namespace) -> connect.Options:
    return connect.options(
        settings,
        url=opts.url,
        scope=opts.scope,
        mcp=getattr(opts, "mcp", "stdio"),
        write_token=not opts.no_token,
        durable_hooks=getattr(opts, "durable_hooks", False),
    )


def cmd_connect(settings: Settings, opts: argparse.Namespace) -> Any:
    if settings.auth == "on" and not opts.no_token:
        # Connecting before the server ever ran: create the token it will generate, so the
        # agent's config and the server agree from the first start.
        auth.resolve(settings)
    o = _connect_options(settings, opts)
    changes, text = connect.prepare(opts.client, o)
    title = connect.CLIENTS[opts.client].title
    if not any(c.changed for c in changes):
        print(f"{title} is already connected to {o.url}; nothing to change.")
        return None
    print(text, end="")
    if opts.dry_run:
        return None
    _confirm(opts)
    result = connect.connect(opts.client, o, changes)
    print(f"{title} connected to {o.url}: wrote {', '.join(result['changed'])}")
    if (next_step := connect.note(opts.client, o)) is not None:
        print(next_step)
    if settings.auth == "on" and (token_step := connect.mcp_token_note(opts.client, o)) is not None:
        print(token_step)
    return None


def cmd_disconnect(settings: Settings, opts: argparse.Namespace) -> Any:
    result = connect.disconnect(opts.client, _connect_options(settings, opts))
    for item in result["files"]:
        print(f"{item['path']}: {item['result']}")
    if not result["files"]:
        print(f"{connect.CLIENTS[opts.client].title}: nothing of agentmemory's was found")
    return None


def _status_servers(settings: Settings, opts: argparse.Namespace, clients: list[dict[str, Any]]) -> dict[str, Any]:
    """The servers the connected agents reach: --url, else AGENTMEMORY_URL (a team's server), else
    the one address ``connect`` wrote into them all, else this machine's; each one asked once."""
    written = sorted({row["url"] for row in clients if row.get("url")})
    given = opts.url or os.environ.get("AGENTMEMORY_URL") or (written[0] if len(written) == 1 else None)
    url, token = hook_client.server_address(given, settings, os.environ)
    servers = {address: hook_client.probe(address, token) for address in dict.fromkeys([url, *written])}
    return {"url": url, "server": servers[url], "servers": servers}


SPOOL_WAITS = (
    "events the server kept on disk while its database refused writes wait there: nothing stores them until a "
    "server starts on this data directory (`agentmemory serve`), which stores them once its database takes writes"
)


def _server_spool(settings: Settings, servers: dict[str, Any]) -> dict[str, Any] | None:
    """With this machine's server not answering, the capture spool of its data directory as its
    files show it: no process drains it until a server starts here (``drainedBy: none``). Not
    when the agents use another server (a team's): this directory's spool is then not theirs,
    and a server running here may be draining it. A server that answers says who drains its
    spool in its own /health (``worker`` or ``requests``)."""
    if servers["url"] != hook_client.local_url(settings) or not servers["server"].startswith(hook_client.NOT_REACHABLE):
        return None
    return {**spool.waiting_without_a_server(settings.data_path), "hint": SPOOL_WAITS}


def cmd_status(settings: Settings, opts: argparse.Namespace) -> Any:
    clients = connect.status(_connect_options(settings, opts))
    servers = _status_servers(settings, opts, clients)
    report: dict[str, Any] = {
        **servers,
        "clients": clients,
        "hookEventsWaiting": hook_spool.count(hook_client.spool_folder(settings)),
    }
    if (server_spool := _server_spool(settings, servers)) is not None:
        report["captureSpool"] = server_spool
    if opts.json:
        return report
    for address, state in report["servers"].items():
        users = [row["client"] for row in clients if row.get("url") == address]
        print(f"server  {address}: {state}" + (f" (written for {', '.join(users)})" if users else ""))
    if report["hookEventsWaiting"]:
        print(
            f"  {report['hookEventsWaiting']} hook event(s) wait in {hook_client.spool_folder(settings)}: "
            "the next hook call that reaches the server sends them "
            f"(or run `agentmemory hook-drain --url {report['url']}`)"
        )
    if server_spool and (waiting := server_spool["events"] + server_spool["taken"]):
        print(f"  {waiting} hook event(s) in {server_spool['folder']} (capture spool, drained by none): {SPOOL_WAITS}")
    for row in report["clients"]:
        state = "connected" if row["connected"] else "-"
        print(f"  {row['client']:<12} {state:<10} {', '.join(row['files'])}")
    return None


def cmd_service(settings: Settings, opts: argparse.Namespace) -> Any:
    runner = None if getattr(opts, "no_start", False) else service.run_command
    home = Path.home()
    if opts.action == "install":
        return service.install(home, service.serve_command(), os.environ, opts.platform, runner)
    if opts.action == "uninstall":
        return service.uninstall(home, opts.platform, runner)
    return service.status(home, opts.platform, runner)


def add_agent_commands(commands: Any) -> None:
    """The subcommands that connect coding agents (hook, connect, disconnect, status) and run the
    server as a login service."""
    names = sorted(connect.CLIENTS)
    hook = commands.add_parser("hook", help="hook command for agents that run commands: stdin to the server")
    hook_client.add_arguments(hook)
    hook.set_defaults(run=lambda settings, opts: hook_client.main_with(opts))
    for name, run, text in (
        ("connect", cmd_connect, "write an agent's hook and MCP config (backup + diff; reversible)"),
        (
            "disconnect",
            cmd_disconnect,
            "remove what connect wrote (originals restored byte for byte, folders it made removed when empty)",
        ),
        ("status", cmd_status, "which agents are connected, and whether the server answers"),
    ):
        sub = commands.add_parser(name, help=text)
        if name != "status":
            sub.add_argument("client", choices=names)
        sub.add_argument(
            "--url", help="server address (default: AGENTMEMORY_URL, else http://HOST:PORT from the settings)"
        )
        sub.add_argument("--scope", choices=("user", "project"), default="user", help="user config or this project's")
        sub.add_argument("--no-token", action="store_true", help="never write the token (export AGENTMEMORY_SECRET)")
        if name == "connect":
            sub.add_argument(
                "--mcp", choices=("stdio", "http", "none"), default="stdio", help="how the agent reaches MCP"
            )
            sub.add_argument(
                "--durable-hooks",
                action="store_true",
                help="Claude Code: every event through `agentmemory hook`, kept on disk while the server is "
                "down (about 0.3 s an event instead of a few ms); the other agents' hooks already are",
            )
            sub.add_argument("--yes", action="store_true", help="write without asking")
            sub.add_argument("--dry-run", action="store_true", help="only show the diff")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(run=run)
    svc = commands.add_parser("service", help="run the server at login (systemd user unit / launchd agent)")
    svc.add_argument("action", choices=("install", "uninstall", "status"))
    svc.add_argument("--no-start", action="store_true", help="only write or remove the files; call no service manager")
    svc.add_argument("--platform", choices=("systemd", "launchd"), default=service.default_platform())
    svc.set_defaults(run=cmd_service)
