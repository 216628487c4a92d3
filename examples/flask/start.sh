#!/usr/bin/env bash
# start.sh: the shop and its Larder as one service, for a platform that runs one start command
# (Render, Railway, Fly, a Procfile's web process). Larder listens only on a Unix socket; the
# app's workers share it. When either process ends, or the platform sends SIGTERM, both stop:
# Larder last, after the app's workers are gone, so that it can flush and checkpoint.
#   PORT               the app's port (default 8000)
#   WEB_CONCURRENCY    gunicorn workers (default 4)
#   LARDER_DATA_DIR    Larder's data (default ./larder-data; a persistent disk on a PaaS)
#   LARDER_SOCKET      the socket (default /tmp/larder-shop.sock)
set -euo pipefail
cd "$(dirname "$0")"

data="${LARDER_DATA_DIR:-$PWD/larder-data}"
socket="${LARDER_SOCKET:-/tmp/larder-shop.sock}"
app_pid=""
larder serve --data-dir "$data" --listen none --unix-socket "$socket" &
larder_pid=$!

stop() {
  trap - EXIT TERM INT
  if [ -n "$app_pid" ]; then
    kill -TERM "$app_pid" 2>/dev/null || true
    wait "$app_pid" 2>/dev/null || true
  fi
  kill -TERM "$larder_pid" 2>/dev/null || true
  wait "$larder_pid" 2>/dev/null || true
}
trap stop EXIT TERM INT

for _ in $(seq 1 100); do # up to 10 s for the socket
  [ -S "$socket" ] && break
  kill -0 "$larder_pid" 2>/dev/null || exit 1
  sleep 0.1
done
[ -S "$socket" ] || { echo "start.sh: larder did not open $socket" >&2; exit 1; }

export LARDER_LOCATION="unix:$socket"
python -m flask --app shop.wsgi init-db
gunicorn shop.wsgi:app --workers "${WEB_CONCURRENCY:-4}" --bind "0.0.0.0:${PORT:-8000}" &
app_pid=$!
# Whichever ends first ends the service (the EXIT trap stops the other).
wait -n "$app_pid" "$larder_pid"
