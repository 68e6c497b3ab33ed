"""Kept-alive connections spread over the request processes, and back-to-back requests on one
connection are served by the thread that answered the previous one, still as plain HTTP that
the gate protects. Real server processes over raw sockets; which process holds a connection is
read from /proc (the socket inode in the process's descriptors)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import requests

from agentmemory_server.adapters.connections import ConnectionBoard
from conftest import hook, wait_for
from test_connections import connect, read_response
from test_workers_default import _request_processes


def _server_side_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the connection from ``client_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return inode
    return None


def _holder(pids: list[int], inode: str) -> int | None:
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


def _observe_request(name: str) -> bytes:
    body = json.dumps(hook(name)).encode()
    return (b"POST /agentmemory/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_the_board_shows_each_process_the_connections_of_the_others():
    board = ConnectionBoard(3)
    mine = board.claim(set())
    assert mine == 0 and board.fewest_elsewhere(mine) is None  # no sibling yet
    board.publish(mine, os.getpid(), 0)
    sibling = board.claim({mine})
    assert sibling == 1
    child = os.fork()
    if child == 0:  # the sibling process publishes its count in the shared memory, then exits
        board.publish(sibling, os.getpid(), 5)
        os._exit(0)
    os.waitpid(child, 0)
    assert board.fewest_elsewhere(mine) == 5
    board.publish(2, 4242, 2)
    assert board.fewest_elsewhere(mine) == 2 and board.fewest_elsewhere(2) == 0
    board.release(sibling)
    board.release(2)
    assert board.fewest_elsewhere(mine) is None
    assert board.claim({0, 1, 2}) is None  # a fourth process gets no slot (and is not balanced)


def test_kept_alive_connections_spread_over_both_request_processes(live_server):
    server = live_server(env={"AGENTMEMORY_WORKERS": "2", "AGENTMEMORY_THREADS": "8"})
    assert server.proc is not None
    _request_processes(server.proc.pid, 2)
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == server.proc.pid]
    # Both processes answer before the clients come (a process still loading the app accepts nothing).
    wait_for(lambda: len({requests.get(server.api("/health"), headers={"Connection": "close"}, timeout=10)
                          .json()["live"]["bus"]["origin"] for _ in range(6)}) == 2,
             message="the second request process never answered")
    sockets = []
    try:
        held: dict[int, int] = {}
        for i in range(8):  # clients that connect one after another and keep their connections
            sock = connect(server)
            sock.sendall(_observe_request(f"spread-{i}"))
            assert read_response(sock)[0] == 201
            sockets.append(sock)
            inode = _server_side_inode(server.port, sock.getsockname()[1])
            holder = _holder(workers, inode) if inode else None
            assert holder is not None, f"no request process holds connection {i}"
            held[holder] = held.get(holder, 0) + 1
        # Without the board a process that wins the accept race keeps winning: 6:2 and 7:1 splits
        # were common, with one core idle under load.
        assert len(held) == 2 and min(held.values()) >= 3, held
    finally:
        for sock in sockets:
            sock.close()


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_back_to_back_requests_on_one_connection_then_a_stalled_one_times_out(live_server):
    server = live_server(env={"AGENTMEMORY_REQUEST_TIMEOUT": "2", "AGENTMEMORY_THREADS": "4",
                              "AGENTMEMORY_MAX_VIEWERS": "0"})
    sock = connect(server)
    other = None
    try:
        ids = set()
        for i in range(30):  # each sent the moment the previous answer arrived
            sock.sendall(_observe_request(f"burst-{i}"))
            status, _headers, body = read_response(sock)
            assert status == 201, body
            ids.add(json.loads(body)["observationId"])
        assert len(ids) == 30
        # Half of the next request, then nothing: it must not hold a thread, so another client is
        # served meanwhile, and the stalled one is told 408 once the request timeout passes.
        request = _observe_request("stalled")
        sock.sendall(request[: len(request) // 2])
        other = connect(server)
        started = time.monotonic()
        for _ in range(6):  # more requests than the pool has threads
            other.sendall(b"GET /agentmemory/livez HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(other)[0] == 200
        assert time.monotonic() - started < 1.5, "the stalled request held up another client"
        sock.settimeout(10)
        status, _headers, body = read_response(sock)
        assert status == 408, body
    finally:
        sock.close()
        if other is not None:
            other.close()
