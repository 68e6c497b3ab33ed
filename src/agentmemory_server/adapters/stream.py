"""The live stream protocol (``/stream/mem-live/viewer``), free of Flask.

A session on one WebSocket:

1. **Auth.** With ``AGENTMEMORY_SECRET`` set, the upgrade request carries the token (bearer
   header or ``?token=``) or the client's first message is ``{"type": "auth", "token": ...}``,
   within ``AUTH_TIMEOUT`` seconds; otherwise the socket is closed with 1008. The token is
   checked again every ``RECHECK_SECONDS`` while the socket is open: a revoked API token closes
   it (1008) as it refuses the token's next request, not only its next connection. A
   principal's token without the ``read`` right is closed with 1008 too: events carry records.
2. **Hello.** ``{"type": "hello", "version", "epoch", "seq", "replayed", "complete"}``. ``seq``
   is the last event sequence number at subscription. A reconnecting client passes
   ``since=<last seq it saw>`` and ``epoch`` (query string or auth message) and first receives
   the events it missed; ``complete: false`` means some were lost (or the server restarted)
   and it should reload its snapshot.
3. **Events.** ``{"type", "seq", "ts", "record"}`` for every new or changed record
   (observation, memory, session, lesson, slot, action, ...).
4. **Calls.** ``{"id", "tool", "args"}`` runs a registry tool and answers
   ``{"id", "ok": true, "result"}``, or on failure the REST error envelope plus ``id``
   (``{"id", "ok": false, "error", "code", "status", "details"}``); ``{"type": "ping"}`` answers
   ``pong``.

A client that falls ``AGENTMEMORY_VIEWER_QUEUE`` events behind is dropped (close 4000); a send
that blocks longer than ``AGENTMEMORY_VIEWER_SEND_TIMEOUT`` (a client that stopped reading)
closes the socket; more than ``AGENTMEMORY_MAX_VIEWERS`` sockets are refused with 1013. None of
this ever makes a writer wait: the hub only does non-blocking puts.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from simple_websocket import ConnectionClosed

from agentmemory_server import errors
from agentmemory_server.errors import CapacityExceeded
from agentmemory_server.kernel import principals
from agentmemory_server.kernel.events import (
    CLOSE_GOING_AWAY,
    CLOSE_LAGGING,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    Subscription,
)
from agentmemory_server.kernel.util import clean_text

AUTH_TIMEOUT = 10.0
RECHECK_SECONDS = 1.0  # how often an open socket's token is looked up again (a revocation)
POLL_SECONDS = 0.1  # how long the loop waits for an event before checking for a client message
log = logging.getLogger("agentmemory.live")


def token_matches(secret: str, token: Any) -> bool:
    return isinstance(token, str) and hmac.compare_digest(token.encode("utf-8", "replace"), secret.encode("utf-8"))


def as_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def bound_sends(ws: Any, seconds: int) -> None:
    """Make a send that cannot make progress fail after ``seconds`` (SO_SNDTIMEO), so a client
    that stopped reading frees its thread. The receive side keeps blocking as before."""
    sock = getattr(ws, "sock", None)
    if sock is None:
        return
    if sock.gettimeout() is not None:
        # The connection worker gave the socket a Python-level timeout (its reads and writes
        # poll): the kernel's SO_SNDTIMEO would never apply, so the viewer's own bound replaces it.
        # Reads are unaffected: the WebSocket's reader thread only reads once select() says so.
        sock.settimeout(seconds)
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))
    except OSError:  # not every platform accepts it; the hub still drops a lagging client
        log.debug("SO_SNDTIMEO not supported", exc_info=True)


def shut(ws: Any) -> None:
    """Shut the TCP connection down so the library's reader thread wakes and exits too."""
    sock = getattr(ws, "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class ReaderThread(threading.Thread):
    """The WebSocket library's per-socket reader thread, as a daemon: after a close it may wait
    in select() until its next ping, and must not hold the worker process open meanwhile.

    Its ping timer closes a peer that stopped answering pings, and ``close()`` raises
    ``ConnectionClosed`` when the socket is no longer open. When this side closed the same socket
    a moment before (a viewer over the limit, one lagging, a server stopping), the two closes race
    and the library's thread died with a traceback in the log. Both meant to close it: that is
    not an error. Nor is a socket this side closed before the thread registered it with its
    selector (a viewer over the limit is closed right after the handshake): the registration
    fails (EBADF, EINVAL), and the thread has nothing left to read."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["daemon"] = True
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        try:
            super().run()
        except ConnectionClosed:
            log.debug("a WebSocket closed by this side and by its ping timer at once")
        except OSError as exc:
            log.debug("a WebSocket's socket was closed before its reader started: %s", exc)


class StreamSession:
    """One viewer connection.

    :param rt: the runtime (settings, hub).
    :param ws: a simple-websocket connection (send, receive, close, connected).
    :param authenticated: the upgrade request already proved the token (or none is needed).
    :param query: the request's query arguments (``since``, ``epoch``).
    :param token: the token the upgrade request presented (checked again while the socket is open).
    :param answer: turns a client message into the reply to send (registry calls).
    """

    def __init__(
        self,
        rt: Any,
        ws: Any,
        *,
        authenticated: bool,
        query: dict[str, Any],
        answer: Callable[[Any], dict[str, Any]],
        token: str | None = None,
    ):
        self.rt, self.ws, self.answer = rt, ws, answer
        self.token = token
        self._checked_at = 0.0
        self.authenticated = authenticated or not rt.settings.secret
        self.since = as_int(query.get("since"))
        self.epoch = query.get("epoch")
        self._caller: Any = None

    def run(self) -> None:
        bound_sends(self.ws, self.rt.settings.viewer_send_timeout)
        try:
            self.rt.hub.open_socket()  # before auth: a socket waiting for its token holds a thread too
        except CapacityExceeded as exc:
            self._close(CLOSE_TRY_AGAIN, exc.message)
            return
        try:
            if (self.authenticated or self._authenticate()) and self._may_watch():
                self._stream()
        finally:
            self.rt.hub.close_socket()
            if self._caller is not None:
                principals.CALLER.reset(self._caller)

    def _may_watch(self) -> bool:
        """A principal's token without the read right may not watch: every event carries a record
        (its calls over this socket are checked as any call is)."""
        principal = principals.current()
        if principal is None or principal.is_admin_token or principal.may("read"):
            return True
        self.rt.deny(errors.TOKEN_RIGHTS, f"/stream/mem-live/viewer as {principal.name}", None)
        self._close(CLOSE_POLICY, "forbidden: the token lacks the 'read' right the live stream needs")
        return False

    def _stream(self) -> None:
        sub = self._subscribe()
        try:
            self._send(self._hello(sub))
            self._pump(sub)
        except Exception:  # noqa: BLE001 - a closed or stuck socket ends the stream, nothing else
            log.debug("viewer stream ended", exc_info=True)
        finally:
            sub.close()
            if sub.dropped or not self.ws.connected:
                shut(self.ws)

    def _authenticate(self) -> bool:
        raw = self.ws.receive(timeout=AUTH_TIMEOUT)
        try:
            message = json.loads(raw) if raw else None
        except ValueError:
            message = None
        token = message.get("token") if isinstance(message, dict) and message.get("type") == "auth" else None
        principal = principals.authenticate(self.rt, token if isinstance(token, str) else None)
        if principal is None:
            self.rt.deny("wrong token", "/stream/mem-live/viewer (auth message)", None)
            self._close(CLOSE_POLICY, 'unauthorized: send {"type":"auth","token":...} first')
            return False
        assert isinstance(message, dict)
        self.token = token
        self._caller = principals.CALLER.set(principal)  # calls on this socket act as the principal
        self.since = as_int(message.get("since")) if "since" in message else self.since
        self.epoch = message.get("epoch", self.epoch)
        self.authenticated = True
        return True

    def _subscribe(self) -> Subscription:
        hub = self.rt.hub
        if self.since is not None and self.epoch not in (None, hub.epoch):
            sub = hub.subscribe(None)
            sub.complete = False  # the client's seq numbers belong to an earlier server run
            return sub
        return hub.subscribe(self.since)

    def _hello(self, sub: Subscription) -> dict[str, Any]:
        return {
            "type": "hello",
            "version": self.rt.version,
            "epoch": self.rt.hub.epoch,
            "seq": sub.start_seq,
            "replayed": sub.replayed,
            "complete": sub.complete,
            "auth": bool(self.rt.settings.secret),
        }

    def _pump(self, sub: Subscription) -> None:
        hub = self.rt.hub
        while self.ws.connected:
            if sub.dropped:
                self._close(
                    CLOSE_LAGGING,
                    f"too slow: fell {hub.stats()['queueSize']} events behind; reconnect with since={sub.last_seq}",
                )
                return
            if hub.stopping.is_set():
                self._close(CLOSE_GOING_AWAY, "server shutting down; reconnect later")
                return
            if not self._token_still_valid():
                self._close(CLOSE_POLICY, "unauthorized: the token was revoked")
                return
            event = sub.get(timeout=POLL_SECONDS)
            if event is not None:
                sub.last_seq = event["seq"]
                if self.visible(event):
                    self._send(event)
            incoming = self.ws.receive(timeout=0)
            if incoming:
                self._send(self.answer(incoming))

    def _token_still_valid(self) -> bool:
        """Whether the token this socket authenticated with still works (looked up at most every
        RECHECK_SECONDS; the lookup itself is cached per process, kernel/principals.py)."""
        now = time.monotonic()
        if self.token is None or now - self._checked_at < RECHECK_SECONDS:
            return True
        self._checked_at = now
        if principals.authenticate(self.rt, self.token) is not None:
            return True
        self.rt.deny("revoked token", "/stream/mem-live/viewer (open socket)", None)
        return False

    def visible(self, event: dict[str, Any]) -> bool:
        """Isolated agent scope: a viewer only sees records of this server's AGENT_ID. A viewer
        with a principal's token sees only records stamped with that principal, in the projects
        the token is valid for."""
        settings = self.rt.settings
        record = event.get("record")
        principal = principals.current()
        if principal is not None and not principal.is_admin_token:
            if not isinstance(record, dict) or record.get("agentId") != principal.name:
                return False
            project = record.get("project")
            return not isinstance(project, str) or principal.allows_project(project)
        if settings.agent_scope != "isolated" or not isinstance(record, dict) or "agentId" not in record:
            return True
        return record.get("agentId") == settings.agent_id

    def _send(self, message: dict[str, Any]) -> None:
        # clean_text: a record stored with a lone surrogate (before requests were cleaned) would
        # fail to encode, end the viewer's stream and fail again on its replay at reconnection.
        self.ws.send(clean_text(json.dumps(message, ensure_ascii=False, separators=(",", ":"))))

    def _close(self, code: int, reason: str) -> None:
        try:
            # A close reason may be at most 123 bytes of UTF-8.
            self.ws.close(code, reason.encode("utf-8")[:123].decode("utf-8", "ignore"))
        except Exception:  # noqa: BLE001 - already closed
            pass
        shut(self.ws)
