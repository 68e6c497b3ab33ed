"""By default the server runs one request process per core (capped), so a second core serves
requests too; AGENTMEMORY_WORKERS still chooses the number."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agentmemory_server.kernel.settings import MAX_AUTO_WORKERS, Settings, SettingsError
from conftest import hook


def _children(pid: int) -> list[str]:
    """Command lines of the direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return found


def _request_processes(server_pid: int, want: int) -> list[str]:
    """gunicorn's workers under the server (not the background worker), once ``want`` are up."""
    deadline = time.monotonic() + 20
    while True:
        workers = [c for c in _children(server_pid) if " worker --parent-pid " not in c]
        if len(workers) >= want or time.monotonic() > deadline:
            return workers
        time.sleep(0.2)


def test_zero_means_one_process_per_core_capped():
    cores = os.cpu_count() or 1
    assert Settings.from_env({"AGENTMEMORY_WORKERS": "0"}).worker_processes == min(cores, MAX_AUTO_WORKERS)
    assert Settings.from_env({}).worker_processes == min(cores, MAX_AUTO_WORKERS)
    assert Settings.from_env({"AGENTMEMORY_WORKERS": "3"}).worker_processes == 3
    with pytest.raises(SettingsError, match="AGENTMEMORY_WORKERS"):
        Settings.from_env({"AGENTMEMORY_WORKERS": "-1"})


def test_the_default_server_runs_a_request_process_per_core_and_they_share_one_store(live_server):
    expected = min(os.cpu_count() or 1, MAX_AUTO_WORKERS)
    server = live_server(env={"AGENTMEMORY_WORKERS": "0", "AGENTMEMORY_THREADS": "8"})
    assert server.proc is not None
    workers = _request_processes(server.proc.pid, expected)
    assert len(workers) == expected, workers
    # Whatever process takes a write, every process finds it at once.
    ids = []
    with server.pinned_sessions(expected) as sessions:
        for i in range(8):
            writer, reader = sessions[i % expected], sessions[(i + 1) % expected]
            wrote = writer.post(server.api("/observe"), json=hook(f"d{i}", data={"prompt": f"the okapi task {i}"}),
                                timeout=30)
            assert wrote.status_code == 201, wrote.text
            ids.append(wrote.json()["observationId"])
            found = reader.post(server.api("/search"), json={"query": f"okapi task {i}", "limit": 20},
                                timeout=30).json()["results"]
            assert ids[-1] in {r["observation"]["id"] for r in found}
