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

# System packages the tests use for real (later suites add chromium).
SYSTEM_PACKAGES=(redis-server)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: missing system packages (tests that need them will report it): ${missing[*]}" >&2
  fi
fi

exec python -m pytest "$@"
