"""Writing an agent's config files reversibly: edits, the manifest, backups and diffs.

A client spec turns the options into ``Edit``s: a file, how to add agentmemory's entries to its
current text, and how to take them out again. ``apply`` writes every changed file (0600 when it
holds the token), after saving the original once under ``<data dir>/connect/``; a manifest records,
per file, whether it existed, its mode, the folders made for it and the hash of what was written.
``revert`` puts back the original bytes when a file is still exactly what was written, and
otherwise removes only agentmemory's entries, so changes made since then survive; then it removes
the folders ``apply`` made that are left empty. Running ``apply`` twice writes nothing the second
time.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError

Transform = Callable[[str | None], str]
Untransform = Callable[[str], str | None]


class ConnectError(AppError):
    status = 400
    code = errors.CLIENT_CONFIG_UNREADABLE


class ScopeError(ConnectError):
    """The agent has no config for that scope, or none that could hold what it needs there."""

    code = errors.CLIENT_SCOPE_UNSUPPORTED


@dataclass(frozen=True)
class Options:
    """What ``connect`` writes: where the server is, which scope, and how agents reach it."""

    url: str
    scope: str  # "user" | "project"
    home: Path
    cwd: Path
    hook_command: str  # shell-quoted path of the ``agentmemory`` command
    mcp_command: str  # path of ``agentmemory-mcp``
    mcp: str = "stdio"  # "stdio" | "http" | "none"
    token: str | None = None  # written only where a client cannot read it itself (0600 file)
    # The token itself, exported or not: Cursor and Antigravity expand no variable in their MCP
    # entry, so for --mcp http it is written there (0600) even when AGENTMEMORY_SECRET is exported.
    literal_token: str | None = None
    data_dir: Path = Path("~/.agentmemory")
    # Claude Code: every event through ``agentmemory hook`` (kept on disk while the server is down)
    # instead of ``http`` hooks (a few ms each, lost when no server answers).
    durable_hooks: bool = False
    # Whether commands and stdio entries name the server. Not in a project's committed config when
    # no server was named (--url, AGENTMEMORY_URL): each teammate's own AGENTMEMORY_URL, else their
    # own machine's server, is then the one their agent reaches, as with no config at all.
    pin_url: bool = True

    def hook(self, client: str, *extra: str) -> str:
        # The agent runs this line in a shell (zsh for many): an IPv6 address's brackets are a glob
        # there, which zsh refuses to leave unmatched, so the address is quoted where it needs it.
        where = ["--url", shlex.quote(self.url)] if self.pin_url else []
        return " ".join([self.hook_command, "hook", client, *extra, *where])

    def url_env(self) -> dict[str, str]:
        """The environment a stdio MCP entry gives ``agentmemory-mcp`` (see ``pin_url``)."""
        return {"AGENTMEMORY_URL": self.url} if self.pin_url else {}


@dataclass(frozen=True)
class Edit:
    path: Path
    add: Transform
    remove: Untransform
    mode: int | None = None  # file mode to set (0o755 for hook executables)
    secret: bool = False  # holds the token: written 0600


@dataclass
class Change:
    edit: Edit
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class Manifest:
    path: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str | None = None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return cls(path)
        return cls(path, {f["path"]: f for f in data.get("files", [])}, data.get("url"))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"url": self.url, "files": list(self.files.values())}
        write_private(self.path, json.dumps(body, indent=2) + "\n")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConnectError(f"{path} is not UTF-8 text; nothing was written") from None
    except OSError as exc:  # a directory where the file should be, a file where a folder should be
        raise ConnectError(f"{path} cannot be read ({exc.strerror}); nothing was written") from None


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def plan(edits: list[Edit]) -> list[Change]:
    """The new text of every file (nothing is written)."""
    changes = []
    for edit in edits:
        before = read_text(edit.path)
        changes.append(Change(edit, before, edit.add(before)))
    return changes


def diff(changes: list[Change], secrets: tuple[str, ...] = ()) -> str:
    """A unified diff of the changes, with the token shown as a placeholder."""
    out = []
    for change in changes:
        if not change.changed:
            continue
        old = (change.before or "").splitlines(keepends=True)
        new = change.after.splitlines(keepends=True)
        label = str(change.edit.path)
        lines = difflib.unified_diff(old, new, "/dev/null" if change.before is None else label, label)
        out.append("".join(lines))
    text = "".join(piece if piece.endswith("\n") else piece + "\n" for piece in out)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<token>")
    return text


def apply(changes: list[Change], manifest: Manifest, backups: Path) -> list[Path]:
    """Write the changed files, keeping each original once; returns the files written."""
    written: list[Path] = []
    for change in changes:
        path = change.edit.path
        entry = manifest.files.get(str(path))
        if entry is None:
            entry = {"path": str(path), "created": change.before is None, "backup": None, "mode": None}
            if change.before is not None:
                entry["mode"] = path.stat().st_mode & 0o7777
                entry["backup"] = str(_backup(path, backups))
            manifest.files[str(path)] = entry
        if change.changed:
            missing = _missing_folders(path)
            try:
                _write(change)
            except OSError as exc:
                _record_folders(entry, missing)  # a folder made before the write failed is ours too
                manifest.save()  # what was written so far stays undoable by disconnect
                done = f"; written before it: {', '.join(map(str, written))}" if written else "; nothing was written"
                raise ConnectError(f"{path} cannot be written ({exc.strerror}){done}") from None
            _record_folders(entry, missing)
            written.append(path)
        entry["written"] = sha256(change.after)
    manifest.save()
    return written


def _missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet (a dangling link counts as existing: it
    is the user's), innermost first."""
    missing = []
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _record_folders(entry: dict[str, Any], missing: list[Path]) -> None:
    made = [str(f) for f in missing if f.is_dir() and not f.is_symlink()]
    entry["folders"] = list(dict.fromkeys([*entry.get("folders", []), *made]))


def _backup(path: Path, backups: Path) -> Path:
    backups.mkdir(parents=True, exist_ok=True)
    target = backups / (hashlib.sha256(str(path).encode()).hexdigest()[:16] + ".orig")
    target.write_bytes(path.read_bytes())
    os.chmod(target, 0o600)
    return target


def _write(change: Change) -> None:
    path = change.edit.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if change.edit.secret:
        write_private(path, change.after)
        return
    mode = change.edit.mode
    if mode is None and change.before is not None:
        mode = path.stat().st_mode & 0o7777
    path.write_text(change.after, encoding="utf-8")
    if mode is not None:
        os.chmod(path, mode)


def revert(edits: list[Edit], manifest: Manifest) -> list[tuple[Path, str]]:
    """Undo ``apply``: originals back byte for byte where untouched since, else only our entries
    removed. Returns (file, what happened)."""
    done = []
    for edit in edits:
        path = edit.path
        current = read_text(path)
        entry = manifest.files.get(str(path))
        if current is None:
            continue
        if entry and entry.get("written") == sha256(current):
            done.append((path, _restore(path, entry)))
            continue
        remaining = edit.remove(current)
        if remaining is None:
            path.unlink()
            done.append((path, "removed"))
        elif remaining != current:
            path.write_text(remaining, encoding="utf-8")
            done.append((path, "agentmemory entries removed (the file changed since connect)"))
    handled = {str(edit.path) for edit in edits}
    for key, entry in manifest.files.items():
        current = read_text(Path(key))
        if key not in handled and current is not None and entry.get("written") == sha256(current):
            done.append((Path(key), _restore(Path(key), entry)))
    for entry in manifest.files.values():
        if entry.get("backup"):
            Path(entry["backup"]).unlink(missing_ok=True)
            _remove_if_empty(Path(entry["backup"]).parent)  # this connect's own backups folder
    manifest.path.unlink(missing_ok=True)
    _remove_if_empty(manifest.path.parent)
    done.extend((folder, "folder removed (connect made it; now empty)") for folder in _remove_made_folders(manifest))
    return done


def _remove_made_folders(manifest: Manifest) -> list[Path]:
    """Remove the folders ``apply`` made that nothing is in now, deepest first; a folder that
    existed before connect is never among them, and one holding anything stays."""
    folders = {Path(f) for entry in manifest.files.values() for f in entry.get("folders", [])}
    return [f for f in sorted(folders, key=lambda f: len(f.parts), reverse=True) if _remove_if_empty(f)]


def _remove_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()  # refuses a folder with anything in it, atomically
    except OSError:  # not empty, already gone, or not ours to remove
        return False
    return True


def _restore(path: Path, entry: dict[str, Any]) -> str:
    if entry.get("created"):
        path.unlink()
        return "removed (connect created it)"
    original = Path(entry["backup"]).read_bytes()
    path.write_bytes(original)
    if entry.get("mode") is not None:
        os.chmod(path, entry["mode"])
    return "restored"
