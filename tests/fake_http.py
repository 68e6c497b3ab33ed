"""The plumbing the loopback model fakes share (fake_gemini.py, fake_openai.py, fake_anthropic.py):
a threaded HTTP server on a free 127.0.0.1 port and the scripting every test uses.

Scripting: ``fail_next`` holds error statuses (or ``(status, headers)``, or ``(status, headers,
code)`` with a provider error code, or an ``ErrorReply`` with a whole error body) for the next
requests of any kind; ``replies`` holds the
next generation answers (a dict/list is the JSON answer, a str raw text, ``Raw(body)`` the
whole response body); otherwise ``responder(prompt)`` answers, given a ``Prompt`` (system
text, user/assistant texts, the raw body). ``delay`` slows every generation down (a slow
model); ``stall()`` holds every generation until ``release()`` (``entered`` is set when one
arrives). Every request is recorded in ``calls`` (path, body, headers, and the 200 response).
``models``, when set, are the models served: a generation for any other gets the provider's 404
(``unknown_model_code``), as a model name with a typo does. A generation asked with ``"stream":
true`` gets a 400 unless ``streaming`` is set; then the whole answer goes out as server-sent
events, the chunks ``stream_events(body, answer)`` makes of it (an agent such as OpenCode asks
for nothing else).

A subclass says how its protocol looks: ``route(path)`` -> ``"generate"`` / ``"embed"`` / None,
``authorised(headers)``, ``error_body(status, message, code)``, ``prompt(body)``,
``generation(body, reply)``, ``embedding(body)`` and, for ``streaming``, ``stream_events``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass(frozen=True)
class Raw:
    """A whole generation response body (blocked prompts, odd finish reasons, ...)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class ErrorReply:
    """A scripted failure with its whole body (a Gemini 429's typed ``details``, ...)."""

    status: int
    body: dict[str, Any] | str  # a str is sent as text/plain (a server's own error page)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Prompt:
    """A generation request in protocol-neutral form."""

    system: str
    turns: list[tuple[str, str]]  # (role "user" | "assistant", text)
    body: dict[str, Any] = field(repr=False)

    @property
    def user(self) -> str:
        """The first user message (the task's prompt)."""
        return next(text for role, text in self.turns if role == "user")

    @property
    def text(self) -> str:
        """Everything sent: system instruction and every turn."""
        return "\n".join([self.system, *(text for _, text in self.turns)])


def tokens(text: str) -> int:
    """The fakes' token count: about four characters a token, at least one."""
    return max(1, len(text) // 4)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test) is not an error of the fake


class LoopbackModel:
    name = "model"
    unknown_model_code: str | None = "model_not_found"  # the error code of a 404 for a model not served

    def __init__(self, api_key: str | None = "test-key"):
        self.api_key = api_key
        self.calls: list[dict[str, Any]] = []
        self.fail_next: list[Any] = []
        self.replies: list[Any] = []
        self.responder: Callable[[Prompt], Any] | None = None
        self.delay = 0.0
        self.models: set[str] | None = None
        self.streaming = False
        self.entered = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    # ---- test helpers
    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def stall(self) -> None:
        self.entered.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def generations(self) -> list[dict[str, Any]]:
        """The raw bodies of the generation requests received, oldest first."""
        with self._lock:
            return [c["body"] for c in self.calls if self.route(c["path"]) == "generate"]

    def requests(self) -> list[Prompt]:
        return [self.prompt(b) for b in self.generations()]

    def prompts(self) -> list[str]:
        """Everything each generation request sent, as text."""
        return [p.text for p in self.requests()]

    # ---- the protocol (subclasses)
    def route(self, path: str) -> str | None:
        raise NotImplementedError

    def authorised(self, headers: Any) -> bool:
        raise NotImplementedError

    def error_body(self, status: int, message: str, code: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def prompt(self, body: dict[str, Any]) -> Prompt:
        raise NotImplementedError

    def generation(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        raise NotImplementedError

    def embedding(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.error_body(404, "this fake serves no embeddings", None)

    def stream_events(self, body: dict[str, Any], answer: dict[str, Any]) -> list[dict[str, Any]]:
        """A whole generation answer as the events a streamed one sends, in order."""
        raise NotImplementedError

    def model_of(self, path: str, body: dict[str, Any]) -> str | None:
        """The model a request names (in the body; Gemini: in the path)."""
        return body.get("model")

    # ---- serving
    def _reply_for(self, body: dict[str, Any]) -> Any:
        with self._lock:
            reply = self.replies.pop(0) if self.replies else None
        if reply is None:
            reply = self.responder(self.prompt(body)) if self.responder else {}
        return reply

    def _answer(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == "embed":
            return self.embedding(body)
        reply = self._reply_for(body)
        return reply.body if isinstance(reply, Raw) else self.generation(body, reply)

    def _failure(self, scripted: Any, kind: str | None, path: str, headers: Any,
                 body: dict[str, Any]) -> ErrorReply | None:
        """The error answer this request gets (scripted, or what the real API would say), or None."""
        if isinstance(scripted, ErrorReply):
            return scripted
        status, extra, code = (tuple(scripted) + (None, None))[:3] if isinstance(scripted, tuple) \
            else (scripted, None, None)
        if not self.authorised(headers):
            return ErrorReply(401, self.error_body(401, "invalid API key", "invalid_api_key"))
        if kind is None:  # as Go's net/http (Ollama) answers a path it does not serve
            return ErrorReply(404, "404 page not found")
        model = self.model_of(path, body)
        if kind == "generate" and self.models is not None and model not in self.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return ErrorReply(404, self.error_body(404, message, self.unknown_model_code))
        if status != 200:
            return ErrorReply(status, self.error_body(status, "scripted failure", code), extra or {})
        if kind == "generate" and body.get("stream") and not self.streaming:  # whole answers unless asked
            return ErrorReply(400, self.error_body(400, "only stream: false is served", None))
        return None

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
                text = isinstance(body, str)
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                kind = fake.route(self.path)
                if kind == "generate":
                    fake.entered.set()
                    fake._open.wait(timeout=60)
                    if fake.delay:
                        time.sleep(fake.delay)
                record = {"path": self.path, "body": body, "headers": dict(self.headers), "response": None}
                with fake._lock:
                    fake.calls.append(record)
                    scripted = fake.fail_next.pop(0) if fake.fail_next else 200
                failure = fake._failure(scripted, kind, self.path, self.headers, body)
                if failure is not None:
                    return self._send(failure.status, failure.body, failure.headers)
                record["response"] = fake._answer(kind, body)
                if kind == "generate" and body.get("stream"):
                    return self._send_events(fake.stream_events(body, record["response"]))
                return self._send(200, record["response"])

            def _send_events(self, events: list[dict[str, Any]]) -> None:
                """Server-sent events, one ``data:`` line each, ended by ``data: [DONE]`` as OpenAI
                ends a stream; the connection closes after them (no length is known up front)."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler


def reply_text(reply: Any) -> str:
    """A scripted reply as the text a model would have written."""
    return reply if isinstance(reply, str) else json.dumps(reply)
