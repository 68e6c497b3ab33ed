"""Serving the app: gunicorn's gthread worker (flask-sock needs it; waitress cannot serve
WebSockets), or Werkzeug with ``--dev``. ``agentmemory serve`` and ``python src/app.py`` both
land in ``main``."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
from typing import Any

from flask import Flask

from agentmemory_server import storage
from agentmemory_server.adapters import logs
from agentmemory_server.adapters.connections import ConnectionBoard, GuardedThreadWorker
from agentmemory_server.adapters.supervisor import SHUTDOWN_GRACE_SECONDS, start_for
from agentmemory_server.adapters.web import create_app
from agentmemory_server.errors import AppError
from agentmemory_server.kernel import auth, privacy
from agentmemory_server.kernel.settings import Settings, SettingsError

log = logging.getLogger("agentmemory.http")


def serve(settings: Settings, *, dev: bool = False) -> None:
    logs.configure(settings.log_level)
    logs.dump_stacks_on_signal()
    # Before gunicorn forks: every log line of every process, ours or a library's, is redacted.
    privacy.redact_logs([*settings.secret_values(), os.environ.get("HF_TOKEN")])
    if dev:
        _serve_dev(settings)
        return
    from gunicorn.app.base import BaseApplication

    # Resolved before the fork: each process's runtime must know it has siblings (the event bus).
    settings = settings.replace(workers=settings.worker_processes)
    _warn_if_viewers_can_take_every_thread(settings)

    class GunicornServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in gunicorn_options(settings).items():
                self.cfg.set(key, value)
            self.cfg.set("post_worker_init", _hook_stop_signals)
            self.cfg.set("pre_fork", _assign_board_slot)
            self.cfg.set("child_exit", _free_board_slot)
            self.cfg.set("worker_exit", _on_worker_exit)

        def load(self) -> Flask:
            # Built in the worker process, so the runtime's threads live where requests run; the
            # background worker process is started from here too (its parent is this process).
            app = create_app(settings)
            start_for(settings, app.extensions["agentmemory"])
            return app

    GunicornServer().run()


def _serve_dev(settings: Settings) -> None:
    """Flask's development server, with the background work a gunicorn server would start."""
    app = create_app(settings)
    rt = app.extensions["agentmemory"]
    supervisor = start_for(settings, rt)
    try:
        app.run(host=settings.host, port=settings.port, threaded=True)
    finally:
        _shutdown(rt, supervisor)


def _warn_if_viewers_can_take_every_thread(settings: Settings) -> None:
    """Each open viewer holds a thread for its WebSocket; REST calls need some left over."""
    if not settings.max_viewers or settings.max_viewers > settings.threads - 4:
        log.warning(
            "AGENTMEMORY_MAX_VIEWERS=%s with AGENTMEMORY_THREADS=%s: open viewers can take every "
            "thread and stall REST calls; keep viewers at least 4 below threads",
            settings.max_viewers,
            settings.threads,
        )


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn's configuration. The worker is gthread's thread pool behind a gate
    (``connections.GuardedThreadWorker``): a connection reaches a thread only once its request
    has arrived (within AGENTMEMORY_REQUEST_TIMEOUT), at most AGENTMEMORY_MAX_CONNECTIONS are
    open per process and one more is answered 503 at once. ``worker_connections`` is one above
    that cap so gunicorn never stops accepting (a refused client gets an answer, not a hang)."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.worker_processes,
        "worker_class": GuardedThreadWorker.configure(
            max_connections=settings.max_connections,
            request_timeout=settings.request_timeout,
            preread_bytes=settings.max_body_bytes,
            board=ConnectionBoard(settings.worker_processes) if settings.worker_processes > 1 else None,
        ),
        "threads": settings.threads,
        "worker_connections": settings.max_connections + 1,
        "http_protocols": "h1",  # the gate reads HTTP/1 heads; no h2c prior knowledge
        "timeout": 120,
        # The background worker's stop is a share of this (supervisor.WORKER_STOP_SECONDS).
        "graceful_timeout": SHUTDOWN_GRACE_SECONDS,
        "keepalive": settings.keepalive_seconds,
        "control_socket_disable": True,
        # gunicorn's DEBUG level prints request lines, which may carry a token
        # (?token= on the WebSocket): its own logger never goes below INFO.
        "loglevel": "info" if settings.log_level == "debug" else settings.log_level,
        "accesslog": None,
        "errorlog": "-",
    }


def _assign_board_slot(server: Any, worker: Any) -> None:
    """In the arbiter, before forking ``worker``: its slot on the connection board."""
    if worker.board is not None:
        worker.board_slot = worker.board.claim({w.board_slot for w in server.WORKERS.values()})


def _free_board_slot(_server: Any, worker: Any) -> None:
    """In the arbiter, once ``worker`` has exited (however it died): its slot is free again."""
    if getattr(worker, "board", None) is not None:
        worker.board.release(worker.board_slot)


def _hook_stop_signals(worker: Any) -> None:
    """Before gunicorn's own handlers: on a stop signal (SIGTERM: graceful; SIGINT, SIGQUIT:
    quick) the supervisor learns the process is stopping, so the background worker's exit (it
    got the same signal when the whole process group did) is not taken for a crash, and asks the
    worker to stop then (its share of the graceful timeout counts from the signal); on SIGTERM
    open viewer streams are told to close (1001) before gunicorn's graceful wait, which
    otherwise waits for every open WebSocket until graceful_timeout."""
    rt = worker.wsgi.extensions["agentmemory"]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, _stop_handler(rt, signal.getsignal(signum)))


def _stop_handler(rt: Any, previous: Any) -> Any:
    def on_stop(signum: int, frame: Any) -> None:
        supervisor = getattr(rt, "supervisor", None)
        if supervisor is not None:
            supervisor.stopping()
        if signum == signal.SIGTERM:
            rt.hub.close()
        if callable(previous):
            previous(signum, frame)

    return on_stop


def _shutdown(rt: Any, supervisor: Any) -> None:
    """Stop the background worker (killed if it outlives its share of the graceful timeout,
    ``supervisor.WORKER_STOP_SECONDS``), then close the runtime (saves the vector index)."""
    if supervisor is not None:
        supervisor.stop()
    rt.close()


def _on_worker_exit(_server: Any, worker: Any) -> None:
    """When a worker exits (SIGTERM, SIGINT, a restart), stop its background worker and close its
    runtime: jobs stop, subsystems close and the database checkpoints its WAL into the main file,
    so the .db file alone holds everything after a clean stop."""
    rt = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("agentmemory")
    if rt is not None:
        _shutdown(rt, getattr(rt, "supervisor", None))


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because something already listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def announce_and_serve(settings: Settings, *, dev: bool = False) -> None:
    """Check the settings that can stop a start-up (auth off on a public interface) before
    anything binds, print where the server listens and where its token is, then serve."""
    if port_in_use(settings.host, settings.port):
        raise SettingsError(
            f"port {settings.port} on {settings.host} is already in use (another agentmemory server?); "
            "stop it or choose another port with --port or PORT"
        )
    chosen = bool(settings.secret)
    settings = auth.resolve(settings)  # creates the token file once, before gunicorn forks
    try:  # a newer schema, a file that is no database, a PostgreSQL server that does not answer
        storage.preflight(settings.database_path, settings.database_url)
    except AppError as exc:
        fix = exc.details.get("fix")
        message = f"agentmemory-python: not serving: {exc.message}" + (f". To fix: {fix}" if fix else "")
        raise SystemExit(message) from None
    token = (
        "auth off"
        if not settings.secret
        else "token from AGENTMEMORY_SECRET"
        if chosen
        else (f"token in {settings.secret_path}")
    )
    print(
        f"agentmemory-python listening on http://{settings.host}:{settings.port} "
        f"(database {storage.location(settings.database_path, settings.database_url)}; {token})",
        flush=True,
    )
    serve(settings, dev=dev)


def main(argv: list[str] | None = None) -> None:
    """``python src/app.py``: the same options as ``agentmemory serve``."""
    parser = argparse.ArgumentParser(description="agentmemory-python server")
    parser.add_argument("--dev", action="store_true", help="use the Werkzeug development server")
    parser.add_argument("--host", help="interface to bind (default HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default III_REST_PORT / PORT or 3111)")
    parser.add_argument("--threads", type=int, help="gunicorn gthread threads")
    opts = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", opts.host), ("port", opts.port), ("threads", opts.threads)) if v}
    try:
        announce_and_serve(Settings.from_env(os.environ, **overrides), dev=opts.dev)
    except SettingsError as exc:
        raise SystemExit(f"agentmemory-python: {exc}") from None


if __name__ == "__main__":
    main()
