"""Privacy stripping: every secret family of U§4.1 (and a few more) never survives."""

import pytest

from agentmemory_server.kernel.privacy import REDACTED, REDACTED_SECRET, strip_private_data, strip_text
from agentmemory_server.storage.urls import without_password

SECRETS = {
    "assignment": "api_key=abcdefghijklmnopqrstuvwxyz0123",
    "assignment_json_text": '{"password": "correct-horse-battery-staple-99"}',
    "env_token": "GITHUB_TOKEN=ghx1234567890abcdefghijklmnop",
    "bearer": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz.0123456789",
    "openai": "sk-abcdefghijklmnopqrstuvwxyz012345",
    "openai_proj": "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    "anthropic": "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
    "stripe": "sk_live_abcdefghijklmnop1234",
    "github_classic": "ghp_" + "a1B2c3D4e5" * 4,
    "github_server": "ghs_" + "Z9y8X7w6V5" * 4,
    "github_pat": "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "slack": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "google": "AIza" + "SyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "npm": "npm_" + "abcdefghij" * 3 + "klmnop",
    "gitlab": "glpat-abcdefghijklmnopqrst",
    "digitalocean": "dop_v1_" + "0123456789abcdef" * 4,
    "huggingface": "hf_" + "abcdefghijklmnopqrstuvwxyzABCDEF",
}


@pytest.mark.parametrize("family", sorted(SECRETS))
def test_each_secret_family_is_redacted(family):
    secret = SECRETS[family]
    out = strip_text(f"before {secret} after")
    assert REDACTED_SECRET in out
    # The distinctive part of the secret is gone, the surrounding text is kept.
    assert secret[-12:] not in out
    assert out.startswith("before") and out.endswith("after")


def test_private_tags_case_insensitive_and_multiline():
    out = strip_text("keep <PRIVATE>my\nhome address</private> keep <private>x</Private>")
    assert out == f"keep {REDACTED} keep {REDACTED}"


def test_pem_private_key_terminated_and_unterminated():
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----"
    assert strip_text(f"x {key} y") == f"x {REDACTED_SECRET} y"
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nmore"
    assert strip_text("x " + cut) == f"x {REDACTED_SECRET}"


def test_url_credentials_keep_scheme_and_host():
    out = strip_text("clone https://alice:s3cr3t@github.com/org/repo.git and postgres://u:p@db:5432/x")
    assert out == (f"clone https://{REDACTED_SECRET}@github.com/org/repo.git and "
                   f"postgres://{REDACTED_SECRET}@db:5432/x")


def test_multiple_secrets_in_one_string():
    out = strip_text(f"{SECRETS['aws']} then {SECRETS['openai']} then {SECRETS['jwt']}")
    assert out.count(REDACTED_SECRET) == 3


@pytest.mark.parametrize("text", ["", "sk-abc", "token", "password: short", "ghp_short",
                                  "plain text about tokens and secrets", "AKIA123"])
def test_short_or_harmless_strings_untouched(text):
    assert strip_text(text) == text


def test_consecutive_calls_are_consistent():
    text = f"a {SECRETS['github_classic']} b"
    assert strip_text(text) == strip_text(text) == strip_text(strip_text(text))


def test_structures_are_walked_and_stay_json():
    data = {"tool_input": {"command": f"curl -H 'Authorization: Bearer {'x' * 30}'"},
            "env": {"DB_PASSWORD": "hunter2hunter2", "client_secret": "abcdef", "max_tokens": 100,
                    "auth": "none"},
            "list": [SECRETS["slack"], 3, None, True]}
    out = strip_private_data(data)
    assert out["env"]["DB_PASSWORD"] == REDACTED_SECRET
    assert out["env"]["client_secret"] == REDACTED_SECRET
    assert out["env"]["max_tokens"] == 100
    assert out["env"]["auth"] == "none"  # too short to be a secret
    assert REDACTED_SECRET in out["tool_input"]["command"]
    assert out["list"] == [REDACTED_SECRET, 3, None, True]
    assert data["env"]["DB_PASSWORD"] == "hunter2hunter2"  # the input is not mutated


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://me:s3cret@db:5432/mem", "postgresql://me:***@db:5432/mem"),
    ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),  # IPv6 keeps its brackets
    ("postgresql://DB.example/mem?user=me&password=s3cret&sslmode=require",
     "postgresql://DB.example/mem?user=me&password=***&sslmode=require"),
    ("unix:///run/redis.sock?password=s3cret&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ("postgresql://me:p%40ss@db/mem", "postgresql://me:***@db/mem"),
    ("postgresql://me@db/mem?sslmode=require", "postgresql://me@db/mem?sslmode=require"),
])
def test_a_service_url_is_shown_without_its_password(url, shown):
    assert without_password(url) == shown
