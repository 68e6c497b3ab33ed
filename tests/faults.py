"""Fault injection on this machine, for real: small tmpfs and loop-mounted ext4 filesystems, a
disk filled to the byte, a filesystem forced read-only, damaged database pages.

Mounting needs root (CI runs as root on the same kind of machine). A test that needs it fails
with a clear message when it is not root; it never skips. Every mount is undone when the test
ends, also when it fails: the context managers unmount in ``finally`` (lazily, if a process the
test could not stop still holds a file there).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MB = 1024 * 1024


def require_root(what: str) -> None:
    __tracebackhide__ = True
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (it mounts a filesystem); run the suite as root, as CI does")


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")


def _unmount(path: Path) -> None:
    if not os.path.ismount(path):
        return
    result = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:  # something still holds a file there: detach now, freed when it closes
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MB mounted at ``path`` for the duration of the block."""
    require_root("a tmpfs test")
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def ext4(path: Path, size_mb: int) -> Iterator[Path]:
    """A loop-mounted ext4 of ``size_mb`` MB at ``path`` with errors=remount-ro, so an error
    (``force_read_only``) turns it read-only the way a failing disk does."""
    require_root("a loop-mounted filesystem test")
    image = path.with_name(path.name + ".img")
    path.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size_mb * MB)
    try:
        _run("mkfs.ext4", "-q", "-F", str(image))
        _run("mount", "-o", "loop,errors=remount-ro", str(image), str(path))
        try:
            yield path
        finally:
            _unmount(path)  # a loop device set up by mount is released with the mount
    finally:
        image.unlink(missing_ok=True)


def remount_after_repair(path: Path) -> None:
    """What an operator does after the disk error: unmount, fsck, mount read-write again."""
    image = path.with_name(path.name + ".img")
    _unmount(path)
    result = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: errors corrected
    _run("mount", "-o", "loop,errors=remount-ro", str(image), str(path))


def loop_device(path: Path) -> str:
    """The block device name (``loop3``) a mount point sits on."""
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount_point, *_ = line.split()
        if mount_point == str(path.resolve()):
            return Path(device).name
    raise AssertionError(f"{path} is not mounted")


def force_read_only(path: Path) -> None:
    """Make ext4 at ``path`` report an error, as it does when the disk fails: with
    errors=remount-ro the kernel turns the filesystem read-only at once, open files included."""
    (Path("/sys/fs/ext4") / loop_device(path) / "trigger_fs_error").write_text("agentmemory fault test\n")
    # Recent kernels mark it "emergency_ro" in /proc/mounts while statvfs still says rw.
    try:
        os.close(os.open(path / ".probe", os.O_WRONLY | os.O_CREAT))
    except OSError as exc:
        assert exc.errno == errno.EROFS, exc
    else:
        raise AssertionError(f"{path} did not turn read-only")


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave_bytes: int = 0, name: str = "filler") -> Path:
    """Write a filler file on the filesystem of ``path`` until only ``leave_bytes`` are free
    (0: write until the kernel says ENOSPC). Returns the filler; delete it to give space back."""
    filler = path / name
    chunk = b"\0" * MB
    with open(filler, "ab", buffering=0) as handle:
        while True:
            room = free_bytes(path) - leave_bytes
            if room <= 0:
                break
            try:
                handle.write(chunk[: min(len(chunk), room)])
            except OSError:  # ENOSPC: full to the last block
                break
    return filler


def damage_index_page(db: Path, index: str) -> int:
    """Overwrite the root page of ``index`` with garbage (a bit-rotted sector): the tables still
    read, PRAGMA quick_check reports the damage. Returns the page number."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        row = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no index {index} in {db}"
    with open(db, "r+b") as handle:
        handle.seek((row[0] - 1) * page_size)
        handle.write(bytes([0x0D]) + b"\xa5" * (page_size - 1))  # a leaf-table page type in an index's place
        handle.flush()
        os.fsync(handle.fileno())
    return row[0]
