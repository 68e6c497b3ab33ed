"""``agentmemory hook <client>``: the hook command for agents that can only run commands.

Codex, Cursor, Gemini/Antigravity, Cline and Copilot CLI run a command per hook event with the
event's JSON on stdin and read the answer from stdout (Claude Code too, for SessionStart, which
takes no ``http`` hooks). This command posts stdin unchanged to ``POST
{url}/agentmemory/hooks/<client>`` and prints the server's answer, which is already in the
client's own output format. It needs no Node and nothing beyond this package, reads the token
the way every local client does (``AGENTMEMORY_SECRET``, else the secret file), and never blocks
the agent: when the server cannot be reached it prints a neutral answer, says why on stderr, keeps
the event to send later (adapters/hook_spool.py) and exits 0. It imports only the standard library
and the settings, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from agentmemory_server.adapters import hook_spool
from agentmemory_server.kernel import auth
from agentmemory_server.kernel.settings import Settings, SettingsError

# What a client reads as "nothing to do" (Cline requires ``cancel``; the others take ``{}``).
NEUTRAL = {"cline": '{"cancel":false}'}
MAX_STDIN_BYTES = 64 << 20
NOT_REACHABLE = "not reachable"  # how a ``probe`` line of a server that did not answer begins


def local_url(settings: Settings) -> str:
    """This machine's server address from the settings (a wildcard bind is reached on loopback)."""
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def _settings(environ: Mapping[str, str]) -> Settings | None:
    try:
        return Settings.from_env(environ)
    except SettingsError:
        return None


def server_address(
    given_url: str | None, settings: Settings | None, environ: Mapping[str, str]
) -> tuple[str, str | None]:
    """The server's address and this machine's token, the way every local client finds them."""
    url = given_url or environ.get("AGENTMEMORY_URL") or (local_url(settings) if settings else "http://127.0.0.1:3111")
    token = environ.get("AGENTMEMORY_SECRET") or (auth.client_token(settings) if settings else None)
    return url, token


def _for_server(body: bytes, event: str | None) -> bytes:
    """The payload as sent: with the time it happened (``agentmemory_sent_at``), so that a
    delivery whose answer was lost and the resend of the kept copy make one event, and with the
    event name Copilot CLI's camelCase payloads lack (the one the config names)."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return body  # the server answers malformed JSON with a 400 that names the problem
    if not isinstance(payload, dict):
        return body
    if event:
        payload["agentmemory_event"] = event
    payload.setdefault(hook_spool.SENT_AT, hook_spool.now())
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def post(url: str, client: str, body: bytes, token: str | None, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/agentmemory/hooks/{client}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a configured URL)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run(
    opts: argparse.Namespace, stdin: IO[bytes], stdout: IO[str], stderr: IO[str], environ: Mapping[str, str]
) -> int:
    settings = _settings(environ)
    url, token = server_address(opts.url, settings, environ)
    body = _for_server(stdin.read(MAX_STDIN_BYTES), opts.event)
    neutral = NEUTRAL.get(opts.client, "{}")
    folder = spool_folder(settings)
    try:
        status, answer = post(url, opts.client, body, token, opts.timeout)
    except (OSError, ValueError) as exc:
        kept = hook_spool.keep(folder, opts.client, body)
        print(f"agentmemory hook: {url} not reachable ({exc}); the event was {kept}", file=stderr)
        print(neutral, file=stdout)
        return 0
    if 200 <= status < 300:
        print(answer.decode("utf-8", "replace").strip() or neutral, file=stdout)
        if hook_spool.waiting(folder):  # the server answers again: what waits is sent now
            hook_spool.start_drain(url, dict(environ))
        return 0
    said = f"the server answered {status}: {answer[:300].decode('utf-8', 'replace')}"
    if status in hook_spool.TRY_AGAIN or status >= 500:  # not kept by the server (a 202 says it was)
        said += f"; the event was {hook_spool.keep(folder, opts.client, body)}"
    print(f"agentmemory hook: {said}", file=stderr)
    print(neutral, file=stdout)
    return 0


def spool_folder(settings: Settings | None) -> Path:
    """Where this machine keeps the hook events the server did not take (adapters/hook_spool.py)."""
    base = settings.data_path if settings else Path.home() / ".agentmemory"
    return base / hook_spool.FOLDER


def drain_main(argv: list[str], environ: Mapping[str, str] = os.environ) -> int:
    """``agentmemory hook-drain``: send the events this machine kept, started by a hook call that
    reached the server (not meant to be typed; harmless when it is)."""
    parser = argparse.ArgumentParser(prog="agentmemory hook-drain", description=drain_main.__doc__)
    parser.add_argument("--url", help="server address (default: AGENTMEMORY_URL, else http://HOST:PORT)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server per event")
    opts = parser.parse_args(argv)
    settings = _settings(environ)
    url, token = server_address(opts.url, settings, environ)
    counts = hook_spool.drain(spool_folder(settings), lambda client, body: post(url, client, body, token, opts.timeout))
    print(json.dumps(counts))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("client", help="whose hook format stdin is in (claude-code, codex, cursor, ...)")
    parser.add_argument("--url", help="server address (default: AGENTMEMORY_URL, else http://HOST:PORT)")
    parser.add_argument("--event", help="event name to add to the payload (Copilot CLI camelCase hooks)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agentmemory hook", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), sys.stdin.buffer, sys.stdout, sys.stderr, os.environ)


def main_with(opts: argparse.Namespace) -> None:
    """``agentmemory hook`` reached through the full CLI parser (same behaviour, slower start)."""
    run(opts, sys.stdin.buffer, sys.stdout, sys.stderr, os.environ)


def probe(url: str, token: str | None, timeout: float = 3.0) -> str:
    """One line on whether the server at ``url`` answers and takes the token."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/agentmemory/health", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a configured URL)
            return f"up (HTTP {response.status})" + health_note(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return "up, but it refuses this machine's token (401): check AGENTMEMORY_SECRET / the secret file"
        return f"up (HTTP {exc.code})" + health_note(exc.read())
    except (OSError, ValueError) as exc:
        return f"{NOT_REACHABLE} ({exc}): start it with `agentmemory serve` or `agentmemory service install`"


def health_note(body: bytes) -> str:
    """What a /health document says is wrong, for the one line of ``probe``: nothing when healthy,
    else its status and the sections that are not ok (GET /agentmemory/status says why)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    state = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(state, str) or state in ("healthy", "ok"):
        return ""
    troubled = [
        name
        for name, section in doc.items()
        if isinstance(section, dict) and section.get("status") not in (None, "ok", "healthy", "pass")
    ]
    return f", {state}" + (f": {', '.join(troubled)}" if troubled else "") + " (GET /agentmemory/status says why)"
