"""Secrets and exposure: no secret in any log line (any logger, tracebacks included), error
message, export or backup; the viewer's token leaves the address bar on the first load; the
dependency audit is part of every test run; the threat model's every row names a real test."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect as ws_connect

from conftest import HUB_REPO, ROOT, LiveServer, clean_environ, hook, post, sync_env
from test_privacy import SECRETS
from test_viewer_browser import browser  # noqa: F401 - the Chromium fixture

from agentmemory_server.kernel import privacy

AGENTMEMORY = str(Path(sys.executable).with_name("agentmemory"))
# A bearer token as the server generates them: no known format, only literal masking catches it.
TOKEN = "Zq8vN2xLr4T6yB1cW9sK3mP7dF5gH0jA"
PLANTED = [SECRETS[name] for name in ("openai_proj", "github_classic", "aws", "huggingface", "slack")]


def test_every_log_line_is_redacted_whatever_the_logger_and_tracebacks_too():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    privacy.redact_logs([TOKEN, None, "short"])
    try:
        for name in ("agentmemory.http", "gunicorn.error", "werkzeug", "huggingface_hub", "urllib3"):
            logging.getLogger(name).warning("request with %s and %s", TOKEN, PLANTED[0])
        logging.getLogger("agentmemory").warning(f"inline {PLANTED[1]} {{'password': 'hunter2-hunter2-xyz'}}")
        try:
            raise RuntimeError(f"upstream said: token={TOKEN} key {PLANTED[2]}")
        except RuntimeError:
            logging.getLogger("agentmemory.llm").exception("call failed for %s", PLANTED[3])
    finally:
        privacy.stop_redacting_logs()
        root.removeHandler(handler)
    out = stream.getvalue()
    assert TOKEN not in out and not any(secret in out for secret in PLANTED)
    assert out.count("[REDACTED_SECRET]") >= 14
    assert "Traceback" in out and "RuntimeError: upstream said" in out  # the traceback is kept, redacted
    assert "short" not in out  # too short to be a configured secret: nothing else was touched
    assert not hasattr(logging.getLogRecordFactory(), "redacted_literals")  # undone for the other tests


def test_the_server_log_never_holds_its_token_or_a_planted_secret(tmp_path):
    server = LiveServer(tmp_path, {"AGENTMEMORY_SECRET": TOKEN, "AGENTMEMORY_LOG_LEVEL": "debug"}, [])
    try:
        # A refused request is logged with its path: here the path carries the token and a key.
        r = requests.get(server.api(f"/memories/{TOKEN}{PLANTED[1]}"), headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert post(server.api("/observe"), hook(data={"tool_output": " ".join(PLANTED)}), headers=auth).status_code == 201
        log = server.log()
        assert "refused 1 request(s)" in log and "[REDACTED_SECRET]" in log
        assert TOKEN not in log and not any(secret in log for secret in PLANTED)
    finally:
        server.stop()


def test_error_messages_never_echo_a_secret(tmp_path):
    server = LiveServer(tmp_path, {}, [])
    try:
        replies = [
            requests.get(server.api(f"/no/such/{PLANTED[1]}")).json(),
            post(server.api("/mcp/call"), {"name": PLANTED[0], "arguments": {}}).json(),
            post(server.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                      "params": {"name": PLANTED[2], "arguments": {}}},
                 headers={"Accept": "application/json"}).json(),
        ]
        with ws_connect(f"ws://127.0.0.1:{server.port}/stream/mem-live/viewer", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            ws.send(json.dumps({"id": 7, "tool": PLANTED[3], "args": {}}))
            while (message := json.loads(ws.recv(timeout=10))).get("id") != 7:
                pass
            replies.append(message)
        text = json.dumps(replies)
        assert not any(secret in text for secret in PLANTED), text
        assert text.count("[REDACTED_SECRET]") >= 4  # each error still says what was wrong, minus the secret
    finally:
        server.stop()


def test_exports_and_backups_hold_no_secret(tmp_path, hf_hub):
    server = LiveServer(tmp_path, {}, [])
    try:
        for i, secret in enumerate(PLANTED):
            writes = [
                ("/observe", hook(f"s{i}", data={"tool_output": f"deploy with {secret}", "env": {"api_key": secret}})),
                ("/remember", {"content": f"the key is {secret}", "title": f"about {secret}"}),
                ("/lessons", {"content": f"never paste {secret} into chat"}),
                ("/slot", {"label": f"notes{i}", "content": f"creds {secret}", "scope": "global"}),
                ("/working/set", {"sessionId": f"s{i}", "key": f"k{i}",
                                  "value": {"token": secret, "note": f"use {secret}"}}),
                ("/mcp/call", {"name": "memory_save", "arguments": {"content": f"mcp note {secret}"}}),
            ]
            for path, body in writes:
                r = post(server.api(path), body)
                assert r.status_code in (200, 201), (path, r.text)
        exported = requests.get(server.api("/export"), timeout=60).text
        env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(server.data_dir), "HOME": str(tmp_path)}
        cli_export = tmp_path / "export.json"
        assert subprocess.run([AGENTMEMORY, "-q", "export", "-o", str(cli_export)], env=env, capture_output=True,
                              timeout=120).returncode == 0
        local = take_both_backups(env, hf_hub, tmp_path, server.data_dir)
        blobs = {"GET /export": exported.encode(), "agentmemory export": cli_export.read_bytes(),
                 "local snapshot": Path(local["file"]).read_bytes(),
                 **{f"HF {name}": data for name, data in hf_hub.files(HUB_REPO).items()}}
        assert "about [REDACTED_SECRET]" in exported  # the records are there, stripped
        for where, data in blobs.items():
            for secret in PLANTED:
                assert secret.encode() not in data, f"{secret[:8]}... found in {where}"
    finally:
        server.stop()


def take_both_backups(env: dict, hub, tmp_path, data_dir) -> dict:
    """`agentmemory backup --local` and `agentmemory backup` (to the fake Hub); the local one's report."""
    local = subprocess.run([AGENTMEMORY, "backup", "--local"], env=env, capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr
    remote = subprocess.run([AGENTMEMORY, "backup"], env=sync_env(hub, tmp_path, data_dir), capture_output=True,
                            text=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    return json.loads(local.stdout)


def test_a_forgotten_memory_is_not_in_the_next_backups(tmp_path, hf_hub):
    """A memory deleted with /forget is gone from the bytes of the next local snapshot and HF
    backup, not only from their tables: a page copy used to carry its words in the full-text
    index's segments (an FTS5 delete is a tombstone until the segments merge)."""
    server = LiveServer(tmp_path, {}, [])
    try:
        kept = post(server.api("/remember"), {"content": "the heron keepsake stays on record"})
        gone = post(server.api("/remember"), {"content": "the vault phrase is zanzibarquokka"})
        assert kept.status_code == gone.status_code == 201
        forgot = post(server.api("/forget"), {"memoryId": gone.json()["memory"]["id"]})
        assert forgot.status_code == 200 and forgot.json()["deleted"] == 1
        env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(server.data_dir), "HOME": str(tmp_path)}
        local = take_both_backups(env, hf_hub, tmp_path, server.data_dir)
        copies = {"local snapshot": Path(local["file"]).read_bytes(),
                  "HF agentmemory.db": hf_hub.files(HUB_REPO)["agentmemory.db"]}
        for where, data in copies.items():
            assert b"keepsake" in data, where  # the copy holds the records that are kept
            assert b"zanzibarquokka" not in data, f"the forgotten memory is still in the {where}"
    finally:
        server.stop()


def test_a_token_in_the_viewer_url_is_used_once_and_leaves_the_address_bar(tmp_path, browser):  # noqa: F811
    server = LiveServer(tmp_path, {"AGENTMEMORY_SECRET": TOKEN}, [])
    try:
        for link in (f"/viewer?token={TOKEN}#sessions", f"/agentmemory/viewer#token={TOKEN}"):
            context = browser.new_context()
            page = context.new_page()
            try:
                page.goto(server.url + "/agentmemory/livez")
                page.goto(server.url + link)
                page.locator("#conn-text").filter(has_text="live").wait_for(timeout=15000)
                assert TOKEN not in page.url and "token" not in page.url
                assert page.url.endswith("#sessions") == link.endswith("#sessions")  # the rest of the link stays
                assert page.locator("#auth").is_hidden()  # authenticated with the token from the link
                assert page.evaluate("sessionStorage.getItem('agentmemory.token')") == TOKEN
                assert page.evaluate("localStorage.getItem('agentmemory.token')") is None
                assert page.evaluate("history.length") == 3  # about:blank, livez, the viewer: nothing added
                page.go_back()  # the entry with the token was replaced: back is the page before it
                assert page.url == server.url + "/agentmemory/livez"
            finally:
                context.close()
    finally:
        server.stop()


def test_the_dependency_audit_runs_with_every_test_run_and_exceptions_are_reasoned():
    run_sh = (ROOT / "tests" / "run.sh").read_text()
    assert re.search(r"^pip-audit .*--skip-editable", run_sh, re.M), "tests/run.sh must run pip-audit"
    assert "pip-audit" in (ROOT / "requirements-dev.txt").read_text()
    for line in (ROOT / "tests" / "audit-exceptions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            vuln_id, _, reason = line.partition(" ")
            assert re.match(r"^(PYSEC|GHSA|CVE)-", vuln_id) and len(reason.strip()) > 20, line


THREAT_ROW = re.compile(r"^\|[^|]+\|[^|]+\|\s*`(tests/test_\w+\.py)::(test_\w+)`\s*\|\s*$")


def test_every_threat_model_row_names_a_test_that_exists():
    rows = [line for line in (ROOT / "docs" / "threat-model.md").read_text().splitlines()
            if line.startswith("|") and not line.startswith("|---") and "Threat" not in line]
    assert len(rows) >= 20
    for row in rows:
        match = THREAT_ROW.match(row)
        assert match, f"a threat-model row must end with one `tests/test_x.py::test_name`: {row}"
        source = (ROOT / match.group(1)).read_text()
        assert re.search(rf"^def {match.group(2)}\(", source, re.M), f"no such test: {match.group(0)}"
