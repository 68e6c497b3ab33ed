"""deploy/: the team example (PostgreSQL with pgvector, Redis, two app nodes behind a proxy) is
a valid compose file whose every variable is a real setting and is documented. No Docker
needed: the file is parsed and checked against the settings table and docs/deploy.md."""

from __future__ import annotations

import re

import yaml

from agentmemory_server.kernel.settings import SETTINGS
from conftest import ROOT

DEPLOY = ROOT / "deploy"
KNOWN = {var for s in SETTINGS for var in s.env}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_the_compose_file_has_postgres_redis_two_nodes_and_a_proxy():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "app-a", "app-b", "proxy"}
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert "C.UTF-8" in services["postgres"]["environment"]["POSTGRES_INITDB_ARGS"]
    for node in ("app-a", "app-b"):
        env = services[node]["environment"]
        assert env["AGENTMEMORY_DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["AGENTMEMORY_DATABASE_URL"]
        assert env["WORKING_MEMORY_BACKEND"] == "redis" and env["REDIS_URL"].startswith("redis://redis:")
        assert env["HOST"] == "0.0.0.0" and env["AGENTMEMORY_SECRET"]  # auth stays on off loopback
        assert services[node]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[node]["volumes"] == [f"{node}:/data"]  # each node its own index directory
    assert services["app-a"]["environment"]["AGENTMEMORY_NODE_ID"] != services["app-b"]["environment"]["AGENTMEMORY_NODE_ID"]
    assert services["proxy"]["ports"] == ["${PROXY_PORT:-8080}:8080"]


def test_every_app_variable_is_a_setting_and_documented():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    env = compose()["services"]["app-a"]["environment"]
    ours = [name for name in env if name not in ("HOST", "PORT")]
    unknown = [name for name in ours if name not in KNOWN]
    assert not unknown, f"not settings of this server: {unknown}"
    assert not [name for name in env if f"`{name}`" not in docs], "every app variable has a line in docs/deploy.md"


def test_every_interpolated_variable_is_in_the_example_env_file():
    text = (DEPLOY / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)(?::[-?][^}]*)?\}", text))
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used <= set(example), f"missing from deploy/.env.example: {used - set(example)}"
    assert all("CHANGE-ME" in example[name] for name in ("POSTGRES_PASSWORD", "AGENTMEMORY_SECRET"))


def test_the_proxy_spreads_over_both_nodes_and_upgrades_websockets():
    conf = (DEPLOY / "nginx.conf").read_text()
    port = compose()["services"]["app-a"]["environment"]["PORT"]
    assert f"server app-a:{port}" in conf and f"server app-b:{port}" in conf
    assert "proxy_set_header Upgrade $http_upgrade" in conf and "proxy_http_version 1.1" in conf
    assert "listen 8080" in conf
