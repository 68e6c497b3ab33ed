#!/usr/bin/env bash
# Container boot: restore the database -> start the server -> back it up every minute.
#
#   ./start.sh          (the Docker image's CMD; also works outside Docker)
#
# With AGENTMEMORY_DATASET_REPO set, `sync.py restore --boot` runs first (a missing backup is
# fine; a Hub that stays down with no local database stops the boot, see README), then the
# server (`python src/app.py`, honouring HOST/PORT) and `sync.py loop` run side by side.
# SIGTERM/SIGINT go to both: the loop makes its final backup while the server drains (the
# platform's stop timeout may be short, so the bulk is saved at once); when both have exited,
# one last `sync.py backup` saves whatever the server wrote while stopping (usually nothing).
# If the server dies on its own, the same shutdown runs and start.sh exits non-zero.
#
# SIGTERM is the signal that matters: it is what a container runtime sends, and it always works.
# SIGINT (Ctrl-C) works only when this script did not inherit it as ignored: anything started
# from a background job (`cmd &`, nohup, many CI runners) does, and bash cannot trap a signal that
# was ignored on entry. The children always get SIGTERM, whatever stopped this script. A signal
# during the restore lets the restore finish (an interrupted restore is not a clean stop), then
# exits without starting the server.
set -uo pipefail
cd "$(dirname "$0")" || exit 1

PYTHON="${PYTHON:-python3}"
stopping=0
server_pid=""
loop_pid=""

log() { echo "[start.sh] $*" >&2; }
if [ -n "$(trap -p INT)" ]; then  # before our own trap: only an inherited "ignore" shows here
  log "SIGINT is ignored (inherited from whatever started this script): stop it with SIGTERM"
fi
# shellcheck disable=SC2329  # invoked by the traps below
on_signal() {
  stopping=1
  log "$1 received: shutting down"
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Wait for a child that was told to stop, even when more signals interrupt the wait; sets child_code.
child_code=0
wait_child() {
  local pid="$1"
  while :; do
    wait "$pid"
    child_code=$?
    alive "$pid" || break
  done
}

# Persistent storage: a HuggingFace Space with storage mounts /data; use it unless told otherwise.
persistent="${AGENTMEMORY_PERSISTENT_DIR:-/data}"
if [ -z "${AGENTMEMORY_DB:-}" ] && [ -z "${AGENTMEMORY_DATA_DIR:-}" ] && [ -d "$persistent" ] && [ -w "$persistent" ]; then
  export AGENTMEMORY_DATA_DIR="$persistent/agentmemory"
  log "persistent storage found: data in $AGENTMEMORY_DATA_DIR"
fi

sync_enabled=0
if [ -n "${AGENTMEMORY_DATASET_REPO:-}" ]; then
  sync_enabled=1
else
  log "AGENTMEMORY_DATASET_REPO is not set: no restore and no backups (data lives only on this disk)"
fi
if [ "${HOST:-127.0.0.1}" != "127.0.0.1" ] && [ -z "${AGENTMEMORY_SECRET:-}" ]; then
  log "WARNING: listening on ${HOST} without AGENTMEMORY_SECRET: anyone who can reach the port can read and write memories"
fi

# 1. Restore before anything opens the database.
if [ "$sync_enabled" = 1 ]; then
  if ! "$PYTHON" sync.py restore --boot; then
    log "restore failed: not starting the server"
    exit 1
  fi
fi
if [ "$stopping" = 1 ]; then
  exit 0
fi

# 2. The server and the backup loop, side by side.
"$PYTHON" src/app.py &
server_pid=$!
log "server started (pid $server_pid)"
start_loop() {
  "$PYTHON" sync.py loop &
  loop_pid=$!
  log "backup loop started (pid $loop_pid)"
}
[ "$sync_enabled" = 1 ] && start_loop

# 3. Wait for a signal or for a child to exit.
server_code=""
server_died=0
while [ "$stopping" = 0 ]; do
  if [ -n "$loop_pid" ]; then
    wait -n "$server_pid" "$loop_pid"
  else
    wait -n "$server_pid"
  fi
  [ "$stopping" = 1 ] && break
  if ! alive "$server_pid"; then
    wait "$server_pid"
    server_code=$?
    server_died=1
    log "server exited on its own with code $server_code"
    break
  fi
  if [ -n "$loop_pid" ] && ! alive "$loop_pid"; then
    wait "$loop_pid"
    log "backup loop exited with code $?; restarting it in 5 s"
    sleep 5
    start_loop
  fi
done

# 4. Shutdown: TERM to both, wait for both, then one last backup.
[ "$server_died" = 0 ] && alive "$server_pid" && kill -TERM "$server_pid" 2>/dev/null
[ -n "$loop_pid" ] && alive "$loop_pid" && kill -TERM "$loop_pid" 2>/dev/null
if [ "$server_died" = 0 ]; then
  wait_child "$server_pid"
  log "server stopped (code $child_code)"
fi
status=0
if [ -n "$loop_pid" ]; then
  wait_child "$loop_pid"
  log "backup loop stopped (code $child_code)"
fi
if [ "$sync_enabled" = 1 ]; then
  if "$PYTHON" sync.py backup >/dev/null; then
    log "last backup done"
  else
    log "last backup FAILED: changes since the previous backup exist only on this disk"
    status=1
  fi
fi
if [ "$server_died" = 1 ]; then
  # The server died without being asked to: report it, whatever its own code was.
  [ "$server_code" = 0 ] && server_code=1
  exit "$server_code"
fi
exit "$status"
