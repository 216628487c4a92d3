#!/usr/bin/env bash
# bench-vs-redis.sh: Larder against Redis, op by op, as a matrix of callers (BENCH_CONCURRENCIES,
# default 1 16 64) × transports (BENCH_TRANSPORTS, default tcp unix), and a Markdown report with
# a chart. Installs Debian's redis-server if missing. For each cell it starts a fresh Redis
# (appendonly yes, appendfsync everysec: the durability closest to Larder's) and a fresh Larder
# (temporary data dir) on free loopback ports and Unix sockets, runs `larder bench --redis`
# (every op on Larder, then on Redis, with the same client), and stops both, so that no cell
# inherits another's rate-limit state or counters. Nothing listens beyond 127.0.0.1.
#
# Writes to BENCH_OUT_DIR (default: a new directory under /tmp, named at the end):
#   results.jsonl     one `larder bench --json` line per system, op, transport and concurrency,
#                     with "transport" added
#   report.md         the tables, the targets and the machine (scripts/bench-report.py)
#   ops-per-sec.svg   the chart of ops/s per op, Larder, the bare tonic server and Redis side by
#                     side, 64 callers (or the most run)
#
# Beside Larder and Redis, each TCP cell also drives the bare tonic server (`larder bench
# --bare-server`, one worker thread: a HashMap behind tonic, the ceiling of any gRPC server
# here) with the cell's get and set; and, when the binary has `larder bench --pipeline`, each
# cell of more than one caller runs get and set pipelined: Larder's calls over
# PipelineService/Run on one connection, Redis's 16 commands a round trip (`--redis-pipeline`).
#
# Environment: BENCH_OPS (comma list, default every op), BENCH_DURATION (seconds measured per
# run, 5), BENCH_WARMUP (seconds, 1), BENCH_KEYS (10000), BENCH_VALUE_SIZE (100),
# BENCH_CONNECTIONS (HTTP/2 connections to Larder, at most one per caller, 4), BENCH_WORKERS
# (Larder's gRPC worker threads, 1), BENCH_OPEN_RATE (calls a second of the open-loop runs
# of every single-key op at 16 callers, after the matrix; 5000; 0 leaves them out), LARDER_BIN (a larder binary to use instead of building
# the release one: CI's smoke run passes the debug build; its figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
ops="${BENCH_OPS:-get,set,incr,getmany,session_get,ratelimit_sliding,ratelimit_gcra,enqueue,dequeue_ack}"
concurrencies="${BENCH_CONCURRENCIES:-1 16 64}"
transports="${BENCH_TRANSPORTS:-tcp unix}"
duration="${BENCH_DURATION:-5}"
warmup="${BENCH_WARMUP:-1}"
keys="${BENCH_KEYS:-10000}"
value_size="${BENCH_VALUE_SIZE:-100}"
connections="${BENCH_CONNECTIONS:-4}"
workers="${BENCH_WORKERS:-1}"
open_rate="${BENCH_OPEN_RATE:-5000}"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
require_whole "bench-vs-redis: BENCH_WARMUP must be a whole number of seconds" "$warmup"
require_whole "bench-vs-redis: BENCH_OPEN_RATE must be a whole number of calls a second (0: no open-loop runs)" \
  "$open_rate"
# shellcheck disable=SC2086 # the lists split into their words
require_positive "bench-vs-redis: BENCH_* settings must be positive whole numbers" \
  $concurrencies "$duration" "$keys" "$value_size" "$connections" "$workers"
for t in $transports; do
  case "$t" in tcp | unix) ;; *)
    echo "bench-vs-redis: BENCH_TRANSPORTS takes tcp and unix, got '$t'" >&2
    exit 2
    ;;
  esac
done

bench_start vs-redis
bench_out_dir larder-vs-redis-report

larder_bin="$(bench_binary)"
if ! ensure_redis; then
  echo "bench-vs-redis: Redis is missing and cannot be installed (needs root and apt-get)" >&2
  exit 1
fi
{
  echo "larder: $("$larder_bin" --version)"
  echo "redis: $(redis-server --version | awk '{print $3}' | sed 's/^v=//') (appendonly yes, appendfsync everysec)"
  echo "settings: ${duration}s measured after ${warmup}s warmup per run, keys $keys," \
    "values ${value_size} B, Larder connections min(callers, $connections)," \
    "Larder gRPC worker threads $workers, one Redis connection per caller"
} | tee -a "$out/machine.txt"

# The pipelined path and its Redis twin arrived after the rest of `larder bench`: an older binary
# runs the matrix without them.
bench_help="$("$larder_bin" bench --help)"
has_flag() { grep -qE -- "(^|[[:space:]])$1([[:space:]]|$)" <<<"$bench_help"; }
bare_ops="$(printf '%s' "$ops" | tr ',' '\n' | grep -xE 'get|set' | paste -sd, - || true)"
pipeline_ops="$bare_ops"
pipeline_flags=()
if ! has_flag --pipeline; then
  pipeline_ops=
  echo "bench-vs-redis: this build has no --pipeline; the pipelined rows are left out" >&2
elif has_flag --redis-pipeline; then
  pipeline_flags=(--redis-pipeline 16)
fi

# Starts Redis and Larder for one cell (and with $2 = bare, the bare tonic server, TCP only);
# sets redis_pid, larder_pid, bare_pid, and the targets of both transports.
start_both() {
  local cell="$1" redis_port larder_port bare_port
  redis_port="$(free_port)"
  larder_port="$(free_port)"
  mkdir -p "$tmp/$cell/redis" "$tmp/$cell/larder"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly yes \
    --appendfsync everysec --unixsocket "$tmp/$cell/redis.sock" --unixsocketperm 700 \
    --dir "$tmp/$cell/redis" --daemonize no --protected-mode yes \
    >"$tmp/$cell/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  "$larder_bin" serve --data-dir "$tmp/$cell/larder" --listen "127.0.0.1:$larder_port" \
    --unix-socket "$tmp/$cell/larder.sock" --worker-threads "$workers" --log-level warn \
    >"$tmp/$cell/larder.log" 2>&1 &
  larder_pid=$!
  pids+=("$larder_pid")
  bare_pid=
  if [ "${2:-}" = bare ]; then
    bare_port="$(free_port)"
    "$larder_bin" bench --bare-server "127.0.0.1:$bare_port" --bare-worker-threads "$workers" \
      >"$tmp/$cell/bare.log" 2>&1 &
    bare_pid=$!
    pids+=("$bare_pid")
    wait_for_port "$bare_port" "$bare_pid" "$tmp/$cell/bare.log"
    bare_tcp="http://127.0.0.1:$bare_port"
  fi
  wait_for_port "$redis_port" "$redis_pid" "$tmp/$cell/redis.log"
  wait_for_port "$larder_port" "$larder_pid" "$tmp/$cell/larder.log"
  # Each listener comes up on its own: the TCP port says nothing of the Unix socket.
  wait_for_socket "$tmp/$cell/redis.sock" "$redis_pid" "$tmp/$cell/redis.log"
  wait_for_socket "$tmp/$cell/larder.sock" "$larder_pid" "$tmp/$cell/larder.log"
  larder_tcp="http://127.0.0.1:$larder_port"
  larder_unix="unix:$tmp/$cell/larder.sock"
  redis_tcp="redis://127.0.0.1:$redis_port"
  redis_unix="unix+redis:$tmp/$cell/redis.sock"
}

# Stops the cell's servers (Larder with SIGTERM, so it shuts down as in production).
stop_both() {
  stop_pids "${pids[@]}"
  pids=()
}

# The longest one cell may take: every op twice, each with its warmup, duration, preload (or
# dequeue_ack's fill of its queue) and slack.
op_count="$(printf '%s' "$ops" | tr ',' '\n' | grep -c .)"
cell_limit=$(((warmup + duration + 60) * 2 * op_count + 120))

# One cell: fresh servers, `larder bench --redis` over transport $2 with the flags after it,
# its JSON lines (with the transport added) appended to the results, the servers stopped.
run_cell() {
  local cell="$1" transport="$2" larder_target redis_target
  shift 2
  start_both "$cell"
  if [ "$transport" = unix ]; then
    larder_target="$larder_unix" redis_target="$redis_unix"
  else
    larder_target="$larder_tcp" redis_target="$redis_tcp"
  fi
  cell_bench "$cell" "$transport" --target "$larder_target" --redis "$redis_target" "$@" \
    --server-pid "$larder_pid" --redis-pid "$redis_pid"
  stop_both
  rm -rf "${tmp:?}/$cell"
}

# One `larder bench --json` of cell $1 over transport $2, with the flags after them; its JSON
# lines, with the transport added, appended to the results.
cell_bench() {
  local cell="$1" transport="$2"
  shift 2
  if ! timeout "$cell_limit" "$larder_bin" bench "$@" --duration "${duration}s" \
    --warmup "${warmup}s" --keys "$keys" --value-size "$value_size" \
    --json >"$tmp/$cell.jsonl" 2>"$tmp/$cell.err"; then
    cat "$tmp/$cell.err" >&2
    echo "bench-vs-redis: the $cell run failed; the servers' logs:" >&2
    cat "$tmp/$cell"/*.log >&2
    exit 1
  fi
  # What the client said beside the figures (failed calls, cache counters).
  grep -v '^bench: .* \.\.\.$' "$tmp/$cell.err" >&2 || true
  sed "s/^{/{\"transport\":\"$transport\",/" "$tmp/$cell.jsonl" | tee -a "$results"
}

# A closed-loop cell: Larder and Redis; over TCP the bare tonic server's get and set; with more
# than one caller and a binary that has it, the pipelined path (on one connection).
matrix_cell() {
  local cell="$1" transport="$2" c="$3" larder_target redis_target
  # The bare server listens on TCP only, and answers get and set only.
  start_both "$cell" "$([ "$transport" = tcp ] && [ -n "$bare_ops" ] && echo bare)"
  if [ "$transport" = unix ]; then
    larder_target="$larder_unix" redis_target="$redis_unix"
  else
    larder_target="$larder_tcp" redis_target="$redis_tcp"
  fi
  cell_bench "$cell" "$transport" --target "$larder_target" --redis "$redis_target" \
    --ops "$ops" --concurrency "$c" --connections "$((c < connections ? c : connections))" \
    --server-pid "$larder_pid" --redis-pid "$redis_pid"
  if [ -n "$bare_pid" ]; then
    cell_bench "$cell" "$transport" --target "$bare_tcp" --system bare --ops "$bare_ops" \
      --concurrency "$c" --connections "$((c < connections ? c : connections))" \
      --server-pid "$bare_pid"
  fi
  if [ -n "$pipeline_ops" ] && [ "$c" -gt 1 ]; then
    cell_bench "$cell" "$transport" --target "$larder_target" --redis "$redis_target" \
      --pipeline "${pipeline_flags[@]}" --ops "$pipeline_ops" --concurrency "$c" \
      --connections 1 --server-pid "$larder_pid" --redis-pid "$redis_pid"
  fi
  stop_both
  rm -rf "${tmp:?}/$cell"
}

for transport in $transports; do
  for c in $concurrencies; do
    section "$transport, $c callers"
    matrix_cell "$transport-c$c" "$transport" "$c"
  done
done

# Open loop: the single-key ops at a fixed rate a small app might send (BENCH_OPEN_RATE calls a
# second in all, 16 callers), each call timed from when it was due, so that the latencies are
# those of a server with room to spare rather than of a queue at saturation.
single_key_ops="$(printf '%s' "$ops" | tr ',' '\n' | grep -vx 'getmany' | paste -sd, - || true)"
if [ "$open_rate" != 0 ] && [ -n "$single_key_ops" ]; then
  for transport in $transports; do
    section "$transport, open loop: $open_rate calls/s over 16 callers"
    run_cell "$transport-open" "$transport" --ops "$single_key_ops" --concurrency 16 \
      --connections "$connections" --rate "$open_rate"
  done
fi

section "report"
python3 scripts/bench-report.py --results "$results" --machine "$out/machine.txt" \
  --markdown "$out/report.md" --chart "$out/ops-per-sec.svg"
cat "$out/report.md"
echo
echo "bench-vs-redis: results, report and chart in $out"
