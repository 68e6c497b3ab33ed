"""A loopback fake of the HuggingFace Hub, speaking the wire protocol huggingface_hub 2.x uses
for dataset repos: create, repo info, tree listing, preupload, LFS batch + PUT, NDJSON commit
(add, LFS add, delete, with ``parentCommit`` checked) and resolve (HEAD/GET) with the headers
the client needs. Point ``HF_ENDPOINT`` at ``hub.url`` and set ``HF_HUB_DISABLE_XET=1``.

Only dataset repos are modelled. Every commit keeps a full snapshot of the tree, so files can be
resolved at any revision. ``fail(method, fragment, status)`` injects error replies and
``unhandled`` records requests the fake does not know, so a test notices a protocol change.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class _HubServer(ThreadingHTTPServer):
    allow_reuse_address = True  # restart on the same port right after stop() (the Hub comes back)
    daemon_threads = True


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Blob:
    content: bytes
    lfs: bool

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.content).hexdigest() if self.lfs else git_blob_oid(self.content)


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        return next((c for c in self.commits if c.oid == revision), None)


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra


class FakeHub:
    """:param token: the only bearer token accepted. :param lfs_suffixes: paths uploaded via LFS."""

    def __init__(self, token: str = "hf_fake_token", lfs_suffixes: tuple[str, ...] = (".db",)):
        self.token = token
        self.lfs_suffixes = lfs_suffixes
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._faults: list[dict[str, Any]] = []
        self._holds: list[tuple[str, str, threading.Event]] = []
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: _HubServer | None = None
        self.port = 0

    # ---- lifecycle
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = _HubServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port (the Hub is "down"); ``start()`` brings it back on the same port."""
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- test helpers
    def fail(self, method: str, fragment: str, status: int, times: int = 1, *, after: bool = False) -> None:
        """Answer the next ``times`` requests whose path contains ``fragment`` with ``status``;
        with ``after`` the request is carried out first (a reply lost on the way back)."""
        self._faults.append({"method": method, "fragment": fragment, "status": status, "times": times,
                             "after": after})

    def hold(self, method: str, fragment: str) -> threading.Event:
        """Keep every request whose path contains ``fragment`` waiting, unanswered, until
        ``release()`` (a client stuck there can be killed at a known point). Returns an event
        set when the first such request arrives."""
        arrived = threading.Event()
        with self._lock:
            self._released.clear()
            self._holds.append((method, fragment, arrived))
        return arrived

    def release(self) -> None:
        with self._lock:
            self._holds.clear()
            self._released.set()

    def _wait_if_held(self, method: str, path: str) -> None:
        with self._lock:
            held = [arrived for m, fragment, arrived in self._holds if m == method and fragment in path]
        for arrived in held:
            arrived.set()
        if held:
            self._released.wait(timeout=120)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].at(revision)
        return {path: blob.content for path, blob in commit.files.items()} if commit else {}

    def commit_count(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits) if repo_id in self.repos else 0

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p in self.requests if m == method and fragment in p)

    def _take_fault(self, method: str, path: str) -> dict[str, Any] | None:
        with self._lock:
            for fault in self._faults:
                if fault["method"] == method and fault["fragment"] in path and fault["times"] > 0:
                    fault["times"] -= 1
                    return fault
        return None

    # ---- repository operations
    def create(self, repo_id: str, private: bool) -> Repo:
        with self._lock:
            if repo_id in self.repos:
                # The real Hub names the existing repo; create_repo(exist_ok=True) reads "url".
                raise HubError(409, "You already created this dataset repo",
                               url=f"{self.url}/datasets/{repo_id}")
            repo = Repo(repo_id, private)
            attributes = Blob(b"*.db filter=lfs diff=lfs merge=lfs -text\n", lfs=False)
            repo.commits.append(Commit(uuid.uuid4().hex + "00000000", "initial commit",
                                       {".gitattributes": attributes}))
            self.repos[repo_id] = repo
            return repo

    def repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def commit(self, repo: Repo, lines: list[dict[str, Any]]) -> Commit:
        header = lines[0]
        if header.get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the header")
        with self._lock:
            parent = header["value"].get("parentCommit")
            if parent is not None and parent != repo.head.oid:
                raise HubError(412, f"parent commit {parent} is not the head of main")
            files = dict(repo.head.files)
            for line in lines[1:]:
                self._apply(repo, files, line["key"], line["value"])
            commit = Commit(uuid.uuid4().hex + "00000000", header["value"].get("summary", ""), files)
            repo.commits.append(commit)
            return commit

    def _apply(self, repo: Repo, files: dict[str, Blob], key: str, value: dict[str, Any]) -> None:
        path = value["path"]
        if key == "file":
            files[path] = Blob(base64.b64decode(value["content"]), lfs=False)
        elif key == "lfsFile":
            content = repo.lfs_objects.get(value["oid"])
            if content is None:
                raise HubError(400, f"LFS object {value['oid']} was never uploaded")
            files[path] = Blob(content, lfs=True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"cannot delete {path}: no such file", "EntryNotFound")
        elif key == "deletedFolder":
            for name in [n for n in files if n.startswith(path.rstrip("/") + "/")]:
                del files[name]
        else:
            raise HubError(400, f"unknown commit operation {key!r}")


class _Discard:
    """Swallows a reply (see ``FakeHub.fail(after=True)``)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    # ---- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: Any = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        content_type = "application/octet-stream" if isinstance(body, bytes) else "application/json"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, exc: HubError, head: bool = False) -> None:
        headers = {"X-Error-Message": exc.message}
        if exc.error_code:
            headers["X-Error-Code"] = exc.error_code
        self._send(exc.status, {"error": exc.message, **exc.extra}, headers, head=head)

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.fake.token}"

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.fake.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT") else b""
        self.fake._wait_if_held(method, path)
        fault = self.fake._take_fault(method, path)
        if fault is not None and not fault["after"]:
            self._send(fault["status"], {"error": f"injected {fault['status']}"})
            return
        if fault is not None:  # do the work, then lose the reply
            self.wfile, real = _Discard(), self.wfile
        try:
            if not self._route(method, path, query, body):
                self.fake.unhandled.append((method, self.path))
                self._send(404, {"error": f"fake hub: no route {method} {path}"})
        except HubError as exc:
            self._error(exc, head=method == "HEAD")
        if fault is not None:
            self.wfile = real
            self._send(fault["status"], {"error": f"injected {fault['status']} after the work was done"})

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    # ---- routes
    def _route(self, method: str, path: str, query: dict, body: bytes) -> bool:
        parts = path.strip("/").split("/")
        if path == "/api/agent-harnesses":
            self._send(200, {"standardEnvVars": [], "harnesses": {}})
            return True
        if parts[0] == "_lfs" and method == "PUT":
            self._lfs_put("/".join(parts[1:-1]), parts[-1], body)
            return True
        if method == "POST" and path == "/api/repos/create":
            self._create(json.loads(body or b"{}"))
            return True
        if parts[0] == "datasets" and len(parts) >= 3 and parts[2].endswith(".git"):
            repo_id = f"{parts[1]}/{parts[2][:-4]}"
            if method == "POST" and parts[3:] == ["info", "lfs", "objects", "batch"]:
                self._lfs_batch(repo_id, json.loads(body))
                return True
        if parts[0] == "datasets" and len(parts) >= 5 and parts[3] == "resolve" and method in ("GET", "HEAD"):
            self._resolve(f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), head=method == "HEAD")
            return True
        if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
            return self._api(method, f"{parts[2]}/{parts[3]}", parts[4:], query, body)
        return False

    def _api(self, method: str, repo_id: str, rest: list[str], query: dict, body: bytes) -> bool:
        if not self._authorised():
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.fake.repo(repo_id)
        if method == "GET" and (not rest or rest[0] == "revision"):
            self._info(repo, rest[1] if len(rest) > 1 else "main")
        elif method == "GET" and rest[0] == "tree":
            self._tree(repo, rest[1], "/".join(rest[2:]))
        elif method == "POST" and rest[0] == "preupload":
            files = json.loads(body)["files"]
            self._send(200, {"files": [
                {"path": f["path"], "shouldIgnore": False,
                 "uploadMode": "lfs" if f["path"].endswith(self.fake.lfs_suffixes) and f["size"] else "regular"}
                for f in files]})
        elif method == "POST" and rest[0] == "commit":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            commit = self.fake.commit(repo, lines)
            self._send(200, {"success": True, "commitOid": commit.oid,
                             "commitUrl": f"{self.fake.url}/datasets/{repo_id}/commit/{commit.oid}"})
        else:
            return False
        return True

    def _create(self, payload: dict[str, Any]) -> None:
        if not self._authorised():
            raise HubError(401, "Invalid credentials in Authorization header")
        if payload.get("type") != "dataset":
            raise HubError(400, "the fake hub only models dataset repos")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        self.fake.create(repo_id, private)
        self._send(200, {"url": f"{self.fake.url}/datasets/{repo_id}", "name": repo_id})

    def _info(self, repo: Repo, revision: str) -> None:
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        siblings = [{"rfilename": p, "size": len(b.content), "blobId": git_blob_oid(b.content)}
                    for p, b in sorted(commit.files.items())]
        self._send(200, {"id": repo.repo_id, "_id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                         "sha": commit.oid, "private": repo.private, "gated": False, "disabled": False,
                         "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                         "lastModified": "2026-11-22T00:00:00.000Z", "createdAt": "2026-11-22T00:00:00.000Z"})

    def _tree(self, repo: Repo, revision: str, prefix: str) -> None:
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        entries, folders = [], set()
        for name, blob in sorted(commit.files.items()):
            if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                continue
            parts = name.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry: dict[str, Any] = {"type": "file", "oid": git_blob_oid(blob.content),
                                     "size": len(blob.content), "path": name}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.etag, "size": len(blob.content), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d}
                    for d in sorted(folders) if not prefix or d.startswith(prefix.rstrip("/") + "/")]
        self._send(200, entries)

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        if not self._authorised():
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.fake.repo(repo_id)
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        blob = commit.files.get(name)
        if blob is None:
            raise HubError(404, f"Entry not found: {name}", "EntryNotFound")
        headers = {"ETag": f'"{blob.etag}"', "X-Repo-Commit": commit.oid}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.etag}"', "X-Linked-Size": str(len(blob.content))})
        self._send(200, blob.content, headers, head=head)

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
        if not self._authorised():
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.fake.repo(repo_id)
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in repo.lfs_objects:
                item["actions"] = {"upload": {"href": f"{self.fake.url}/_lfs/{repo_id}/{obj['oid']}"}}
            objects.append(item)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, repo_id: str, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its sha256 oid")
        self.fake.repo(repo_id).lfs_objects[oid] = body
        self._send(200, {})
