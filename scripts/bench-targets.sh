#!/usr/bin/env bash
# bench-targets.sh: every performance target of docs/benchmarks.md measured in one run, and the
# table of them (what, before, target, measured, verdict) printed in Markdown, ready to paste.
# Installs Debian's redis-server if missing. Each round runs four parts, each on fresh servers
# (Larder on a temporary data dir, Redis with appendonly yes and appendfsync everysec, the bare
# tonic server of `larder bench --bare-server` with one worker thread), on free loopback ports
# and Unix sockets, all stopped when the part ends:
#   closed     TCP, 64 callers on 4 connections: the bare server's Get and Set, then Larder and
#              Redis doing get, set, incr, session_get, ratelimit_sliding, ratelimit_gcra, with
#              each server's CPU per call (--server-pid, --redis-pid)
#   open       TCP, BENCH_OPEN_RATE (5,000) calls a second over 16 callers, every single-key op
#              on Larder and on Redis: p99 and p99.9 timed from when each call was due
#   pipeline   TCP, 64 callers on one connection: Larder's get and set over PipelineService/Run
#              (`larder bench --pipeline`), Redis's get and set 16 commands a round trip
#              (`--redis-pipeline 16`); left out, and said so, when the binary lacks the flags
#   queue      TCP, 16 callers on 4 connections: set, enqueue and dequeue_ack on Larder and
#              Redis (enqueue against the durable Set of the same run; dequeue_ack against
#              Redis's BLMOVE + LREM); left out, and said so, when the binary lacks the ops
#   one        Unix socket, one caller: Larder's get and set, Redis's get and set (p50s)
# A ratio is taken within a round (both sides measured minutes apart at most); the table gives
# the median round and the spread over rounds. With BENCH_FOOTPRINT=1 it also runs
# scripts/bench-footprint.sh once (2M × 1 KiB, 64 MiB LRU: 5+ minutes and about 6 GB of disk)
# for the rows of reads that miss memory and of RSS after a bulk fill.
# Takes about 4.5 minutes a round on a 2-core machine, 14 with the default 3 rounds.
#
# Writes to BENCH_OUT_DIR (default: a new directory under /tmp, named at the end):
#   results.jsonl   one `larder bench --json` line per system, op and part, with "round",
#                   "transport" (and "footprint") added; bench-report.py reads it
#   targets.md      the table
#   machine.txt     the machine, commit, versions and settings
#   footprint.log   bench-footprint.sh's output (with BENCH_FOOTPRINT=1)
#
# Environment: BENCH_ROUNDS (3; 0 with BENCH_FOOTPRINT=1 runs the footprint alone),
# BENCH_DURATION (seconds measured per run, 5), BENCH_WARMUP (seconds, 1), BENCH_KEYS (10000),
# BENCH_OPEN_RATE (calls a second of the open loop, 5000), BENCH_FOOTPRINT=1 (the footprint
# rows), LARDER_BIN (a larder binary to use instead of building the release one: CI's smoke run
# passes the debug build; its figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
rounds="${BENCH_ROUNDS:-3}"
duration="${BENCH_DURATION:-5}"
warmup="${BENCH_WARMUP:-1}"
keys="${BENCH_KEYS:-10000}"
open_rate="${BENCH_OPEN_RATE:-5000}"
footprint="${BENCH_FOOTPRINT:-0}"
# The targets are stated for these: 100-byte values, 64 callers (16 in the open loop), and the
# pipelined Redis 16 commands deep. Fixed, so that every run measures the same thing.
value_size=100
callers=64
connections=4
open_callers=16
redis_depth=16
queue_callers=16
single_key_ops="get,set,incr,session_get,ratelimit_sliding,ratelimit_gcra"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
require_whole "bench-targets: BENCH_WARMUP must be a whole number of seconds" "$warmup"
require_whole "bench-targets: BENCH_ROUNDS must be a whole number (0: the footprint alone)" \
  "$rounds"
require_positive "bench-targets: BENCH_DURATION, BENCH_KEYS and BENCH_OPEN_RATE must be positive whole numbers" \
  "$duration" "$keys" "$open_rate"
case "$footprint" in 0 | 1) ;; *)
  echo "bench-targets: BENCH_FOOTPRINT takes 0 or 1, got '$footprint'" >&2
  exit 2
  ;;
esac

bench_start targets
bench_out_dir larder-targets

larder_bin="$(bench_binary)"
if ! ensure_redis; then
  echo "bench-targets: Redis is missing and cannot be installed (needs root and apt-get)" >&2
  exit 1
fi

# The pipelined path's flags arrived after the rest of `larder bench`: an older binary measures
# everything else and says why the pipelined rows are empty.
bench_help="$("$larder_bin" bench --help)"
has_flag() { grep -qE -- "(^|[[:space:]])$1([[:space:]]|$)" <<<"$bench_help"; }
skipped=()
pipeline=1
if ! has_flag --pipeline; then
  pipeline=0
  skipped+=(--skipped "pipeline=this build has no --pipeline")
fi
redis_pipeline=()
if has_flag --redis-pipeline; then
  redis_pipeline=(--redis-pipeline "$redis_depth")
fi
# The queue ops arrived with QueueService: an older binary measures everything else.
queue=1
if ! grep -q dequeue_ack <<<"$bench_help"; then
  queue=0
  skipped+=(--skipped "queue=this build has no enqueue and dequeue_ack ops")
fi
if [ "$footprint" = 0 ]; then
  skipped+=(--skipped "footprint=off (BENCH_FOOTPRINT=1 runs it: 5+ minutes, 6 GB of disk)")
fi

{
  echo "larder: $("$larder_bin" --version)"
  echo "redis: $(redis-server --version | awk '{print $3}' | sed 's/^v=//') (appendonly yes, appendfsync everysec)"
  echo "settings: $rounds rounds; ${duration}s measured after ${warmup}s warmup per run," \
    "keys $keys, values ${value_size} B; $callers callers on $connections HTTP/2 connections" \
    "(pipelined: on 1), one Redis connection per caller; open loop $open_rate calls/s over" \
    "$open_callers callers; Larder and the bare server with one gRPC worker thread"
  [ "$pipeline" = 1 ] || echo "pipelined path: not measured, this build has no --pipeline"
  [ "$queue" = 1 ] || echo "queue ops: not measured, this build has no enqueue and dequeue_ack"
} | tee -a "$out/machine.txt"

# Fresh servers for one part, in $tmp/$1: Larder (TCP and a Unix socket), Redis (the same), and
# with $2 = bare the bare tonic server (TCP only). Sets the *_pid and target variables.
start_servers() {
  local dir="$tmp/$1" larder_port redis_port bare_port
  mkdir -p "$dir/larder" "$dir/redis"
  # Private, as Larder asks of its data directory.
  chmod 700 "$dir/larder"
  redis_port="$(free_port)"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly yes \
    --appendfsync everysec --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
    --dir "$dir/redis" --daemonize no --protected-mode yes >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  larder_port="$(free_port)"
  "$larder_bin" serve --data-dir "$dir/larder" --listen "127.0.0.1:$larder_port" \
    --unix-socket "$dir/larder.sock" --worker-threads 1 --log-level warn \
    >"$dir/larder.log" 2>&1 &
  larder_pid=$!
  pids+=("$larder_pid")
  bare_pid=
  if [ "${2:-}" = bare ]; then
    bare_port="$(free_port)"
    "$larder_bin" bench --bare-server "127.0.0.1:$bare_port" --bare-worker-threads 1 \
      >"$dir/bare.log" 2>&1 &
    bare_pid=$!
    pids+=("$bare_pid")
    wait_for_port "$bare_port" "$bare_pid" "$dir/bare.log"
    bare_tcp="http://127.0.0.1:$bare_port"
  fi
  wait_for_port "$redis_port" "$redis_pid" "$dir/redis.log"
  wait_for_port "$larder_port" "$larder_pid" "$dir/larder.log"
  # Each listener comes up on its own: the TCP port says nothing of the Unix socket.
  wait_for_socket "$dir/redis.sock" "$redis_pid" "$dir/redis.log"
  wait_for_socket "$dir/larder.sock" "$larder_pid" "$dir/larder.log"
  larder_tcp="http://127.0.0.1:$larder_port"
  larder_unix="unix:$dir/larder.sock"
  redis_tcp="redis://127.0.0.1:$redis_port"
  redis_unix="unix+redis:$dir/redis.sock"
}

stop_servers() {
  # Larder with SIGTERM, so that it shuts down as in production.
  stop_pids "${pids[@]}"
  pids=()
}

# `larder bench --json` with the flags after $1..$3 (the round, the transport, a name for the
# logs); its lines, tagged with the round and transport, go to the results. A failure shows
# the client's and the servers' logs and ends the run.
bench_run() {
  local round="$1" transport="$2" name="$3" limit
  shift 3
  # Every op twice (Larder, Redis), each with its warmup, duration, preload and slack.
  limit=$(((warmup + duration + 60) * 14 + 120))
  section "round $round: $name"
  if ! timeout "$limit" "$larder_bin" bench "$@" --duration "${duration}s" \
    --warmup "${warmup}s" --keys "$keys" --value-size "$value_size" --json \
    >"$tmp/run.jsonl" 2>"$tmp/run.err"; then
    cat "$tmp/run.err" >&2
    echo "bench-targets: round $round, $name failed; the servers' logs:" >&2
    cat "$tmp"/r"$round"-*/*.log >&2 || true
    exit 1
  fi
  # What the client said beside the figures (failed calls, cache counters).
  grep -v '^bench: .* \.\.\.$' "$tmp/run.err" >&2 || true
  sed "s/^{/{\"round\":$round,\"transport\":\"$transport\",/" "$tmp/run.jsonl" |
    tee -a "$results"
}

if [ "$rounds" = 0 ]; then
  if [ "$footprint" = 0 ]; then
    echo "bench-targets: BENCH_ROUNDS=0 measures nothing without BENCH_FOOTPRINT=1" >&2
    exit 2
  fi
  for part in closed open pipeline queue one; do
    skipped+=(--skipped "$part=BENCH_ROUNDS=0")
  done
fi
for round in $(seq 1 "$rounds"); do
  start_servers "r$round-closed" bare
  bench_run "$round" tcp "bare tonic server, get and set, $callers callers" \
    --target "$bare_tcp" --system bare --ops get,set --concurrency "$callers" \
    --connections "$connections" --server-pid "$bare_pid"
  bench_run "$round" tcp "Larder and Redis, $callers callers" \
    --target "$larder_tcp" --redis "$redis_tcp" --ops "$single_key_ops" \
    --concurrency "$callers" --connections "$connections" --server-pid "$larder_pid" \
    --redis-pid "$redis_pid"
  stop_servers

  start_servers "r$round-open"
  bench_run "$round" tcp "open loop, $open_rate calls/s over $open_callers callers" \
    --target "$larder_tcp" --redis "$redis_tcp" --ops "$single_key_ops" \
    --concurrency "$open_callers" --connections "$connections" --rate "$open_rate" \
    --server-pid "$larder_pid" --redis-pid "$redis_pid"
  stop_servers

  if [ "$pipeline" = 1 ]; then
    start_servers "r$round-pipeline"
    bench_run "$round" tcp "pipelined, $callers callers on one stream" \
      --target "$larder_tcp" --redis "$redis_tcp" --pipeline "${redis_pipeline[@]}" \
      --ops get,set --concurrency "$callers" --connections 1 --server-pid "$larder_pid" \
      --redis-pid "$redis_pid"
    stop_servers
  fi

  if [ "$queue" = 1 ]; then
    start_servers "r$round-queue"
    bench_run "$round" tcp "queue ops and the durable Set, $queue_callers callers" \
      --target "$larder_tcp" --redis "$redis_tcp" --ops set,enqueue,dequeue_ack \
      --concurrency "$queue_callers" --connections "$connections" --server-pid "$larder_pid" \
      --redis-pid "$redis_pid"
    stop_servers
  fi

  start_servers "r$round-one"
  bench_run "$round" unix "one caller, Unix socket" \
    --target "$larder_unix" --redis "$redis_unix" --ops get,set --concurrency 1 \
    --connections 1 --server-pid "$larder_pid" --redis-pid "$redis_pid"
  stop_servers
  rm -rf "${tmp:?}"/r"$round"-*
done

if [ "$footprint" = 1 ]; then
  section "footprint (scripts/bench-footprint.sh, 2M × 1 KiB, 64 MiB LRU)"
  if ! LARDER_BIN="$larder_bin" bash scripts/bench-footprint.sh >"$out/footprint.log" 2>&1; then
    cat "$out/footprint.log" >&2
    echo "bench-targets: bench-footprint.sh failed" >&2
    exit 1
  fi
  cat "$out/footprint.log"
  tag='{"round":1,"transport":"unix","footprint":true,'
  # Its reads after a restart (Larder: the LRU starts empty, so reads miss memory) and Redis's
  # reads of the same data, all in memory; then Larder's RSS right after the fill.
  sed -n "s/^larder reads after restart: {/$tag/p; s/^redis fill and read: {/$tag/p" \
    "$out/footprint.log" | tee -a "$results"
  awk -F'|' '/^\| Larder, filled/ {
      gsub(/[^0-9]/, "", $3); gsub(/[^0-9]/, "", $4)
      printf "{\"system\":\"larder\",\"state\":\"filled\",\"rss_mib\":%d,\"peak_rss_mib\":%d}\n", $3, $4
    }' "$out/footprint.log" | tee -a "$results"
fi

section "targets"
python3 scripts/bench-report.py --targets --results "$results" "${skipped[@]}" \
  --markdown "$out/targets.md"
cat "$out/targets.md"
echo
echo "bench-targets: results and table in $out"
