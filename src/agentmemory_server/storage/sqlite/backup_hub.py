"""The dataset on the HuggingFace Hub that sync.py backs up to: one client (``Hub``) with the few
calls a backup and a restore make, each bounded in time and retries, each failure turned into
one ``SyncError`` line naming what was being done; and the image store's side of a backup (the
uploads and deletions that mirror it, the downloads that complete it after a restore).

huggingface_hub is imported inside the functions: the server imports the backup modules for its
status without paying for the library."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentmemory_server.storage.sqlite.backup_config import Config, SyncError
from agentmemory_server.storage.sqlite.backup_files import (
    IMAGES_PREFIX,
    image_ids,
    image_path,
    remote_image_name,
    sha256_file,
)

META = "backup-meta.json"
log = logging.getLogger("agentmemory.sync")

_configured_for: tuple[float, int] | None = None


def configure_hub(cfg: Config) -> None:
    """Bound huggingface_hub's network behaviour. By default it retries a failed request 5 times
    with back-off (about 23 s when the Hub is down) and has no request timeout at all; the
    library has no setting for either, so the retry count is set on its backoff helpers'
    keyword defaults and the timeout on its shared HTTP client."""
    import httpx2
    from huggingface_hub.utils import http_backoff, http_stream_backoff, set_client_factory

    global _configured_for
    if _configured_for == (cfg.timeout, cfg.retries):
        return
    for fn in (http_backoff, getattr(http_stream_backoff, "__wrapped__", None)):
        defaults = getattr(fn, "__kwdefaults__", None) if fn is not None else None
        if defaults and "max_retries" in defaults:
            fn.__kwdefaults__ = {  # type: ignore[union-attr]
                **defaults,
                "max_retries": cfg.retries,
                "base_wait_time": min(1.0, cfg.timeout),
                "max_wait_time": 4.0,
            }
    timeout = httpx2.Timeout(cfg.timeout, connect=min(cfg.timeout, 10.0))

    def client_factory() -> Any:
        try:
            from huggingface_hub.utils._http import default_client_factory

            client = default_client_factory()
        except ImportError:  # the library moved it: a plain client still works
            client = httpx2.Client(follow_redirects=True)
        client.timeout = timeout
        return client

    set_client_factory(client_factory)
    _configured_for = (cfg.timeout, cfg.retries)


def describe_hub_error(exc: BaseException, cfg: Config) -> str:
    """One clear line for a failed Hub call (huggingface_hub's errors are httpx2 errors, which
    are not OSErrors, wrapped in its own types)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, (httpx2.TransportError, OfflineModeIsEnabled)):
            return f"the Hub at {cfg.endpoint} is unreachable ({type(err).__name__}: {err})"
    if isinstance(exc, RepositoryNotFoundError):
        return f"dataset {cfg.repo} not found, or HF_TOKEN cannot access it"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = exc.server_message or str(exc).splitlines()[0]
        hint = " (check HF_TOKEN: it needs write access to the dataset)" if status in (401, 403) else ""
        return f"the Hub answered HTTP {status}: {detail}{hint}"
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def hub_errors(cfg: Config, doing: str) -> Iterator[None]:
    """Turn any failure of a Hub call into a SyncError naming what was being done."""
    try:
        yield
    except SyncError:
        raise
    except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one clear message
        log.debug("%s failed", doing, exc_info=True)
        raise SyncError(f"{doing}: {describe_hub_error(exc, cfg)}") from exc


class Hub:
    """The few Hub operations sync needs, on one dataset repo."""

    def __init__(self, cfg: Config):
        from huggingface_hub import HfApi

        configure_hub(cfg)
        self.cfg = cfg
        self.repo = cfg.require_repo()
        self.api = HfApi(endpoint=cfg.endpoint, token=cfg.token)

    def head(self, *, create: bool) -> tuple[str | None, set[str]]:
        """(head commit, file names) of the dataset; (None, empty) when it does not exist and
        ``create`` is false. This first request is never retried, so a Hub that is down fails
        at once."""
        from huggingface_hub.errors import RepositoryNotFoundError

        with hub_errors(self.cfg, f"reading dataset {self.repo}"):
            try:
                info = self.api.dataset_info(self.repo, timeout=self.cfg.timeout)
            except RepositoryNotFoundError:
                if not create:
                    return None, set()
                self.api.create_repo(self.repo, repo_type="dataset", private=self.cfg.private, exist_ok=True)
                log.info("created %s dataset %s", "private" if self.cfg.private else "public", self.repo)
                info = self.api.dataset_info(self.repo, timeout=self.cfg.timeout)
        return info.sha, {s.rfilename for s in info.siblings or []}

    def download(self, name: str, revision: str, into: Path) -> Path:
        from huggingface_hub import hf_hub_download

        with hub_errors(self.cfg, f"downloading {name} from {self.repo}"):
            return Path(
                hf_hub_download(
                    self.repo,
                    name,
                    repo_type="dataset",
                    revision=revision,
                    local_dir=into,
                    token=self.cfg.token,
                    endpoint=self.cfg.endpoint,
                )
            )

    def meta(self, revision: str, files: set[str], scratch: Path) -> dict[str, Any] | None:
        if META not in files:
            return None
        path = self.download(META, revision, scratch)
        try:
            meta = json.loads(path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
                raise ValueError("no id")
        except ValueError as exc:
            raise SyncError(f"{META} in {self.repo} is unreadable ({exc}); fix or delete it") from None
        return meta

    def commit(self, operations: list[Any], message: str, parent: str | None) -> str:
        with hub_errors(self.cfg, f"uploading to {self.repo}"):
            info = self.api.create_commit(
                self.repo, operations=operations, commit_message=message, repo_type="dataset", parent_commit=parent
            )
        return info.oid


def image_operations(db: Path, wanted: set[str], files: set[str]) -> tuple[list, dict[str, int]]:
    """Uploads of the wanted images the dataset lacks, deletions of those it no longer needs."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    remote = {name.rsplit("/", 1)[-1]: name for name in files if name.startswith(IMAGES_PREFIX)}
    ops: list[Any] = []
    missing_locally = 0
    for image_id in sorted(wanted - set(remote)):
        local = image_path(db, image_id)
        if not local.is_file():
            missing_locally += 1  # evicted or deleted since the snapshot: the next backup settles it
            continue
        ops.append(CommitOperationAdd(path_in_repo=remote_image_name(image_id), path_or_fileobj=str(local)))
    stale = sorted(name for image_id, name in remote.items() if image_id not in wanted)
    ops += [CommitOperationDelete(path_in_repo=name) for name in stale]
    counts = {"images": len(wanted), "uploaded": len(ops) - len(stale), "deleted": len(stale)}
    counts["missingLocally"] = missing_locally
    return ops, counts


def fetch_images(hub: Hub, revision: str, files: set[str], db: Path, scratch: Path) -> dict[str, int]:
    """Download the images the (restored) database knows and the local store lacks."""
    fetched = missing = 0
    for image_id in sorted(image_ids(db)):
        target = image_path(db, image_id)
        if target.is_file():
            continue
        name = remote_image_name(image_id)
        if name not in files:
            missing += 1
            continue
        path = hub.download(name, revision, scratch)
        if sha256_file(path) != image_id:
            raise SyncError(f"downloaded {name} does not match its sha256 name; not installed")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        fetched += 1
    if missing:
        log.warning("%d image(s) the database knows are not in the dataset (their records keep the reference)", missing)
    return {"fetched": fetched, "missing": missing}
