#!/usr/bin/env bash
# bench-footprint.sh: memory and start-up time with a big store, Larder beside Redis.
#   1. Starts Larder (temporary data dir, LRU of FOOTPRINT_LRU) and fills it with FOOTPRINT_KEYS
#      keys of FOOTPRINT_VALUE_SIZE bytes (`larder bench` preload: SetMany of 256), then reads
#      FOOTPRINT_READS random keys; reports RSS (now and peak) and the files' size.
#   2. Stops it (SIGTERM) and starts it again on the same data dir as systemd would
#      (Type=notify, scripts/ready-time.py): the time from fork to READY=1, which Larder sends
#      once every listener serves; then RSS again, before and after the same reads.
#   3. The same for Redis (appendonly yes, appendfsync everysec; MSET of 256 to fill),
#      restarted with `--supervised systemd` so that READY=1 comes after it loaded the AOF.
# Prints a Markdown table. Everything listens on 127.0.0.1 or a Unix socket and is stopped on
# exit. Needs about (value size + 100 B) × keys of disk for each system, and that much memory
# for Redis (2M × 1 KiB: about 2.3 GB each).
#
# Environment: FOOTPRINT_KEYS (2000000), FOOTPRINT_VALUE_SIZE (1024), FOOTPRINT_LRU (64MiB),
# FOOTPRINT_READS (200000), FOOTPRINT_SKIP_REDIS=1, LARDER_BIN (instead of the release build).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
keys="${FOOTPRINT_KEYS:-2000000}"
value_size="${FOOTPRINT_VALUE_SIZE:-1024}"
lru="${FOOTPRINT_LRU:-64MiB}"
reads="${FOOTPRINT_READS:-200000}"

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
require_positive "bench-footprint: FOOTPRINT_* counts must be positive whole numbers" \
  "$keys" "$value_size" "$reads"
bench_start footprint

section "machine"
machine_facts
echo "store: $keys keys × $value_size B, Larder's cache.max_memory $lru"

larder_bin="$(bench_binary)"
with_redis=1
if [ "${FOOTPRINT_SKIP_REDIS:-0}" = 1 ]; then
  with_redis=0
elif ! ensure_redis; then
  echo "bench-footprint: could not install Redis; going on without it" >&2
  with_redis=0
fi

# "RSS PEAK" of process $1, in MiB.
rss() {
  awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { printf "%.0f %.0f", r / 1024, h / 1024 }' \
    "/proc/$1/status"
}
mib_of_dir() { du -sm "$1" | awk '{ print $1 }'; }

# Stops process $1 with SIGTERM and waits (bounded) until it is gone.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 600); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "bench-footprint: process $1 did not stop within 60 s of SIGTERM" >&2
  exit 1
}

# `larder bench` against target $1: the preload (when $2 is "fill") and $reads random Gets.
load() {
  local target="$1" what="$2" line
  line="$("$larder_bin" bench --target "$target" --ops get --keys "$keys" \
    --value-size "$value_size" --requests "$reads" --concurrency 16 --connections 4 --json \
    ${3:+--no-preload})"
  echo "$what: $line" >&2
}

rows=()
row() { rows+=("| $* |"); }

section "Larder: fill"
mkdir "$tmp/larder"
socket="$tmp/larder.sock"
"$larder_bin" serve --data-dir "$tmp/larder" --listen "127.0.0.1:$(free_port)" \
  --unix-socket "$socket" --max-memory "$lru" --log-level warn >"$tmp/larder.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_for_socket "$socket" "$pid" "$tmp/larder.log"
started="$(date +%s.%N)"
load "unix:$socket" "larder fill and read"
filled="$(date +%s.%N)"
read -r r h <<<"$(rss "$pid")"
row "Larder, filled ($keys × $value_size B, then $reads reads) | $r MiB | $h MiB" \
  "| $(mib_of_dir "$tmp/larder") MiB | –"
echo "fill and reads took $(awk -v a="$started" -v b="$filled" 'BEGIN { printf "%.1f", b - a }') s"
stop "$pid"

section "Larder: restart on the same data dir"
read -r ready pid <<<"$(python3 scripts/ready-time.py --log "$tmp/larder.log" -- \
  "$larder_bin" serve --data-dir "$tmp/larder" --listen "127.0.0.1:$(free_port)" \
  --unix-socket "$socket" --max-memory "$lru" --log-level warn)"
pids+=("$pid")
read -r r h <<<"$(rss "$pid")"
row "Larder, just restarted | $r MiB | $h MiB | $(mib_of_dir "$tmp/larder") MiB | $ready s"
load "unix:$socket" "larder reads after restart" no-preload
read -r r h <<<"$(rss "$pid")"
row "Larder, restarted, after $reads reads | $r MiB | $h MiB | – | –"
stop "$pid"
rm -rf "$tmp/larder"

if [ "$with_redis" = 1 ]; then
  section "Redis: fill"
  mkdir "$tmp/redis"
  redis_sock="$tmp/redis.sock"
  redis_args=(--bind 127.0.0.1 --port "$(free_port)" --save '' --appendonly yes
    --appendfsync everysec --unixsocket "$redis_sock" --unixsocketperm 700 --dir "$tmp/redis"
    --daemonize no --protected-mode yes)
  redis-server "${redis_args[@]}" >"$tmp/redis.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_for_socket "$redis_sock" "$pid" "$tmp/redis.log"
  load "unix+redis:$redis_sock" "redis fill and read"
  read -r r h <<<"$(rss "$pid")"
  row "Redis, filled (AOF everysec) | $r MiB | $h MiB | $(mib_of_dir "$tmp/redis") MiB | –"
  stop "$pid"

  section "Redis: restart, loading the AOF"
  read -r ready pid <<<"$(python3 scripts/ready-time.py --log "$tmp/redis.log" -- \
    redis-server "${redis_args[@]}" --supervised systemd)"
  pids+=("$pid")
  read -r r h <<<"$(rss "$pid")"
  row "Redis, just restarted | $r MiB | $h MiB | $(mib_of_dir "$tmp/redis") MiB | $ready s"
  stop "$pid"
  rm -rf "$tmp/redis"
fi

section "footprint ($keys keys × $value_size B; Larder's LRU $lru)"
echo "| system, state | RSS | peak RSS | on disk | start to READY=1 |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
