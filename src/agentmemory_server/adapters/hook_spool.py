"""The hook command's own spool: events ``agentmemory hook`` could not deliver, kept on the agent's
machine and sent once the server answers again.

When the server cannot be reached (stopped, restarting, upgrading, the network down) or answers
408, 429 or 5xx without keeping the event, the hook still answers the agent at once with a neutral answer.
It then keeps the payload in ``<data dir>/hook-spool/``, one file per event, with the time it
happened. The next hook call that reaches the server starts a detached ``agentmemory hook-drain``,
so no agent waits for it. That process sends what waits, oldest first, each with its original
time in ``agentmemory_sent_at``, so the server stores it where it happened; dedup by event id
makes a second delivery harmless. A payload the server refuses for good (400, 404, 409, 413,
422) is set aside as ``*.refused``. At most ``MAX_EVENTS`` files and ``MAX_BYTES`` wait; past
either, an event is dropped with a message on stderr.

The server keeps a spool of its own for events it received but could not store
(capture/spool.py); this one covers the events that never reached it. Only the standard library
and the kernel's small helpers are imported here: the hook command must start fast.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agentmemory_server.kernel.util import process_alive

FOLDER = "hook-spool"
SENT_AT = "agentmemory_sent_at"  # read by /hooks/<client> (capture/client_hooks.py)
WAITING = ".json"
SENDING = ".sending-"  # and the sending process's id
REFUSED = ".refused"
MAX_EVENTS = 1000
MAX_BYTES = 64 << 20
DRAIN_SECONDS = 60.0
# Answers after which the event is kept to send again (as upstream's hooks do): a request that
# timed out, a rate limit, and any 5xx.
TRY_AGAIN = frozenset({408, 429})
# Refusals that another try cannot change; anything else (401 after a token fix, 429, 5xx) waits.
FOR_GOOD = frozenset({400, 404, 409, 413, 415, 422})

Poster = Callable[[str, bytes], tuple[int, bytes]]


def keep(folder: Path, client: str, body: bytes) -> str:
    """Keep one payload with the time it happened; what was done, for the hook's stderr line."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not kept: it is not JSON, and the server would refuse it too"
    if not isinstance(payload, dict):
        return "not kept: it is not a JSON object, and the server would refuse it too"
    payload.setdefault(SENT_AT, now())  # the hook command stamped it when it first sent it
    data = json.dumps({"client": client, "payload": payload}, ensure_ascii=False).encode("utf-8")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files = _names(folder, WAITING)
        used = sum(_size(folder / n) for n in files)
        if len(files) >= MAX_EVENTS or used + len(data) > MAX_BYTES:
            return f"not kept: {folder} already holds {len(files)} events ({used >> 20} MB)"
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{WAITING}"
        temporary = folder / f".{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, folder / name)
    except OSError as exc:
        return f"not kept: {exc}"
    return f"kept in {folder}; it is sent when the server answers again"


def waiting(folder: Path) -> bool:
    return bool(_names(folder, WAITING)) or bool(_names(folder, SENDING))


def count(folder: Path) -> int:
    """Events kept and not sent yet (being sent included)."""
    return len(_names(folder, WAITING)) + len(_names(folder, SENDING))


def start_drain(url: str, environ: dict[str, str]) -> None:
    """Send what waits from a detached process, so that this hook returns at once."""
    import subprocess  # here: a hook that sends nothing back does not pay for the import

    command = [sys.executable, "-m", "agentmemory_server.adapters.entry", "hook-drain", "--url", url]
    try:
        subprocess.Popen(  # noqa: S603 - our own module, with the interpreter running this one
            command,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        pass  # the next hook call tries again


def drain(folder: Path, send: Poster, budget: float = DRAIN_SECONDS) -> dict[str, int]:
    """Send the waiting payloads, oldest first, until one cannot be delivered or time is up."""
    counts = {"sent": 0, "refused": 0, "waiting": 0}
    _take_back_abandoned(folder)
    deadline = time.monotonic() + budget
    names = _names(folder, WAITING)
    for i, name in enumerate(names):
        if time.monotonic() > deadline:
            counts["waiting"] = len(names) - i
            break
        outcome = _send_one(folder, name, send)
        if outcome == "waiting":
            counts["waiting"] = len(names) - i
            break
        if outcome is not None:
            counts[outcome] += 1
    return counts


def _send_one(folder: Path, name: str, send: Poster) -> str | None:
    taken = folder / f"{name}{SENDING}{os.getpid()}"
    try:
        os.rename(folder / name, taken)
        kept = json.loads(taken.read_text(encoding="utf-8"))
        client, body = str(kept["client"]), json.dumps(kept["payload"], ensure_ascii=False).encode("utf-8")
    except FileNotFoundError:
        return None  # another drain took it
    except (OSError, ValueError, KeyError, TypeError):
        os.replace(taken, folder / (name + REFUSED))
        return "refused"
    try:
        status, _answer = send(client, body)
    except (OSError, ValueError):
        status = 0
    if 200 <= status < 300:
        taken.unlink(missing_ok=True)
        return "sent"
    if status in FOR_GOOD:
        os.replace(taken, folder / (name + REFUSED))
        return "refused"
    os.replace(taken, folder / name)
    return "waiting"


def _take_back_abandoned(folder: Path) -> None:
    """Files a drain took and never finished (it was killed) wait again."""
    for name in _names(folder, SENDING):
        waiting_name, _, pid = name.rpartition(SENDING)
        if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
            continue
        try:
            os.replace(folder / name, folder / waiting_name)
        except FileNotFoundError:
            continue


def _names(folder: Path, marker: str) -> list[str]:
    try:
        found = os.listdir(folder)
    except OSError:
        return []
    if marker == WAITING:
        return sorted(n for n in found if n.endswith(WAITING) and not n.startswith("."))
    return sorted(n for n in found if marker in n and not n.startswith("."))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
