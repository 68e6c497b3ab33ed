"""Auth is on by default (upstream 0.9.30): a token is generated into a 0600 file beside the
database, every client of this machine reads it from there, and turning auth off is an explicit
setting refused on a public interface."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import requests

from agentmemory_server.kernel import auth
from agentmemory_server.kernel.settings import Settings, SettingsError
from conftest import SRC, LiveServer, clean_environ, wait_for


def default_env() -> dict[str, str]:
    """Our test environment minus the test suite's AGENTMEMORY_AUTH=off: the product default."""
    env = clean_environ()
    env.pop("AGENTMEMORY_AUTH")
    return env


@pytest.fixture
def default_server(tmp_path):
    servers: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        server = LiveServer(tmp_path, {}, [], start=False)
        server.env = {k: v for k, v in server.env.items() if k != "AGENTMEMORY_AUTH"} | env
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def test_a_server_started_with_no_settings_requires_a_generated_token(default_server):
    server = default_server()
    secret = server.data_dir / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    token = secret.read_text().strip()
    assert len(token) >= 40
    assert requests.get(server.api("/livez"), timeout=10).status_code == 200  # open by design
    refused = requests.get(server.api("/health"), timeout=10)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(server.api("/health"), headers=headers, timeout=10).status_code == 200
    log = server.log_path.read_text()
    assert str(secret) in log and token not in log  # where the token is, never the token
    server.stop()
    server.start()  # a restart keeps the same token
    assert secret.read_text().strip() == token
    assert requests.get(server.api("/health"), headers=headers, timeout=10).status_code == 200


def test_an_explicit_secret_wins_and_no_file_is_written(default_server):
    server = default_server(AGENTMEMORY_SECRET="chosen-token-0123456789")
    assert not (server.data_dir / "secret").exists()
    ok = requests.get(server.api("/health"), headers={"Authorization": "Bearer chosen-token-0123456789"}, timeout=10)
    assert ok.status_code == 200
    assert requests.get(server.api("/health"), timeout=10).status_code == 401


def test_the_mcp_wrapper_reads_the_token_file(default_server):
    server = default_server()
    env = {**default_env(), "AGENTMEMORY_URL": server.url, "AGENTMEMORY_DATA_DIR": str(server.data_dir)}
    probe = ("from agentmemory_server.adapters import mcp_stdio; "
             "print(len(mcp_stdio.rest('GET', '/mcp/tools')['tools']))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=SRC, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and int(out.stdout) > 30, out.stderr
    env.pop("AGENTMEMORY_DATA_DIR")  # no token to be found: a 401 that says where the token lives
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "HOME": str(server.data_dir.parent)}, cwd=SRC,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "401" in out.stderr and "~/.agentmemory/secret" in out.stderr


def test_auth_off_is_refused_on_a_public_interface(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path), auth="off", host="0.0.0.0")
    with pytest.raises(SettingsError, match="AGENTMEMORY_AUTH=off with HOST=0.0.0.0"):
        auth.resolve(settings)
    assert auth.resolve(settings.replace(allow_open_bind=True)).secret is None  # explicitly allowed
    assert auth.resolve(settings.replace(host="127.0.0.1")).secret is None
    assert not (tmp_path / "secret").exists()
    # The server says so in one line and binds nothing.
    env = {**default_env(), "AGENTMEMORY_DATA_DIR": str(tmp_path), "AGENTMEMORY_AUTH": "off", "HOST": "0.0.0.0",
           "PORT": "9"}
    proc = subprocess.run([sys.executable, str(SRC / "app.py")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "AGENTMEMORY_ALLOW_OPEN_BIND" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_processes_creating_the_token_agree(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path))
    first = auth.resolve(settings).secret
    assert first and auth.resolve(settings).secret == first == auth.client_token(settings)
    (tmp_path / "secret").unlink()
    fd = os.open(tmp_path / "secret", os.O_WRONLY | os.O_CREAT, 0o600)  # someone else's token appears
    os.write(fd, b"theirs-0123456789\n")
    os.close(fd)
    assert auth.resolve(settings).secret == "theirs-0123456789"
    wait_for(lambda: (tmp_path / "secret").exists(), timeout=1, message="token file")


def test_refused_requests_are_counted_logged_and_audited_without_the_token(default_server):
    server = default_server(AGENTMEMORY_SECRET="right-token-0123456789")
    for header in ({}, {"Authorization": "Bearer wrong-token-9876543210"}, {"Authorization": "Bearer wrong-token-9876543210"}):
        assert requests.post(server.api("/observe"), json={"sessionId": "s"}, headers=header, timeout=10).status_code == 401
    good = {"Authorization": "Bearer right-token-0123456789"}
    auth_health = requests.get(server.api("/health"), headers=good, timeout=10).json()["auth"]
    assert auth_health["denied"] == 3 and auth_health["byReason"] == {"missing token": 1, "wrong token": 2}
    assert auth_health["lastDenied"]["path"] == "/agentmemory/observe"
    audit = requests.get(server.api("/audit"), params={"operation": "auth_denied"}, headers=good, timeout=10).json()
    assert audit["entries"] and audit["entries"][0]["details"]["count"] == 1  # one aggregate row a minute
    log = wait_for(lambda: (t := server.log_path.read_text()) and "refused 1 request(s)" in t and t,
                   timeout=10, message="a log line about the refused request")
    assert "wrong-token" not in log and "right-token" not in log and log.count("refused ") == 1  # rate-limited
    # The viewer's one-call snapshot and the status report carry the count too (the dashboard
    # shows it; tests/test_viewer_browser.py checks the page).
    snap = requests.get(server.api("/viewer/snapshot"), headers=good, timeout=10).json()
    assert snap["health"]["auth"]["denied"] == 3
    alerts = requests.get(server.api("/status"), headers=good, timeout=10).json()["alerts"]
    assert any(a["message"].startswith("3 request(s) refused") and "AGENTMEMORY_SECRET" in a["fix"] for a in alerts)


def test_a_body_must_be_sent_as_json(tmp_path):
    """Upstream 0.9.30: writes with a body need Content-Type: application/json (a browser cannot send
    that cross-site without a preflight, so a page cannot post into a local server)."""
    from agentmemory_server.adapters.web import create_app
    from agentmemory_server.wiring import build_runtime

    rt = build_runtime(Settings.from_env({}, data_dir=str(tmp_path), auth="off", background_jobs=False,
                                         embedding_provider="none"))
    try:
        client = create_app(runtime=rt).test_client()
        body = '{"sessionId": "s", "content": "from a form"}'
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            r = client.post("/agentmemory/observe", data=body, headers=headers)
            assert r.status_code == 415 and r.json["code"] == "unsupported_media_type", content_type
        assert client.post("/agentmemory/observe", data=body,
                           headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 201
        assert client.post("/agentmemory/capture/drain").status_code == 200  # no body: nothing to declare
    finally:
        rt.close()


def test_the_mcp_wrapper_sends_the_local_token_file_only_to_this_machine(tmp_path, monkeypatch):
    """Upstream 0.9.30's clients read the secret file only for a loopback URL: a wrapper pointed at
    a team server elsewhere must not hand it this machine's token."""
    from agentmemory_server.adapters import mcp_stdio

    for name in [k for k in os.environ if k.startswith("AGENTMEMORY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AGENTMEMORY_DATA_DIR", str(tmp_path))
    token = auth.resolve(Settings.from_env({}, data_dir=str(tmp_path))).secret
    for url in ("http://127.0.0.1:3111", "http://localhost:3111/", "http://[::1]:3111", "http://127.0.0.2:9"):
        assert mcp_stdio.token_for(url + "/agentmemory/mcp/tools") == token, url
    for url in ("http://10.0.0.7:3111", "https://memory.example.com", "http://localhost.example.com:3111"):
        assert mcp_stdio.token_for(url + "/agentmemory/mcp/tools") is None, url
    monkeypatch.setenv("AGENTMEMORY_SECRET", "explicit-token-0123456789")  # an explicit secret goes anywhere
    assert mcp_stdio.token_for("https://memory.example.com/agentmemory/mcp/tools") == "explicit-token-0123456789"


def test_cli_processes_never_log_the_generated_token(tmp_path):
    """The background worker and the admin commands are started without AGENTMEMORY_SECRET: they
    mask the token from the secret file in their logs, as the server does."""
    token = auth.resolve(Settings.from_env({}, data_dir=str(tmp_path))).secret
    probe = ("import logging, sys; from agentmemory_server.adapters import cli; cli.main(['stats']); "
             "logging.getLogger('agentmemory.probe').warning('leaked %s', open(sys.argv[1]).read().strip())")
    env = {**default_env(), "AGENTMEMORY_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "secret")], env=env, cwd=SRC,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "leaked " in out.stderr and token not in out.stderr + out.stdout


def test_the_readme_quick_start_works_as_written_with_auth_on(default_server, tmp_path):
    """README's quick start, run as a new user would against a server started with no settings
    (auth on, the token generated into ~/.agentmemory/secret): only the port differs."""
    import json
    import re
    from pathlib import Path

    readme = (SRC.parent / "README.md").read_text()
    start = readme.split("## Quick start")[1].split("\n## ")[0]
    block = next(b for b in re.findall(r"```bash\n(.+?)\n```", start, re.DOTALL) if "curl" in b)
    server = default_server(AGENTMEMORY_DATA_DIR=str(tmp_path / ".agentmemory"))  # the default data dir of HOME
    assert server.env["HOME"] == str(tmp_path)
    script = block.replace("localhost:3111", f"localhost:{server.port}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env={**default_env(), "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    decoder, answers, at = json.JSONDecoder(), [], 0
    while at < len(done.stdout.strip()):  # curl -s prints the two answers back to back
        answer, at = decoder.raw_decode(done.stdout, at)
        answers.append(answer)
    observed, found = answers
    assert observed.get("observationId"), done.stdout
    assert found["count"] == 1 and found["results"][0]["observation"]["id"] == observed["observationId"]
    assert Path(tmp_path / ".agentmemory" / "secret").exists()
