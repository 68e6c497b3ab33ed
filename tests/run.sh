#!/usr/bin/env bash
# Run the whole test suite: ./tests/run.sh [pytest args...]
# (no arguments: the suite, then its runtime-based tests again on PostgreSQL)
#
# Uses the active virtualenv, or creates ./.venv, and installs what the tests need first: the
# system packages some tests drive for real (apt-get, when running as root), Node.js/npm and the
# npm packages, and the Python dev requirements. Anything that cannot be installed stops the run
# here with a non-zero exit: a missing dependency must fail CI, never turn tests into skips.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "tests/run.sh: $*" >&2; exit 1; }

# System packages the tests use for real, as "Debian package:command it provides":
# redis-server (working memory), chromium (the viewer, via Playwright), systemd-analyze (checks the
# unit `agentmemory service install` writes).
SYSTEM_PACKAGES=(redis-server:redis-server chromium:chromium systemd:systemd-analyze)
missing=()
for entry in "${SYSTEM_PACKAGES[@]}"; do
  command -v "${entry#*:}" >/dev/null 2>&1 || missing+=("${entry%%:*}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]}, or run this script as root on Debian/Ubuntu)"
  fi
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed; cannot install: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
  for entry in "${SYSTEM_PACKAGES[@]}"; do
    command -v "${entry#*:}" >/dev/null 2>&1 || die "${entry#*:} is still missing after installing ${entry%%:*}"
  done
fi

# Node.js and npm run upstream's MCP shim, its Claude Code hook scripts and the MCP Inspector CLI,
# and install OpenCode (the opencode-ai package: one binary for this platform).
# They are not apt-installed here (distributions and NodeSource package them differently).
for cmd in node npm; do
  command -v "$cmd" >/dev/null || die "$cmd not found: install Node.js 18 or newer with npm (e.g. apt-get install nodejs npm, or from nodejs.org)"
done

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# The npm packages the MCP and OpenCode tests drive for real, installed once into a cache outside the
# repository.
NODE_CACHE_DIR="${AGENTMEMORY_TEST_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentmemory-python/node}"
export AGENTMEMORY_TEST_NODE_CACHE="$NODE_CACHE_DIR"
mapfile -t node_packages < tests/node-packages.txt
marker="$NODE_CACHE_DIR/node_modules/.agentmemory-packages"
if [ "$(cat "$marker" 2>/dev/null)" != "$(printf '%s\n' "${node_packages[@]}")" ]; then
  echo "installing npm packages for the MCP tests into $NODE_CACHE_DIR"
  mkdir -p "$NODE_CACHE_DIR"
  # opencode-ai's install step runs the binary once, which leaves /tmp/opencode behind: give the
  # install a temporary directory of its own, removed after it.
  npm_tmp="$(mktemp -d)"
  TMPDIR="$npm_tmp" npm install --no-audit --no-fund --loglevel=error --prefix "$NODE_CACHE_DIR" "${node_packages[@]}" >/dev/null \
    || { rm -rf "$npm_tmp"; die "npm install failed for: ${node_packages[*]}"; }
  rm -rf "$npm_tmp"
  printf '%s\n' "${node_packages[@]}" > "$marker"
fi

# Lint, format, types and the import contracts over the package, before any test runs.
echo "checking src/: ruff, ruff format, mypy, import contracts"
python -m ruff check --quiet src || die "ruff found problems (python -m ruff check src)"
python -m ruff format --check --quiet src || die "code is not formatted (python -m ruff format src)"
python -m mypy --no-error-summary || die "mypy found type errors (python -m mypy)"
lint-imports pyproject.toml >/dev/null || die "an import contract is broken (lint-imports)"

# Known vulnerabilities in every installed dependency (our own editable package aside), from PyPI's
# advisory data (the OSV service is not reachable from every machine that runs this). PyPI gives
# no severity, so any advisory fails the run unless tests/audit-exceptions.txt says why it does not
# apply. Needs PyPI, like the pip install above. A version pypi.org does not publish (installed
# from a local mirror) has no advisory data there: it is counted and named, not failed.
echo "auditing dependencies: pip-audit"
audit_ignores=()
while read -r vuln _reason; do
  [[ -z "$vuln" || "$vuln" == \#* ]] || audit_ignores+=(--ignore-vuln "$vuln")
done < tests/audit-exceptions.txt
audit_report="$(mktemp)"
pip-audit --skip-editable --progress-spinner off --vulnerability-service pypi "${audit_ignores[@]}" \
  --format json --output "$audit_report" 2>/dev/null \
  || { cat "$audit_report"; rm -f "$audit_report"; die "pip-audit found a known vulnerability (or could not reach PyPI); upgrade, or reason it in tests/audit-exceptions.txt"; }
python - "$audit_report" <<'SUMMARY'
import json, sys
deps = json.load(open(sys.argv[1]))["dependencies"]
skipped = sorted(d["name"] for d in deps if d.get("skip_reason"))
print(f"pip-audit: {len(deps) - len(skipped)} dependencies audited, no known vulnerability; "
      f"{len(skipped)} not auditable (version not published on PyPI){': ' + ', '.join(skipped) if skipped else ''}")
SUMMARY
rm -f "$audit_report"

if [ "$#" -gt 0 ]; then
  exec python -m pytest "$@"
fi
# With no arguments (README's command, and CI): the suite, then on PostgreSQL the runtime-based
# tests the first pass ran on SQLite only. The modules in conftest.BOTH_BACKENDS, the
# postgresql_only tests and those that start their own PostgreSQL servers ran on it in the first
# pass already, and the second leaves them out (conftest.pytest_collection_modifyitems).
#
# Both passes run test files side by side in AGENTMEMORY_TEST_WORKERS processes (pytest-xdist;
# default 2, 0 runs them one by one in this process). Most of a test's time is spent waiting for
# the servers, databases and browsers it starts, not computing: with two files at a time the
# suite takes half the time on 2 cores. A file stays on one worker (--dist loadfile), so its
# module fixtures start once; every worker starts its own redis-server and PostgreSQL when it
# needs them, and every test already picks free ports and its own directories.
workers="${AGENTMEMORY_TEST_WORKERS:-2}"
[[ "$workers" =~ ^[0-9]+$ ]] || die "AGENTMEMORY_TEST_WORKERS must be a whole number (0: no workers), got '$workers'"
parallel=(-n "$workers")
[ "$workers" -gt 0 ] && parallel+=(--dist loadfile)
python -m pytest "${parallel[@]}"
echo "again on PostgreSQL: AGENTMEMORY_TEST_BACKEND=postgresql python -m pytest -q -k postgresql ${parallel[*]}"
AGENTMEMORY_TEST_BACKEND=postgresql exec python -m pytest -q -k postgresql "${parallel[@]}"
