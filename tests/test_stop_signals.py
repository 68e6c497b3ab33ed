"""Stop signals: a request process's handler may run again while it runs (a node's stop signals a
request process twice, the group's SIGTERM then gunicorn's) and must still let the process stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

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


def _voluntary_switches(native_id: int) -> int:
    """How often the thread ``native_id`` of this process gave up the CPU by itself (each sleep
    or blocking call that had to wait counts one)."""
    with open(f"/proc/self/task/{native_id}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("voluntary_ctxt_switches:"))
    return int(line.split()[1])


def _waiting_thread(flag):
    """A thread blocked in ``flag.wait(60)``; returns (thread, its native id, its answers)."""
    import threading

    answers, started = [], threading.Event()

    def waiter():
        answers.append(threading.get_native_id())
        started.set()
        answers.append(flag.wait(60))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert started.wait(30)
    return thread, answers[0], answers


def _asleep(native_id: int) -> bool:
    with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "S"


def test_a_stop_mark_waiter_sleeps_without_waking_until_a_signal_handler_sets_it():
    """A thread waiting on a stop mark (the supervisor's, the worker's, hf_sync's) used to wake
    every 50 ms to look at it: 20 wake-ups a second of every idle waiter. Now it sleeps in poll()
    on a pipe the signal handler writes one byte to: over a second of waiting it does not wake
    (its voluntary context switches stay put), and a SIGUSR1 whose handler sets the mark wakes
    it, the wait answering True."""
    import time

    from agentmemory_server.threads import SignalSafeFlag

    flag = SignalSafeFlag()
    thread, native_id, answers = _waiting_thread(flag)
    assert wait_for(lambda: _asleep(native_id), timeout=30)
    before = _voluntary_switches(native_id)
    time.sleep(1.0)  # a span to count wake-ups over, not a timed assertion
    woken = _voluntary_switches(native_id) - before
    assert woken <= 2, f"an idle waiter woke {woken} times in a second"
    previous = signal.signal(signal.SIGUSR1, lambda *_: flag.set())
    try:
        signal.raise_signal(signal.SIGUSR1)
        thread.join(30)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not thread.is_alive() and answers[1:] == [True], answers
    assert flag.is_set() and flag.wait(0)


def test_a_forked_child_s_stop_mark_is_its_own_and_its_idle_waiter_sleeps_too(tmp_path):
    """The mark's pipe is made by the first wait; a child forked afterwards (gunicorn forks its
    request processes from the arbiter) gets a pipe of its own: the parent's stop does not set
    the child's mark nor wake its waiter over and over, and the child's own stop still wakes it."""
    import os
    import time

    from agentmemory_server.threads import SignalSafeFlag

    flag = SignalSafeFlag()
    assert flag.wait(0.01) is False  # the pipe now exists, before the fork
    report = tmp_path / "child.json"
    to_child_read, to_child_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 1
        try:
            os.close(to_child_write)
            thread, native_id, answers = _waiting_thread(flag)
            assert os.read(to_child_read, 1) == b"s"  # the parent has set its mark
            assert wait_for(lambda: _asleep(native_id), timeout=30)
            before = _voluntary_switches(native_id)
            time.sleep(1.0)
            woken = _voluntary_switches(native_id) - before
            set_by_parent = flag.is_set()
            flag.set()
            thread.join(30)
            report.write_text(json.dumps({"woken": woken, "setByParent": set_by_parent, "answers": answers[1:]}))
            code = 0
        finally:
            os._exit(code)
    os.close(to_child_read)
    flag.set()
    os.write(to_child_write, b"s")
    os.close(to_child_write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    seen = json.loads(report.read_text())
    assert seen["setByParent"] is False and seen["answers"] == [True], seen
    assert seen["woken"] <= 2, f"the child's idle waiter woke {seen['woken']} times in a second"


def test_a_background_worker_that_does_not_stop_is_killed_by_its_request_process_within_gunicorns_grace(
        live_server):
    """A request process stopped its background worker only once its requests were done, and gave
    it 15 s after that (then 5 s more after SIGKILL): with a request in flight for a few seconds,
    a worker that did not stop took the request process past gunicorn's 20 s graceful timeout,
    and gunicorn SIGKILLed it before it had closed its runtime. Now the worker is asked to stop at
    the signal and killed, by the request process, within its share of the grace counted from the
    signal. Here the worker is SIGSTOPped (it cannot stop by itself) and a write waits 8 s for a
    write lock this test holds while the node is stopped."""
    import sqlite3
    import threading

    from agentmemory_server.kernel import background
    from conftest import post

    server = live_server(env={"AGENTMEMORY_LOCK_WAIT_SECONDS": "8"})
    worker = wait_for(lambda: requests.get(server.api("/health"), timeout=10).json()["background"]["workers"],
                      timeout=30, interval=0.2, message="the background worker never started")[0]["pid"]
    holder = sqlite3.connect(server.db_path, timeout=1, isolation_level=None)
    answers: list[int] = []
    try:
        _stop_outside_its_writes(worker, holder)  # from here it cannot act on a SIGTERM
        writer = threading.Thread(target=lambda: answers.append(
            post(server.api("/remember"), {"content": "the canary fleet rolls out at noon"}).status_code))
        writer.start()
        wait_for(lambda: background.busy(server.db_path, 0.0), timeout=30, message="the write never arrived")
        os.killpg(server.proc.pid, signal.SIGTERM)  # the node's stop (systemd, kill -TERM -<pgid>)
        writer.join(60)
        holder.rollback()
        code = server.proc.wait(timeout=60)
    finally:
        holder.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGCONT)
    log = server.log()
    assert answers == [503], (answers, log[-3000:])  # the write waited out its 8 s: it was in flight
    assert f"background worker {worker} did not stop within" in log and "killed it (SIGKILL)" in log, log[-3000:]
    # gunicorn let its request process exit by itself: it killed nothing (its log says so only when
    # it reaps the killed process in time; the WAL below says it either way)
    assert "was sent SIGKILL" not in log and "WORKER TIMEOUT" not in log, log[-3000:]
    assert code == 0 and not os.path.exists(f"/proc/{worker}/stat"), (code, log[-3000:])
    # and it closed its runtime: the WAL was checkpointed into the database file
    wal = server.db_path.with_name(server.db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, (wal.stat().st_size, log[-3000:])


def _stop_outside_its_writes(pid: int, holder) -> None:
    """SIGSTOP the worker ``pid``, then take the write lock on ``holder`` (as a `sqlite3` shell in
    a transaction holds it). A worker stopped inside one of its own write transactions would hold
    the lock until the end: let it run a moment and stop it again."""
    import sqlite3

    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        try:
            holder.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError:  # "database is locked": stopped while writing
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.1)
    raise AssertionError("the worker held the write lock each time it was stopped")


def test_a_background_worker_spawned_as_the_stop_signal_came_is_asked_to_stop_at_once(tmp_path):
    """The node's stop signal can come while the supervisor is spawning a worker: ``stopping()``
    (the signal handler's part, which takes no lock) finds no worker recorded yet and sends
    nothing. Before, that worker then ran on, unasked, until ``stop()`` once the requests were
    done, its share of the graceful timeout spent. Now the watcher, once it has recorded the
    worker, sees the stop and sends it SIGTERM itself. Here the signal is heard between the
    worker's start and its recording (the supervisor's own code otherwise, a real child process),
    and nobody calls ``stop()`` until the watcher has seen the worker exit."""
    from agentmemory_server.adapters.supervisor import Supervisor
    from agentmemory_server.kernel.settings import Settings

    class StopHeardWhileSpawning(Supervisor):
        def command(self) -> list[str]:  # a worker that ends only on a signal, and starts at once
            return [sys.executable, "-c", "import time; time.sleep(600)"]

        def _spawn(self):
            proc = super()._spawn()
            self.stopping()  # the stop signal, before the watcher has recorded this worker
            return proc

    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), background_jobs=False, auth="off")
    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    supervisor = StopHeardWhileSpawning(settings).start()
    try:
        supervisor._thread.join(30)  # a bound only: it ends as soon as the worker has exited
        assert not supervisor._thread.is_alive(), "the worker spawned as the stop came was left running"
        assert supervisor.last_exit["code"] == -signal.SIGTERM, supervisor.last_exit  # asked, not killed
        assert supervisor.starts == 1 and supervisor.proc.poll() is not None
    finally:
        supervisor.stop(within=5)
