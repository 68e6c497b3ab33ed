#!/usr/bin/env bash
# Run the whole test suite: ./tests/run.sh [pytest args...]
#
# Uses the active virtualenv, or creates ./.venv, and installs what the tests need first:
# the Python dev requirements and, when missing, the system packages some tests drive for real
# (installed with apt-get when running as root; otherwise those tests say what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# System packages the tests use for real: redis-server (working memory), chromium (the viewer, via Playwright).
SYSTEM_PACKAGES=(redis-server chromium)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}"
    # A failed install must not hide the rest of the suite: the tests that need a missing
    # package say so themselves.
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      echo "warning: apt-get could not install: ${missing[*]}" >&2
    fi
  else
    echo "warning: missing system packages (tests that need them will report it): ${missing[*]}" >&2
  fi
fi

# npm packages the MCP tests drive for real (upstream's MCP shim and Claude Code hook scripts, the
# MCP Inspector CLI), installed once into a cache outside the repository.
NODE_CACHE_DIR="${AGENTMEMORY_TEST_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentmemory-python/node}"
export AGENTMEMORY_TEST_NODE_CACHE="$NODE_CACHE_DIR"
if command -v npm >/dev/null && command -v node >/dev/null; then
  mapfile -t node_packages < tests/node-packages.txt
  marker="$NODE_CACHE_DIR/node_modules/.agentmemory-packages"
  if [ "$(cat "$marker" 2>/dev/null)" != "$(printf '%s\n' "${node_packages[@]}")" ]; then
    echo "installing npm packages for the MCP tests into $NODE_CACHE_DIR"
    mkdir -p "$NODE_CACHE_DIR"
    npm install --no-audit --no-fund --loglevel=error --prefix "$NODE_CACHE_DIR" "${node_packages[@]}" >/dev/null
    printf '%s\n' "${node_packages[@]}" > "$marker"
  fi
else
  echo "warning: node/npm not found; the upstream shim, hook-script and Inspector tests will be skipped" >&2
fi

exec python -m pytest "$@"
