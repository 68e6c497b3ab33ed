"""The backup sidecar's configuration: its errors, the environment variables it reads (README's
backup table is generated from them) and the resolved ``Config``. Part of ``hf_sync``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows; locks become no-ops there
    fcntl = None  # type: ignore[assignment]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_REFUSED = 0, 1, 2, 3
log = logging.getLogger("agentmemory.sync")

# -- configuration -------------------------------------------------------------------------------


class SyncError(Exception):
    """A backup or restore failed; the message says why. Nothing local was changed."""

    exit_code = EXIT_FAILED


class ConfigError(SyncError):
    exit_code = EXIT_CONFIG


class Refused(SyncError):
    """Going on would overwrite data that may be newer; ``--force`` overrides."""

    exit_code = EXIT_REFUSED


def _repo_id(text: str) -> str:
    if text.count("/") != 1 or not all(text.split("/")):
        raise ValueError(f"must look like 'owner/name', got {text!r}")
    return text


def _at_least(minimum: float, kind: type = float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)  # ValueError names the bad text
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {text!r}")
        return value

    return parse


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"expected true/false, got {text!r}")
    return lowered in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class SyncSetting:
    field: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str


# Every environment variable sync.py reads besides the database location (which it resolves as
# the server does). Config is built from this table and README's backup table is generated from it.
SYNC_SETTINGS: tuple[SyncSetting, ...] = (
    SyncSetting(
        "repo",
        "AGENTMEMORY_DATASET_REPO",
        None,
        _repo_id,
        "Dataset repo `owner/name` for backups; unset disables restore and backup.",
    ),
    SyncSetting("token", "HF_TOKEN", None, str, "HuggingFace token with write access to the dataset."),
    SyncSetting(
        "endpoint",
        "HF_ENDPOINT",
        "https://huggingface.co",
        lambda t: t.rstrip("/"),
        "Hub URL (tests point it at a fake Hub).",
    ),
    SyncSetting(
        "interval", "AGENTMEMORY_BACKUP_INTERVAL", 60.0, _at_least(0.05), "Seconds between backups in `sync.py loop`."
    ),
    SyncSetting(
        "keep",
        "AGENTMEMORY_BACKUP_KEEP",
        5,
        _at_least(0, int),
        "Timestamped snapshots kept under `backups/` (the newest equals `agentmemory.db`); 0 keeps none.",
    ),
    SyncSetting(
        "private", "AGENTMEMORY_DATASET_PRIVATE", True, _bool, "Create the dataset as private when it is missing."
    ),
    SyncSetting(
        "timeout",
        "AGENTMEMORY_HUB_TIMEOUT",
        30.0,
        _at_least(0.1),
        "Seconds before one Hub request times out (connect: at most 10).",
    ),
    SyncSetting(
        "retries",
        "AGENTMEMORY_HUB_RETRIES",
        2,
        _at_least(0, int),
        "Retries of a failed Hub request (huggingface_hub's default of 5 takes ~23 s).",
    ),
    SyncSetting(
        "reserve_mb",
        "AGENTMEMORY_DISK_RESERVE_MB",
        16,
        _at_least(0, int),
        "A backup's snapshot is skipped (an error, nothing written) when it would leave less than this many "
        "MB free next to the database (the server's write reserve too).",
    ),
    SyncSetting(
        "restore_attempts",
        "AGENTMEMORY_RESTORE_ATTEMPTS",
        3,
        _at_least(1, int),
        "Restore attempts at boot (`restore --boot`).",
    ),
    SyncSetting(
        "restore_retry_delay",
        "AGENTMEMORY_RESTORE_RETRY_DELAY",
        5.0,
        _at_least(0),
        "Seconds between restore attempts at boot.",
    ),
    SyncSetting(
        "restore_required",
        "AGENTMEMORY_RESTORE_REQUIRED",
        True,
        _bool,
        "At boot, refuse to start on an empty database when the restore failed.",
    ),
)


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    # Hook and Space configs often carry unexpanded "${VAR}" placeholders; treat them as unset.
    return None if not value or (value.startswith("${") and value.endswith("}")) else value


def db_path_from_env(env: Mapping[str, str]) -> Path:
    """The database file, resolved exactly as the server's settings do."""
    explicit = _optional(env, "AGENTMEMORY_DB")
    if explicit:
        return Path(explicit).expanduser()
    return Path(_optional(env, "AGENTMEMORY_DATA_DIR") or "~/.agentmemory").expanduser() / "agentmemory.db"


@dataclass(frozen=True)
class Config:
    db_path: Path
    repo: str | None = None
    token: str | None = None
    endpoint: str = "https://huggingface.co"
    interval: float = 60.0
    keep: int = 5
    private: bool = True
    timeout: float = 30.0
    retries: int = 2
    reserve_mb: int = 16
    restore_attempts: int = 3
    restore_retry_delay: float = 5.0
    restore_required: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read SYNC_SETTINGS from ``env`` (default ``os.environ``); overrides use field names.

        :raise ConfigError: a value cannot be parsed; the message names the variable.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {"db_path": db_path_from_env(env)}
        for setting in SYNC_SETTINGS:
            raw = _optional(env, setting.env)
            try:
                values[setting.field] = setting.default if raw is None else setting.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{setting.env}: {exc}") from None
        return cls(**{**values, **overrides})

    def require_repo(self) -> str:
        if not self.repo:
            raise ConfigError(
                "AGENTMEMORY_DATASET_REPO is not set: there is no HuggingFace dataset to back up to or restore from "
                "(for a snapshot on this disk: `agentmemory backup --local`, `agentmemory restore --from-backup`)"
            )
        return self.repo
