"""Stop signals: a request process's handler may run again while it runs (a node's stop signals a
request process twice, the group's SIGTERM then gunicorn's) and must still let the process stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import requests

from conftest import clean_environ, group_members, report_stuck, wait_for

# A request process's runtime and its standby supervisor (another process of the node holds the
# spawn lock: here, this script), gunicorn's stop hook installed as in post_worker_init, then one
# SIGTERM whose handling is interrupted by a second SIGTERM at every line it runs, down into the
# supervisor and the hub. Before, the second handler waited for the lock of an Event the first
# one was setting: the process hung until gunicorn's graceful timeout SIGKILLed it.
_NESTED_SIGTERMS = r"""
import json, signal, sys, types
from pathlib import Path

from agentmemory_server.adapters import server
from agentmemory_server.adapters.supervisor import Supervisor
from agentmemory_server.adapters.web import create_app
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.storage.file_locks import try_lock
from agentmemory_server.wiring import build_runtime

settings = Settings.from_env({"AGENTMEMORY_AUTH": "off"}, data_dir=sys.argv[1], background_jobs=False)
rt = build_runtime(settings)
Path(settings.database_path).parent.mkdir(parents=True, exist_ok=True)
held = try_lock(Path(f"{settings.database_path}.supervisor.lock"))
rt.supervisor = Supervisor(settings).start()
exits = []
signal.signal(signal.SIGTERM, lambda signum, frame: exits.append(signum))  # gunicorn's handle_exit
server._hook_stop_signals(types.SimpleNamespace(wsgi=create_app(runtime=rt)))
on_stop = signal.getsignal(signal.SIGTERM)

def second_signal_at_every_line(frame, event, arg):
    if event == "line":
        signal.raise_signal(signal.SIGTERM)  # its handler runs here, untraced (tracing is off in a tracer)
    return second_signal_at_every_line

def first_signal(signum, frame):
    signal.signal(signal.SIGTERM, on_stop)
    sys.settrace(second_signal_at_every_line)
    try:
        on_stop(signum, frame)
    finally:
        sys.settrace(None)

signal.signal(signal.SIGTERM, first_signal)
signal.raise_signal(signal.SIGTERM)
rt.supervisor.stop()
print(json.dumps({"exits": len(exits), "hubStopping": rt.hub.stopping.is_set(), "starts": rt.supervisor.status()["starts"]}))
rt.close()
"""


def test_a_second_sigterm_during_the_first_ones_handling_does_not_hang_a_request_process(tmp_path):
    try:
        done = subprocess.run([sys.executable, "-c", _NESTED_SIGTERMS, str(tmp_path / "data")],
                              env=clean_environ(), capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:  # only a guard against the hang this test is about
        pytest.fail(f"the request process hung in its stop handler; its output:\n{exc.stderr!r}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Every SIGTERM reached gunicorn's own handler; the viewers were told to close; and the standby
    # supervisor, which heard the stop, spawned no background worker.
    assert result["exits"] > 10 and result["hubStopping"] is True and result["starts"] == 0, result


def test_a_node_that_does_not_stop_is_named_with_each_processs_stacks_and_the_dump_stops_nothing(live_server):
    # What the fixtures print before they SIGKILL a server still running 20 s after SIGTERM: here
    # asked of a node that runs (the arbiter, two request processes, the background worker).
    server = live_server(env={"AGENTMEMORY_WORKERS": "2"})
    # Each registers the dump signal as it starts; the background worker is the last to start.
    wait_for(lambda: len(group_members(server.proc.pid)) == 4 and "background worker" in server.log()
             and " running on " in server.log(), timeout=30,
             message="the node did not start its two request processes and its background worker")
    pids = sorted(group_members(server.proc.pid))
    report = report_stuck(server.proc.pid, signal.SIGTERM, 20)
    sections = {int(part.split(" ", 1)[0]): part for part in report.split("\n-- ")[1:]}
    assert sorted(sections) == pids, report[:3000]
    # The arbiter waits for signals, each request process has its supervisor, the worker its loop.
    found = sorted(next((where for where in ("in run_worker", "in _watch", "in wait_for_signals") if where in part),
                        "?") for part in sections.values())
    assert found == ["in _watch", "in _watch", "in run_worker", "in wait_for_signals"], report[-6000:]
    assert all("(most recent call first)" in part for part in sections.values())
    assert "src/app.py" in report and "agentmemory_server.adapters.cli" in report
    assert requests.get(server.api("/livez"), timeout=10).status_code == 200  # each goes on
    assert sorted(group_members(server.proc.pid)) == pids
