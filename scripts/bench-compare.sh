#!/usr/bin/env bash
# bench-compare.sh: two builds of larder side by side in one run, with Redis as the anchor.
# Builds the release binary of BASE (a commit, default HEAD~1) in a worktree of its own and of
# the checkout as it is, starts both daemons (each on a fresh data directory) and a Redis
# without persistence, then drives them with the same closed-loop load (`larder bench` of the
# checkout's build) in alternating rounds: base, new, base, new … so that drift on a shared
# machine lands on both. Prints each op's median ops/s and p50/p99 per side, the ratio
# new/base, and each side's ratio to Redis.
# Everything it starts is stopped on exit; nothing listens beyond 127.0.0.1.
#
# Usage: scripts/bench-compare.sh [BASE]
# Environment: BENCH_OPS (default "get set session_get ratelimit_sliding"), BENCH_ROUNDS (3),
# BENCH_DURATION (seconds per run, 5), BENCH_WARMUP (1), BENCH_CONCURRENCY (64),
# BENCH_CONNECTIONS (4), BENCH_KEYS (10000), BENCH_VALUE_SIZE (100), BENCH_SKIP_REDIS=1,
# BASE_BIN / NEW_BIN (binaries to use instead of building BASE and the checkout; NEW_BIN must
# have `larder bench`), BENCH_PORT_BASE (17100: base on +1, new on +2, Redis on +3).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
base_rev="${1:-HEAD~1}"
ops="${BENCH_OPS:-get set session_get ratelimit_sliding}"
ops="$(printf '%s' "$ops" | tr ',' ' ')"
rounds="${BENCH_ROUNDS:-3}"
duration="${BENCH_DURATION:-5}"
warmup="${BENCH_WARMUP:-1}"
concurrency="${BENCH_CONCURRENCY:-64}"
connections="${BENCH_CONNECTIONS:-4}"
keys="${BENCH_KEYS:-10000}"
value_size="${BENCH_VALUE_SIZE:-100}"
port_base="${BENCH_PORT_BASE:-17100}"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
require_positive "bench-compare: BENCH_* settings must be whole numbers above 0" \
  "$rounds" "$duration" "$concurrency" "$connections" "$keys" "$value_size" "$port_base"
require_whole "bench-compare: BENCH_WARMUP must be a whole number" "$warmup"
run_limit=$((warmup + duration + 150))
bench_start bench-compare

section "machine"
machine_facts

# The release build of $1 (a commit) in a worktree of its own, with a target dir of its own
# so that it does not evict the checkout's build.
build_rev() {
  local rev="$1" commit dir target
  commit="$(git rev-parse --verify "$rev^{commit}")"
  dir="$tmp/src-$commit"
  target="${CARGO_TARGET_DIR}-compare"
  git worktree add -q --detach "$dir" "$commit" >&2
  section "build $rev ($commit, release)" >&2
  (cd "$dir" && CARGO_TARGET_DIR="$target" cargo build --release --locked --bin larder >&2)
  cp "$target/release/larder" "$tmp/larder-base"
  git worktree remove --force "$dir" >&2
  echo "$tmp/larder-base"
}

if [ -n "${BASE_BIN:-}" ]; then
  base_bin="$BASE_BIN"
  base_label="$BASE_BIN"
else
  base_bin="$(build_rev "$base_rev")"
  base_label="$base_rev ($(git rev-parse --short "$base_rev"))"
fi
if [ -n "${NEW_BIN:-}" ]; then
  new_bin="$NEW_BIN"
  new_label="$NEW_BIN"
else
  section "build the checkout (release, with the bench feature)"
  cargo build --release --locked --features bench --bin larder
  new_bin="$CARGO_TARGET_DIR/release/larder"
  new_label="checkout ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ', modified'))"
fi
for b in "$base_bin" "$new_bin"; do
  [ -x "$b" ] || { echo "bench-compare: $b is not an executable file" >&2; exit 2; }
done
if ! "$new_bin" bench --help >/dev/null 2>&1; then
  echo "bench-compare: $new_bin has no 'bench' command (build it with --features bench)" >&2
  exit 2
fi

base_port=$((port_base + 1))
new_port=$((port_base + 2))
redis_port=$((port_base + 3))
section "starting servers"
start_larder() {
  local name="$1" bin="$2" port="$3"
  port_free "$port"
  mkdir "$tmp/$name-data"
  "$bin" serve --data-dir "$tmp/$name-data" --listen "127.0.0.1:$port" --log-level warn \
    >"$tmp/$name.log" 2>&1 &
  pids+=("$!")
  wait_for_port "$port" "$!" "$tmp/$name.log"
  echo "$name: $("$bin" --version) on 127.0.0.1:$port (pid $!)"
  eval "${name}_pid=$!"
}
start_larder base "$base_bin" "$base_port"
start_larder new "$new_bin" "$new_port"
with_redis=1
if [ "${BENCH_SKIP_REDIS:-0}" = 1 ] || ! ensure_redis; then
  with_redis=0
else
  port_free "$redis_port"
  mkdir "$tmp/redis"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --dir "$tmp/redis" --daemonize no --protected-mode yes >"$tmp/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_for_port "$redis_port" "$redis_pid" "$tmp/redis.log"
  echo "redis: $(redis-server --version | awk '{print $3}') on 127.0.0.1:$redis_port (no persistence)"
fi

# One row per run: side op round ops_per_sec p50_us p99_us
results="$tmp/results"
: >"$results"
json_field() {
  printf '%s\n' "$1" | sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}
load_run() {
  local side="$1" target="$2" pid="$3" op="$4" round="$5" system="larder" line
  [ "$side" = redis ] && system=redis
  line="$(timeout "$run_limit" "$new_bin" bench --target "$target" --system "$system" \
    --ops "$op" --concurrency "$concurrency" --connections "$connections" \
    --duration "${duration}s" --warmup "${warmup}s" --keys "$keys" \
    --value-size "$value_size" --server-pid "$pid" --json)"
  echo "$side $op $round $(json_field "$line" ops_per_sec) $(json_field "$line" p50_us)" \
    "$(json_field "$line" p99_us)" | tee -a "$results"
}

section "runs ($rounds rounds of ${duration}s per op and side, concurrency $concurrency)"
for op in $ops; do
  for round in $(seq 1 "$rounds"); do
    # Alternate which side goes first, so neither always runs on a warmer machine.
    if [ $((round % 2)) = 1 ]; then order="base new"; else order="new base"; fi
    for side in $order; do
      port_var="${side}_port"
      pid_var="${side}_pid"
      load_run "$side" "http://127.0.0.1:${!port_var}" "${!pid_var}" "$op" "$round"
    done
    if [ "$with_redis" = 1 ]; then
      load_run redis "redis://127.0.0.1:$redis_port" "$redis_pid" "$op" "$round"
    fi
  done
done

section "results: medians over $rounds rounds (base = $base_label, new = $new_label)"
median() {
  awk -v s="$1" -v o="$2" -v c="$3" '$1 == s && $2 == o { print $c }' "$results" |
    sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt='%-18s %9s %9s %8s %8s %8s %8s %9s %10s %10s\n'
printf "$fmt" op base_ops/s new_ops/s base_p50 new_p50 base_p99 new_p99 new/base base/redis new/redis
for op in $ops; do
  b="$(median base "$op" 4)"
  n="$(median new "$op" 4)"
  r="$(median redis "$op" 4)"
  printf "$fmt" "$op" "$b" "$n" "$(median base "$op" 5)" "$(median new "$op" 5)" \
    "$(median base "$op" 6)" "$(median new "$op" 6)" "$(ratio "$n" "$b")" "$(ratio "$b" "$r")" \
    "$(ratio "$n" "$r")"
done
echo "latencies in µs; client and servers share the machine's $(nproc) cores: a new/base ratio" \
  "within ±0.1 of 1.00 is noise on this machine."
