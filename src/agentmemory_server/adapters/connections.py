"""The gunicorn worker: gthread, except a connection only reaches a thread with a whole request.

gunicorn's gthread worker hands every accepted connection to a pool thread, which then blocks
reading the request (27.x waits up to 5 s for a first byte, then blocks in the parser without a
timeout). Measured (measured-2026-12.md section 4): 350 sockets that connect and send nothing,
or half a request line, took every thread and 50 of 50 normal requests from another client
timed out after 5 s.

``GuardedThreadWorker`` keeps gthread's pool, keep-alive handling and shutdown, and changes
what happens before a thread is involved. On the main thread's poller (epoll), holding no
thread, each connection accumulates its request until

- the head and a body of at most ``preread_bytes`` have fully arrived: the bytes go into the
  connection's parser and the connection goes to the pool, where parsing never waits;
- the head announces a larger (or chunked) body, an upgrade, or ``Expect: 100-continue``: it goes
  to the pool after the head, and every read there is bounded by ``request_timeout``;
- ``request_timeout`` passes first (slowloris, a stalled body): 408 and close; a connection
  that never sent a byte is closed silently;
- the peer closes: dropped.

Kept-alive connections go through the same gate for their next request. Beyond
``max_connections`` open connections (waiting, running or kept alive), a new one is answered
``503 too_many_connections`` with ``Retry-After`` at once and closed, instead of waiting
unseen in the listen backlog. Threads only ever run requests whose bytes are already here (or
bounded reads of large bodies), so idle, slow and half-sent connections cannot starve the pool.

The worker is per process: with N gunicorn workers each has its own cap and pool.

A request gunicorn's parser refuses before the app runs (a request line over 4094 bytes, a bad
Content-Length, too many headers...) is answered with our JSON error envelope, not gunicorn's
HTML page (``handle_error``), with gunicorn's status and ``Connection: close``.
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from datetime import datetime
from functools import partial
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.http import errors as parse_errors
from gunicorn.http.wsgi import Response as GunicornResponse
from gunicorn.http.wsgi import default_environ
from gunicorn.workers.gthread import TConn, ThreadWorker

from agentmemory_server import errors
from agentmemory_server.kernel.privacy import strip_text

log = logging.getLogger("agentmemory.http")

MAX_HEAD_BYTES = 65536  # a larger head goes to the parser, which answers 431/400
RECV_BYTES = 65536
LINGER_SECONDS = 1.0  # a refused connection is drained this long so the client reads the answer
MAX_LINGERING = 256
# After answering on a kept-alive connection, a thread waits this long for the client's next
# request before handing the connection back to the poller. A client sending requests back to
# back (a hook burst, an MCP session, a bulk load) is then served by the same thread without the
# poller round trip (a wake-up pipe, epoll registrations and two thread hand-offs per request).
NEXT_REQUEST_WAIT_SECONDS = 0.002
MAX_REQUESTS_PER_HANDOVER = 64  # then the connection queues behind the others again
# A request process holding more connections than a sibling stops listening this long, so the
# sibling accepts the waiting connection (see GuardedThreadWorker._leave_it_to_a_sibling).
ACCEPT_PAUSE_SECONDS = 0.01
# Connections already kept alive stay where they are, so an uneven split (clients that connected
# while a sibling was still starting, or was restarted) would last: a process that has held this
# many more connections than a sibling for REBALANCE_AFTER_SECONDS (not a moment's difference
# while closed connections are being counted) answers one request with ``Connection: close``;
# the client reconnects (HTTP clients do so by themselves) and the sibling accepts it. Then one
# per REBALANCE_SECONDS while the split stays uneven, so the count seen on the board has settled
# before the next, and while the sibling has taken none since the last one (stuck, or starved of
# CPU: the client came back here), one per REBALANCE_STUCK_SECONDS.
REBALANCE_EXCESS = 2
REBALANCE_AFTER_SECONDS = 1.0
REBALANCE_SECONDS = 0.05
REBALANCE_STUCK_SECONDS = 1.0


class ConnectionBoard:
    """How many connections each request process holds, in memory shared by the processes
    gunicorn forks. Kept-alive connections stay with the process that accepted them, and
    clients that connect together (a pool, a bench, agents starting at once) are accepted by
    whichever process wakes first: without this, 8 clients on 2 processes often split 6:2 and
    one core idles while the other queues. One slot per process, written only by its owner."""

    _SLOT = struct.Struct("qq")  # pid, open connections

    def __init__(self, slots: int):
        self.slots = slots
        self._memory = mmap.mmap(-1, self._SLOT.size * slots)  # anonymous and shared across fork

    def publish(self, slot: int, pid: int, open_connections: int) -> None:
        self._SLOT.pack_into(self._memory, slot * self._SLOT.size, pid, open_connections)

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The fewest connections any other live process holds (None: no other process)."""
        counts = []
        for other in range(self.slots):
            if other != slot:
                pid, held = self._SLOT.unpack_from(self._memory, other * self._SLOT.size)
                if pid:
                    counts.append(held)
        return min(counts, default=None)

    def claim(self, taken: set[int]) -> int | None:
        """A free slot for a process about to be forked (its own count starts at 0)."""
        free = [slot for slot in range(self.slots) if slot not in taken]
        return free[0] if free else None

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self.publish(slot, 0, 0)


def _response(status: int, reason: str, body: dict[str, Any], retry_after: int | None = None) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(payload)}"]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    head += ["Connection: close", "", ""]
    return "\r\n".join(head).encode() + payload


# The requests gunicorn's parser refuses as the client's fault, with the status and reason it
# answers them with (gunicorn 27.x, ``Worker.handle_error``); first match wins. A header the app
# tried to send (InvalidResponseHeader*, subclasses of the header errors) is no client's fault.
_REFUSALS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str], ...] = (
    ((parse_errors.InvalidResponseHeader, parse_errors.InvalidResponseHeaderName), 0, ""),
    (parse_errors.LimitRequestLine, 414, "URI Too Long"),
    (parse_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (parse_errors.ExpectationFailed, 417, "Expectation Failed"),
    (parse_errors.UnsupportedTransferCoding, 501, "Not Implemented"),
    # A SCRIPT_NAME (header from a trusted proxy, or environment) the path does not start with:
    # the deployment's fault, not a bug, so gunicorn logs no traceback; its status is kept.
    (parse_errors.ConfigurationProblem, 500, "Internal Server Error"),
    ((parse_errors.ForbiddenProxyRequest, ssl.SSLError), 403, "Forbidden"),
    (
        (
            parse_errors.InvalidRequestLine,
            parse_errors.InvalidRequestMethod,
            parse_errors.InvalidHTTPVersion,
            parse_errors.InvalidHeader,
            parse_errors.InvalidHeaderName,
            parse_errors.InvalidProxyLine,
            parse_errors.InvalidSchemeHeaders,
            parse_errors.ObsoleteFolding,
            parse_errors.InvalidH2CPreface,
            parse_errors.InvalidChunkSize,
            parse_errors.ChunkMissingTerminator,
            parse_errors.InvalidChunkExtension,
        ),
        400,
        "Bad Request",
    ),
)
MAX_QUOTED_CHARS = 200  # of the refused request quoted back in the message


def refusal_status(exc: BaseException) -> tuple[int, str] | None:
    """gunicorn's status and reason for a request its parser refused as the client's fault;
    None for anything else (a bug, or the app's own fault)."""
    for kinds, status, reason in _REFUSALS:
        if isinstance(exc, kinds):
            return (status, reason) if status else None
    return None


def refusal_message(exc: BaseException, cfg: Any) -> str:
    """What is wrong with a refused request, for the client (``cfg``: gunicorn's limits)."""
    if isinstance(exc, parse_errors.LimitRequestLine):
        problem = f"the request line is {exc.size} bytes, over the limit of {exc.max_size}"
    elif isinstance(exc, parse_errors.LimitRequestHeaders):
        problem = (
            f"a request header is over {cfg.limit_request_field_size} bytes"
            if "size" in exc.msg
            else f"the request has more than {cfg.limit_request_fields} headers"
        )
    elif isinstance(exc, parse_errors.InvalidHeader) and isinstance(exc.hdr, str):
        problem = f"the {exc.hdr.title()} header is not valid"
    elif isinstance(exc, parse_errors.ConfigurationProblem):
        return f"the request does not fit the server's configuration: {_quoted(str(exc.info))}"
    else:
        problem = str(exc)
    return f"malformed request: {_quoted(problem)}"


def _quoted(text: str) -> str:
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + "..."


def request_ready(buffer: bytes | bytearray, preread_bytes: int) -> bool:
    """Whether a thread may take the connection: the whole request has arrived, or its head has
    and the body is to be read on the thread (too large, chunked, an upgrade, 100-continue),
    or the head is too large to wait for."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return len(buffer) > MAX_HEAD_BYTES
    headers: dict[str, str] = {}
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower().decode("latin-1")
        if key in headers:  # a repeated header: the parser decides (400)
            return True
        headers[key] = value.strip().decode("latin-1").lower()
    if "transfer-encoding" in headers or "upgrade" in headers or "100-continue" in headers.get("expect", ""):
        return True
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return True  # the parser answers 400
    return length > preread_bytes or len(buffer) - (end + 4) >= length


class TimedSocket(socket.socket):
    """A client socket whose blocking mode has a timeout: gunicorn sets a socket blocking before
    every request, and each read or write on a worker thread is then bounded."""

    io_timeout: float | None = None

    def setblocking(self, flag: bool) -> None:
        if flag and self.io_timeout is not None:
            self.settimeout(self.io_timeout)
        else:
            super().setblocking(flag)


class GuardedThreadWorker(ThreadWorker):
    """See the module docstring. ``configure`` makes a subclass with the limits."""

    max_connections = 1000
    request_timeout = 10.0
    preread_bytes = 1 << 20
    board: ConnectionBoard | None = None
    board_slot: int | None = None  # set on the worker object by the arbiter before the fork
    _open = 0

    @classmethod
    def configure(
        cls, *, max_connections: int, request_timeout: float, preread_bytes: int, board: ConnectionBoard | None = None
    ) -> type:
        return type(
            "GuardedThreadWorker",
            (cls,),
            {
                "max_connections": max_connections,
                "request_timeout": request_timeout,
                "preread_bytes": preread_bytes,
                "board": board,
            },
        )

    @property
    def nr_conns(self) -> int:
        return self._open

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:  # gthread counts in place; the siblings see it too
        self._open = value
        if self.board is not None and self.board_slot is not None:
            self.board.publish(self.board_slot, os.getpid(), value)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.waiting: deque[TConn] = deque()  # connections whose request is still arriving, by deadline
        self.lingering: deque[tuple[float, socket.socket]] = deque()
        self.refused = 0
        self.timed_out = 0
        self.rebalanced = 0  # kept-alive connections closed to even the split between processes
        self.queued = 0  # connections handed to the pool and not yet picked up by a thread
        self._left_at = 0.0  # when this process last left a connection to a sibling
        self._shed_at = 0.0  # when it last closed a kept-alive connection to even the split
        self._fewest_when_shed = -1  # and the sibling's count then
        self._uneven_since: float | None = None  # since when it has held REBALANCE_EXCESS more
        self._fewest_when_left = 0  # and the sibling's count then
        self._paused_until = 0.0
        self._queued_lock = threading.Lock()

    def run(self) -> None:
        # On the board once the app is loaded and this process is about to accept: a sibling
        # that left connections to a process still loading would wait a pause each time.
        self.nr_conns = self.nr_conns
        super().run()

    # -- accepting --------------------------------------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        if self._leave_it_to_a_sibling():
            return
        try:
            raw, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        if self.nr_conns >= self.max_connections:
            self._refuse(raw)
            return
        sock = TimedSocket(fileno=raw.detach())
        sock.io_timeout = self.request_timeout
        self.nr_conns += 1
        conn = TConn(self.cfg, sock, addr, listener.getsockname())  # non-blocking from here
        self._wait_for_request(conn, b"")

    def _leave_it_to_a_sibling(self) -> bool:
        """Whether to leave a waiting connection to a sibling process that holds fewer
        connections (it is woken by the same connection). This process then stops listening for
        ACCEPT_PAUSE_SECONDS (else the still-waiting connection would wake its loop again and
        again). If, when it listens again, a connection still waits and the sibling has taken
        none meanwhile (stuck, or starved of CPU), this process takes it: a client is delayed
        by one pause at most."""
        if self.board is None or self.board_slot is None:
            return False
        fewest = self.board.fewest_elsewhere(self.board_slot)
        if fewest is None or self.nr_conns <= fewest:
            return False
        now = time.monotonic()
        if now - self._left_at < ACCEPT_PAUSE_SECONDS * 5 and fewest == self._fewest_when_left:
            return False
        self._left_at, self._fewest_when_left = now, fewest
        self._paused_until = now + ACCEPT_PAUSE_SECONDS
        self.set_accept_enabled(False)
        return True

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's loop re-enables accepting on every turn; a pause above holds it off.
        if enabled and time.monotonic() < self._paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if not self._accepting and self._paused_until:  # wake when the pause ends, to listen again
            timeout = max(0.0, min(timeout, self._paused_until - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)

    def _refuse(self, sock: socket.socket) -> None:
        self.refused += 1
        body = errors.envelope(
            503,
            f"the server has {self.max_connections} connections open (AGENTMEMORY_MAX_CONNECTIONS); retry shortly",
            errors.TOO_MANY_CONNECTIONS,
            {"retryAfterSeconds": 1},
        )
        self._close_after(sock, _response(503, "Service Unavailable", body, retry_after=1))

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's answer to a request that failed outside the app, in our envelope instead
        of its HTML page: a request its parser refused (the client's fault: gunicorn's status,
        code ``http_error``, a message naming the problem, a warning line without a traceback),
        or an unexpected failure (500 ``internal_error`` naming the ``errorId`` logged with its
        traceback). Always ``Connection: close``; gunicorn closes the connection after this."""
        started = datetime.now()
        addr = addr or ("", -1)  # a unix socket
        refused = refusal_status(exc)
        if refused is not None:
            status, reason = refused
            body = errors.envelope(status, refusal_message(exc, self.cfg), errors.HTTP_ERROR)
            self.log.warning("Invalid request from ip=%s: %s", addr[0], strip_text(str(exc))[:MAX_QUOTED_CHARS])
            if req is None and isinstance(exc, parse_errors.InvalidHeader):
                req = getattr(exc, "req", None)  # for the access log, as gunicorn does
        else:
            status, reason = 500, "Internal Server Error"
            what = f"{req.method} {strip_text(req.uri)}" if hasattr(req, "uri") and hasattr(req, "method") else "?"
            body = errors.unexpected(log, "error handling request %s", what)
        if req is not None:
            self._log_access(req, client, addr, status, reason, started)
        try:
            gunicorn_util.write_nonblock(client, _response(status, reason, body))
        except Exception:  # noqa: BLE001 - the client went away; nothing to tell
            self.log.debug("Failed to send error message.")

    def _log_access(self, req: Any, client: Any, addr: Any, status: int, reason: str, started: datetime) -> None:
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
        response = GunicornResponse(req, client, self.cfg)
        response.status = f"{status} {reason}"
        self.log.access(response, req, environ, datetime.now() - started)

    def _close_after(self, sock: socket.socket, response: bytes) -> None:
        """Send a short answer without blocking, then drain what the client sent so closing does
        not reset the connection before it has read the answer."""
        try:
            sock.setblocking(False)
            sock.send(response)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self.lingering) >= MAX_LINGERING:
            sock.close()
            return
        self.lingering.append((time.monotonic() + LINGER_SECONDS, sock))
        self.poller.register(sock, selectors.EVENT_READ, partial(self._drain, sock))

    def _drain(self, sock: socket.socket, _fileobj: Any = None) -> None:
        try:
            if sock.recv(RECV_BYTES):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._forget_lingering(sock)

    def _forget_lingering(self, sock: socket.socket) -> None:
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        sock.close()
        self.lingering = deque(item for item in self.lingering if item[1] is not sock)

    # -- waiting for a whole request, on the poller ------------------------------------------------
    def _wait_for_request(self, conn: TConn, received: bytes) -> None:
        conn.pending = bytearray(received)
        conn.deadline = time.monotonic() + self.request_timeout
        if received and request_ready(conn.pending, self.preread_bytes):
            self._hand_over(conn)
            return
        self.waiting.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_request_bytes, conn))

    def _on_request_bytes(self, conn: TConn, _fileobj: Any = None) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client went away before finishing its request
            self._stop_waiting(conn)
            self._drop(conn)
            return
        conn.pending += data
        if request_ready(conn.pending, self.preread_bytes):
            self._stop_waiting(conn)
            self._hand_over(conn)

    def _stop_waiting(self, conn: TConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.waiting.remove(conn)
        except ValueError:
            pass

    def _hand_over(self, conn: TConn) -> None:
        conn.data_ready = True  # gthread's own wait-for-first-byte is not needed any more
        self.enqueue_req(conn)

    def enqueue_req(self, conn: TConn) -> None:
        with self._queued_lock:
            self.queued += 1
        super().enqueue_req(conn)

    def _drop(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def handle(self, conn: TConn) -> Any:
        """On the worker thread: feed what the poller gathered to the parser, then gthread's
        usual handling (which never waits for bytes that have not arrived, except bounded reads
        of a body larger than the preread limit)."""
        with self._queued_lock:
            self.queued -= 1
        pending = getattr(conn, "pending", None)
        if pending:
            conn.pending = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(pending))
        keep = super().handle(conn)
        served = 1
        while keep is True and served < MAX_REQUESTS_PER_HANDOVER and self._next_request_arrived(conn):
            keep = super().handle(conn)
            served += 1
        return keep

    def handle_request(self, req: Any, conn: TConn) -> Any:
        if self._hand_to_a_sibling(req):
            req.must_close = True  # answered with Connection: close, then closed
        return super().handle_request(req, conn)

    def _hand_to_a_sibling(self, req: Any) -> bool:
        """Whether this request's connection should close after its answer, to even out how
        many connections the request processes hold (see REBALANCE_EXCESS)."""
        if self.board is None or self.board_slot is None or not self.alive:
            return False
        fewest = self.board.fewest_elsewhere(self.board_slot)
        now = time.monotonic()
        if fewest is None or self.nr_conns - fewest < REBALANCE_EXCESS:
            self._uneven_since = None
            return False
        if any(name == "UPGRADE" for name, _value in req.headers):  # a WebSocket stays put
            return False
        with self._queued_lock:
            if self._uneven_since is None:
                self._uneven_since = now
            since = now - self._shed_at
            if (
                now - self._uneven_since < REBALANCE_AFTER_SECONDS
                or since < REBALANCE_SECONDS
                or (fewest == self._fewest_when_shed and since < REBALANCE_STUCK_SECONDS)
            ):
                return False
            self._shed_at, self._fewest_when_shed = now, fewest
        self.rebalanced += 1
        return True

    def _next_request_arrived(self, conn: TConn) -> bool:
        """Whether the client's next request arrived whole within NEXT_REQUEST_WAIT_SECONDS, so
        this thread may serve it at once. Not while other connections wait for a thread (they go
        first), nor for bytes read ahead (pipelining: ``finish_request`` gates those)."""
        if not self.alive or self.queued > 0 or conn.parser.unreader.buf.getvalue():
            return False
        try:
            readable, _, _ = select.select([conn.sock], [], [], NEXT_REQUEST_WAIT_SECONDS)
            head = conn.sock.recv(RECV_BYTES, socket.MSG_PEEK) if readable else b""
        except (OSError, ValueError):
            return False
        return bool(head) and request_ready(head, self.preread_bytes)

    # -- keep-alive: the next request goes through the same gate ----------------------------------
    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._wait_for_request(conn, b"")
        self._on_request_bytes(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        # A request pipelined behind the last one may be partial: it waits on the poller too.
        try:
            keep = not fs.cancelled() and fs.result()
        except Exception:  # noqa: BLE001 - gthread's own handler closes it
            keep = False
        leftover = conn.parser is not None and keep and self.alive and conn.parser.unreader.buf.getvalue()
        if leftover:
            conn.sock.setblocking(False)
            self._wait_for_request(conn, conn.parser.unreader.take_buffered())
            return
        super().finish_request(conn, fs)

    # -- timeouts (called by gthread's loop about once a second, also while stopping) --------------
    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.waiting and (self.waiting[0].deadline <= now or not self.alive):
            conn = self.waiting[0]
            self._stop_waiting(conn)
            self.nr_conns -= 1
            if conn.pending and self.alive:  # started a request and stalled: say so
                self.timed_out += 1
                message = f"the request did not arrive within {self.request_timeout:g}s (AGENTMEMORY_REQUEST_TIMEOUT)"
                body = errors.envelope(408, message, errors.REQUEST_TIMEOUT)
                self._close_after(conn.sock, _response(408, "Request Timeout", body))
            else:  # an idle connection (or a stopping server): closed, nothing to say
                conn.close()
        while self.lingering and (self.lingering[0][0] <= now or not self.alive):
            self._forget_lingering(self.lingering[0][1])
