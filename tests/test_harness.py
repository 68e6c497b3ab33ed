"""The test helpers themselves: wait_for, and that a server which fails to start (it exits, or
never answers) is killed before the test fails, leaving no process behind."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import LiveServer, RedisServer, end_process_group, free_port, group_members, kill_orphans, wait_for

Failed = pytest.fail.Exception


def test_wait_for_returns_the_first_truthy_value():
    seen = []

    def third_time() -> list | None:
        seen.append(len(seen))
        return ["ready"] if len(seen) == 3 else None

    assert wait_for(third_time, timeout=5, interval=0) == ["ready"]
    assert seen == [0, 1, 2]


def test_wait_for_fails_with_the_message_and_the_last_value():
    calls = []
    started = time.monotonic()
    with pytest.raises(Failed) as err:
        wait_for(lambda: calls.append(1) or 0, timeout=0.3, interval=0.01, message=lambda: "the count never moved")
    assert 0.3 <= time.monotonic() - started < 5
    assert "the count never moved" in str(err.value) and "not reached within 0.3s" in str(err.value)
    assert "last value: 0" in str(err.value) and len(calls) >= 2  # it polled, and checked once more at the end


def test_wait_for_counts_only_the_listed_exceptions_as_not_yet():
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not listening yet")
        return "up"

    assert wait_for(flaky, timeout=5, interval=0, ignore=(ConnectionError,)) == "up"
    with pytest.raises(Failed) as err:
        wait_for(lambda: int("x"), timeout=0.2, interval=0, ignore=(ValueError,), message="never a number")
    assert "ValueError" in str(err.value)  # the last exception is the last value shown
    with pytest.raises(KeyError):  # anything not listed is a real error and propagates at once
        wait_for(lambda: {}["missing"], timeout=5, ignore=(ValueError,))


def test_wait_for_gives_up_at_once_when_the_process_exits():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        started = time.monotonic()
        with pytest.raises(Failed) as err:
            wait_for(lambda: False, timeout=60, proc=proc, message="waiting for a dead process")
        assert time.monotonic() - started < 30
        assert "the process exited with code 3" in str(err.value)
    finally:
        proc.kill()
        proc.wait()


def test_a_server_that_exits_during_start_up_leaves_no_process(tmp_path):
    server = LiveServer(tmp_path, {"AGENTMEMORY_THREADS": "lots"}, [], start=False)
    with pytest.raises(Failed) as err:
        server.start()
    assert "the process exited with code 1" in str(err.value)
    assert "AGENTMEMORY_THREADS" in str(err.value)  # the server's own log says why
    assert server.proc.returncode == 1 and group_members(server.proc.pid) == []


def test_a_server_that_never_answers_is_killed_when_the_wait_times_out(tmp_path):
    # It listens, but on another port than the one the fixture polls: readiness never comes.
    server = LiveServer(tmp_path, {"PORT": str(free_port())}, [], ready_timeout=3, start=False)
    with pytest.raises(Failed) as err:
        server.start()
    assert "not reached within 3s" in str(err.value)
    assert server.proc.returncode == -signal.SIGKILL  # it was still running: the fixture killed it
    # ... and its gunicorn workers with it (a SIGKILLed worker may take a moment to finish dying)
    wait_for(lambda: group_members(server.proc.pid) == [], timeout=10, message="a worker survived")


def test_a_redis_server_that_refuses_its_options_leaves_no_process(tmp_path):
    server = RedisServer(tmp_path, ("--maxmemory-policy", "no-such-policy"), start=False)
    with pytest.raises(Failed) as err:
        server.start()
    assert "the process exited with code 1" in str(err.value) and "no-such-policy" in str(err.value)
    assert group_members(server.proc.pid) == []


def test_a_redis_server_that_never_answers_is_stopped_when_the_wait_times_out(tmp_path):
    # A later --port wins: redis-server listens elsewhere and the fixture's PING never lands.
    server = RedisServer(tmp_path, ("--port", str(free_port())), ready_timeout=2, start=False)
    with pytest.raises(Failed) as err:
        server.start()
    assert "not reached within 2s" in str(err.value)
    assert server.proc.returncode is not None and group_members(server.proc.pid) == []


def test_ending_a_group_whose_leader_died_kills_what_it_left_behind():
    # The leader starts a long sleeper in its own group and exits at once (a server master that
    # crashed and left its workers): the sleeper must not outlive the cleanup.
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen("
                               "[sys.executable, '-c', 'import time; time.sleep(120)']).pid)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    orphan = int(leader.stdout.readline())
    leader.stdout.close()
    try:
        assert leader.wait(timeout=30) == 0
        assert group_members(leader.pid) == [orphan]
        end_process_group(leader)
        assert wait_for(lambda: group_members(leader.pid) == [], timeout=10, message="the orphan survived")
    finally:
        kill_orphans(leader.pid)


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(tmp_path):
    server = LiveServer(tmp_path, {}, [], start=False)
    with socket.socket() as taker:  # another process's listener on the port free_port chose
        taker.bind(("127.0.0.1", server.port))
        taker.listen()
        taken = server.port
        try:
            server.start()
            assert server.port != taken and server.env["PORT"] == str(server.port)
            assert f"port {taken} on 127.0.0.1 is already in use" in server.log()
            assert requests.get(server.api("/livez"), timeout=10).status_code == 200
        finally:
            server.stop()
