#!/usr/bin/env bash
# bench.sh: the side-by-side benchmark. Builds larder in release mode, starts a bare-tonic
# baseline server (`larder bench --bare-server`), the real daemon (on a temporary data dir) and
# Redis on fixed loopback ports, drives each with the same closed-loop load (`larder bench`,
# concurrency 64): cache Get and Set, GetSession against Redis doing the same job (MULTI
# HGETALL + PEXPIRE EXEC), and on request Increment (INCR), GetMany of 16 (MGET of 16) and the
# rate-limit Check against Redis as web apps use it (ratelimit_sliding: a sliding-window log,
# MULTI ZREMRANGEBYSCORE + ZADD + ZCARD + PEXPIRE EXEC; ratelimit_gcra: EVALSHA of a GCRA Lua
# script), and prints one table with the ratios the project aims for.
# Everything it starts is stopped on exit; nothing listens beyond 127.0.0.1.
#
# Environment: BENCH_OPS (which runs, default "get set session_get"; also "incr", "getmany",
# "ratelimit_sliding" and "ratelimit_gcra"; spaces or commas between them, and the older
# dashed names, e.g. get-session, work too), BENCH_TRANSPORT (tcp, or
# unix: larder and Redis both over Unix sockets, the bare baseline left out), BENCH_DURATION (seconds measured per run, default 10), BENCH_WARMUP (seconds,
# default 2), BENCH_CONCURRENCY (64), BENCH_CONNECTIONS (4), BENCH_KEYS (10000),
# BENCH_VALUE_SIZE (100), BENCH_WORKERS (gRPC threads of both servers, 1), BENCH_REDIS_REQUESTS (requests per redis-benchmark run, default
# 20000 × BENCH_DURATION), BENCH_RL_LIMIT and BENCH_RL_PERIOD_MS (the rate limit of every
# key of the rate-limit runs, both systems: default 100 per 60000 ms), BENCH_SKIP_REDIS=1 to
# leave Redis out, BENCH_PORT_BASE (17000: bare on +1, larder on +2; Redis on 16379 and 16380),
# LARDER_BIN (a larder binary to use instead of building the release one).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
ops="${BENCH_OPS:-get set session_get}"
# One spelling: underscores, and session_get for the older get-session.
ops="$(printf '%s' "$ops" | tr ',-' ' _' | sed 's/\bget_session\b/session_get/g')"
transport="${BENCH_TRANSPORT:-tcp}"
case "$transport" in tcp | unix) ;; *)
  echo "bench: BENCH_TRANSPORT must be tcp or unix, got '$transport'" >&2
  exit 2
  ;;
esac
duration="${BENCH_DURATION:-10}"
warmup="${BENCH_WARMUP:-2}"
concurrency="${BENCH_CONCURRENCY:-64}"
connections="${BENCH_CONNECTIONS:-4}"
keys="${BENCH_KEYS:-10000}"
value_size="${BENCH_VALUE_SIZE:-100}"
# gRPC worker threads of both servers (larder's default is 1).
workers="${BENCH_WORKERS:-1}"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
# Checked before anything is computed from them.
require_whole "bench: BENCH_* settings must be whole numbers" \
  "$duration" "$warmup" "$concurrency" "$connections" "$keys" "$value_size" "$workers"
redis_requests="${BENCH_REDIS_REQUESTS:-$((20000 * duration))}"
rl_limit="${BENCH_RL_LIMIT:-100}"
rl_period_ms="${BENCH_RL_PERIOD_MS:-60000}"
port_base="${BENCH_PORT_BASE:-17000}"
require_whole "bench: BENCH_* settings must be whole numbers" \
  "$redis_requests" "$rl_limit" "$rl_period_ms" "$port_base"
bare_port=$((port_base + 1))
larder_port=$((port_base + 2))
redis_port=16379
redis_aof_port=16380
# The longest one load run may take before `timeout` ends it: warmup + duration + preload
# and slack.
run_limit=$((warmup + duration + 150))
bench_start bench

section "machine"
machine_facts
echo "gRPC worker threads per server: $workers"
echo "settings: duration ${duration}s, warmup ${warmup}s, concurrency $concurrency," \
  "connections $connections, keys $keys, value ${value_size} B," \
  "rate limit $rl_limit per $rl_period_ms ms"

larder_bin="$(bench_binary)"

with_redis=1
if [ "${BENCH_SKIP_REDIS:-0}" = 1 ]; then
  with_redis=0
elif ! ensure_redis; then
  echo "bench: could not install Redis; going on without it" >&2
  with_redis=0
fi

section "starting servers"
port_free "$bare_port"
port_free "$larder_port"
"$larder_bin" bench --bare-server "127.0.0.1:$bare_port" --bare-worker-threads "$workers" \
  >"$tmp/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
mkdir "$tmp/larder-data"
"$larder_bin" serve --data-dir "$tmp/larder-data" --listen "127.0.0.1:$larder_port" \
  --unix-socket "$tmp/larder.sock" \
  --worker-threads "$workers" --log-level warn >"$tmp/larder.log" 2>&1 &
larder_pid=$!
pids+=("$larder_pid")
wait_for_port "$bare_port" "$bare_pid" "$tmp/bare.log"
wait_for_port "$larder_port" "$larder_pid" "$tmp/larder.log"
echo "bare tonic baseline on 127.0.0.1:$bare_port (pid $bare_pid)"
echo "larder $("$larder_bin" --version | awk '{print $2}') on 127.0.0.1:$larder_port" \
  "(pid $larder_pid, data dir $tmp/larder-data)"

if [ "$with_redis" = 1 ]; then
  port_free "$redis_port"
  port_free "$redis_aof_port"
  echo "$(redis-server --version | awk '{print $1, $2, $3}')"
  mkdir "$tmp/redis" "$tmp/redis-aof"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --unixsocket "$tmp/redis.sock" --unixsocketperm 700 \
    --dir "$tmp/redis" --daemonize no --protected-mode yes >"$tmp/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  redis-server --bind 127.0.0.1 --port "$redis_aof_port" --save '' --appendonly yes \
    --unixsocket "$tmp/redis-aof.sock" --unixsocketperm 700 \
    --appendfsync everysec --dir "$tmp/redis-aof" --daemonize no --protected-mode yes \
    >"$tmp/redis-aof.log" 2>&1 &
  redis_aof_pid=$!
  pids+=("$redis_aof_pid")
  wait_for_port "$redis_port" "$redis_pid" "$tmp/redis.log"
  wait_for_port "$redis_aof_port" "$redis_aof_pid" "$tmp/redis-aof.log"
  echo "redis (no persistence) on 127.0.0.1:$redis_port," \
    "redis (AOF, fsync every second) on 127.0.0.1:$redis_aof_port"
fi

# One row per run: system op ops_per_sec p50_us p99_us p999_us errors srv_us_per_op
# srv_cores cli_cores other_cores allowed_fraction (rate limits; "null" or "-" otherwise).
results="$tmp/results"
: >"$results"

# The value of a flat JSON object's field $2 in the line $1 (numbers and plain strings only).
json_field() {
  printf '%s\n' "$1" | sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}

# Runs `larder bench` against $2 (a URL: larder, the baseline or Redis) whose server is
# process $3.
load_run() {
  local system="$1" target="$2" pid="$3" op="$4" line f
  section "$system $op"
  line="$(timeout "$run_limit" "$larder_bin" bench --target "$target" \
    --system "$system" --ops "$op" --concurrency "$concurrency" --connections "$connections" \
    --duration "${duration}s" --warmup "${warmup}s" --keys "$keys" \
    --value-size "$value_size" --rl-limit "$rl_limit" --rl-period-ms "$rl_period_ms" \
    --server-pid "$pid" --json)"
  echo "$line"
  local row="$system $op"
  for f in ops_per_sec p50_us p99_us p999_us errors server_cpu_us_per_op server_cores \
    client_cores other_cores allowed_fraction; do
    row="$row $(json_field "$line" "$f")"
  done
  echo "$row" >>"$results"
}

# redis-benchmark's options to reach the Redis on TCP port $1 over the chosen transport.
redis_address() {
  if [ "$transport" = unix ]; then
    case "$1" in "$redis_port") echo "-s $tmp/redis.sock" ;; *) echo "-s $tmp/redis-aof.sock" ;; esac
  else
    echo "-h 127.0.0.1 -p $1"
  fi
}

# redis-benchmark runs a fixed number of requests, not a duration; its CSV has no p99.9.
# The CPU columns cover the whole run (redis-benchmark has no warmup to leave out).
redis_run() {
  local system="$1" port="$2" pid="$3" op="$4" csv row before after m_before m_after times
  section "$system $op (redis-benchmark, $redis_requests requests)"
  before="$(cpu_ns "$pid")"
  m_before="$(machine_ns)"
  # `time` reports the client's user and system CPU seconds and the wall time.
  times="$tmp/times"
  csv="$( { TIMEFORMAT='%3U %3S %3R'; time timeout "$run_limit" redis-benchmark \
    $(redis_address "$port") -t "$op" -c "$concurrency" -n "$redis_requests" \
    -d "$value_size" -P 1 -r "$keys" --csv; } 2>"$times")"
  after="$(cpu_ns "$pid")"
  m_after="$(machine_ns)"
  echo "$csv"
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
  # "p99_latency_ms","max_latency_ms"
  row="$(printf '%s\n' "$csv" | tr -d '"' | awk -F, -v srv="$((after - before))" \
    -v all="$((m_after - m_before))" -v n="$redis_requests" -v t="$(tail -n 1 "$times")" '
    NR > 1 {
      split(t, c, " ")
      other = all / 1e9 - srv / 1e9 - (c[1] + c[2])
      printf "%.0f %.1f %.1f - - %.1f %.2f %.2f %.2f", $2, $5 * 1000, $7 * 1000,
        srv / n / 1000, srv / 1e9 / c[3], (c[1] + c[2]) / c[3], (other > 0 ? other : 0) / c[3]
      exit }')"
  echo "$system $op $row -" >>"$results"
}

wants() { case " $ops " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
bare="http://127.0.0.1:$bare_port"
larder="http://127.0.0.1:$larder_port"
redis_url="redis://127.0.0.1:$redis_port"
redis_aof_url="redis://127.0.0.1:$redis_aof_port"
with_bare=1
if [ "$transport" = unix ]; then
  # The bare baseline listens on TCP only.
  with_bare=0
  larder="unix:$tmp/larder.sock"
  redis_url="unix+redis:$tmp/redis.sock"
  redis_aof_url="unix+redis:$tmp/redis-aof.sock"
fi
if wants get; then
  [ "$with_bare" = 1 ] && load_run bare "$bare" "$bare_pid" get
  load_run larder "$larder" "$larder_pid" get
fi
if wants set; then
  load_run larder "$larder" "$larder_pid" set
  [ "$with_bare" = 1 ] && load_run bare "$bare" "$bare_pid" set
fi
# The bare baseline has Get and Set only.
for op in incr getmany session_get ratelimit_sliding ratelimit_gcra; do
  if wants "$op"; then
    load_run larder "$larder" "$larder_pid" "$op"
  fi
done
if [ "$with_redis" = 1 ]; then
  # SET first: with requests ≫ keys it fills the key space, so that the GETs hit as ours do.
  if wants set || wants get; then
    redis_run redis "$redis_port" "$redis_pid" set
  fi
  if wants get; then
    redis_run redis "$redis_port" "$redis_pid" get
  fi
  if wants set; then
    redis_run redis-aof "$redis_aof_port" "$redis_aof_pid" set
  fi
  # The same client as larder's runs, one connection per caller as web workers hold them.
  for op in incr getmany session_get ratelimit_sliding ratelimit_gcra; do
    if wants "$op"; then
      # Each Redis starts the run with no rate-limit state (and no counters), as larder does.
      load_run redis "$redis_url" "$redis_pid" "$op"
      load_run redis-aof "$redis_aof_url" "$redis_aof_pid" "$op"
    fi
  done
fi

section "results ($transport, concurrency $concurrency, ${duration}s per gRPC run, nproc $(nproc))"
fmt='%-10s %-17s %8s %8s %8s %8s %6s %9s %9s %9s %9s\n'
awk -v fmt="$fmt" 'BEGIN { printf fmt, "system", "op", "ops/s", "p50_us", "p99_us",
    "p99.9_us", "errors", "srv_us/op", "srv_cores", "cli_cores", "oth_cores" }
  { printf fmt, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$results"
echo "srv_us/op: server CPU per call. *_cores: CPU used in the measured window, out of" \
  "$(nproc), by the server, the load client, and anything else (other processes, kernel" \
  "threads, hypervisor steal). Redis get and set rows: redis-benchmark, a C client, over its" \
  "whole run; the other Redis rows: the same client as larder's."
if awk '$2 ~ /^ratelimit_/ { found = 1 } END { exit !found }' "$results"; then
  echo "rate limits ($rl_limit per $rl_period_ms ms per key, $keys keys), share of checks allowed:"
  awk '$2 ~ /^ratelimit_/ {
    printf "  %-10s %-17s %s\n", $1, $2, ($12 == "null" ? "n/a" : sprintf("%.2f%%", $12 * 100)) }' \
    "$results"
fi

rate() { awk -v s="$1" -v o="$2" '$1 == s && $2 == o { print $3; exit }' "$results"; }
ratio() {
  if [ -n "$1" ] && [ -n "$2" ]; then
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
  else
    echo "n/a"
  fi
}
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v != "n/a" && v >= t) ? "met" : "NOT met" }'; }

larder_get="$(rate larder get)"
larder_set="$(rate larder set)"
larder_session="$(rate larder session_get)"
get_ratio="$(ratio "$larder_get" "$(rate bare get)")"
section "ratios"
# Only the lines of the ops that ran.
if wants get; then
  echo "larder get / bare get:   $get_ratio (target >= 0.9: $(verdict "$get_ratio" 0.9))"
fi
if wants set; then
  echo "larder set:              ${larder_set:-n/a} ops/s durable" \
    "(target >= 30000: $(verdict "${larder_set:-n/a}" 30000))"
  echo "larder set / bare set:   $(ratio "$larder_set" "$(rate bare set)")"
fi
if [ "$with_redis" = 1 ]; then
  if wants get; then
    echo "larder get / redis get:  $(ratio "$larder_get" "$(rate redis get)")"
  fi
  if wants set; then
    echo "larder set / redis set:  $(ratio "$larder_set" "$(rate redis set)") (redis without persistence)"
    echo "larder set / redis-aof:  $(ratio "$larder_set" "$(rate redis-aof set)") (AOF, fsync every second)"
  fi
  if wants incr; then
    larder_incr="$(rate larder incr)"
    echo "larder incr / redis INCR:  $(ratio "$larder_incr" "$(rate redis incr)")"
    echo "larder incr / redis-aof:   $(ratio "$larder_incr" "$(rate redis-aof incr)")"
  fi
  if wants getmany; then
    # The same 16 keys a call on both sides: the ratio of calls is the ratio of keys.
    larder_getmany="$(rate larder getmany)"
    echo "larder getmany / redis MGET of 16: $(ratio "$larder_getmany" "$(rate redis getmany)")"
  fi
  if wants session_get; then
    session_ratio="$(ratio "$larder_session" "$(rate redis session_get)")"
    echo "larder session_get / redis MULTI HGETALL+PEXPIRE: $session_ratio" \
      "(target >= 1.0: $(verdict "$session_ratio" 1.0))"
    echo "larder session_get / redis-aof:  $(ratio "$larder_session" "$(rate redis-aof session_get)")"
  fi
  if wants ratelimit_sliding; then
    larder_sliding="$(rate larder ratelimit_sliding)"
    echo "larder ratelimit_sliding / redis MULTI ZREMRANGEBYSCORE+ZADD+ZCARD+PEXPIRE:" \
      "$(ratio "$larder_sliding" "$(rate redis ratelimit_sliding)")"
    echo "larder ratelimit_sliding / redis-aof:  $(ratio "$larder_sliding" \
      "$(rate redis-aof ratelimit_sliding)")"
  fi
  if wants ratelimit_gcra; then
    larder_gcra="$(rate larder ratelimit_gcra)"
    echo "larder ratelimit_gcra / redis EVALSHA gcra.lua:" \
      "$(ratio "$larder_gcra" "$(rate redis ratelimit_gcra)")"
    echo "larder ratelimit_gcra / redis-aof:  $(ratio "$larder_gcra" \
      "$(rate redis-aof ratelimit_gcra)")"
  fi
fi
echo "note: client and servers share the machine's $(nproc) cores; expect run-to-run noise of ±20%."
busiest="$(awk '$11 != "null" && $11 > m { m = $11 } END { printf "%.2f", m }' "$results")"
if awk -v m="$busiest" 'BEGIN { exit !(m > 0.25) }'; then
  echo "WARNING: other work used up to $busiest cores during a run (see oth_cores): these" \
    "numbers are depressed by it; rerun on a quiet machine."
fi
