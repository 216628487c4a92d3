#!/usr/bin/env bash
# bench-flask-limiter.sh: the rate-limited endpoint of examples/flask (GET /api/v1/ai/chat,
# Flask-Limiter under gunicorn with 4 sync workers) with its limits storage in Larder
# (larder+unix://), in Redis (redis:// over TCP and redis+unix://) and in each worker's memory
# (memory://), in the same run, under a closed-loop HTTP load (wrk) on loopback. Prints Markdown
# tables of requests/s, p50 and p99 per storage, the Larder/Redis and Larder/memory ratios, and
# the CPU time per request of the larder and redis servers and of the app.
#
# The example builds its storage URI from LARDER_LOCATION and has no setting for another
# storage, so each cell runs the example's own app (shop.wsgi, unchanged) through a small
# bench-only WSGI module written to the scratch directory, which imports it with two changes:
# the Limiter's storage_uri (and, for the fixed-window cells, strategy) are replaced before
# the shop makes its Limiter, and werkzeug's ProxyFix(x_for=1) wraps the app, so that the
# limit's key (the shop's `who`: the client's address before login) comes from
# X-Forwarded-For, as behind a reverse proxy. wrk sends BENCH_CLIENTS addresses in turn, a
# new set in every cell, so the limit is kept for many clients rather than for one.
#
# Cells: for every round, strategy (moving-window is the example's; fixed-window for
# comparison) and storage (the order rotated from one round to the next) a fresh gunicorn,
# 1 s of untimed load, then BENCH_SECONDS of timed load with SHOP_CHAT_LIMIT so high that
# every request is admitted (a non-2xx answer fails the run): the storage's cost per request.
# Then, unless BENCH_DENIED_SECONDS is 0, the same with the example's real 60 a minute and one
# client address, so that all but the first 60 requests are answered 429: the denied path.
#
# Makes (or reuses) a venv with pinned Flask, Flask-Caching, Flask-Limiter, limits, gunicorn
# and redis-py, and installs ./clients/python into it. Starts a fresh release larder
# (temporary data dir, Unix socket only) and a fresh Redis (appendonly yes, appendfsync
# everysec, as scripts/bench-vs-redis.sh runs it; a free loopback port and a Unix socket);
# both are stopped at the end. Installs Debian's redis-server and wrk if missing. Nothing
# listens beyond 127.0.0.1. Not run by CI: it takes about 8 minutes.
#
# Environment: BENCH_SECONDS (timed seconds per admitted cell, 10, at most 600), BENCH_ROUNDS
# (3, at most 20), BENCH_DENIED_SECONDS (timed seconds per denied cell, 5; 0 skips them),
# BENCH_CONNECTIONS (wrk's connections, 16, at most 256), BENCH_CLIENTS (client addresses per
# admitted cell, 1000, at most 65536), BENCH_WORKERS (gunicorn workers, 4, at most 16),
# BENCH_STRATEGIES (moving-window,fixed-window), BENCH_OUT_DIR (where results.jsonl, report.md
# and machine.txt go; default a new directory under /tmp), BENCH_FLASK_VENV (the venv, default
# $HOME/.cache/larder-ci-tools/bench-flask-limiter-venv), LARDER_BIN (a larder binary to use
# instead of building the release one).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
seconds="${BENCH_SECONDS:-10}"
rounds="${BENCH_ROUNDS:-3}"
denied_seconds="${BENCH_DENIED_SECONDS:-5}"
connections="${BENCH_CONNECTIONS:-16}"
clients="${BENCH_CLIENTS:-1000}"
workers="${BENCH_WORKERS:-4}"
strategies="${BENCH_STRATEGIES:-moving-window,fixed-window}"
venv="${BENCH_FLASK_VENV:-$HOME/.cache/larder-ci-tools/bench-flask-limiter-venv}"
pins=(Flask==3.1.3 Flask-Caching==2.5.1 Flask-Limiter==4.1.1 limits==5.8.0 gunicorn==27.0.1
  redis==8.2.0)
# So high that no cell comes near it: every request is admitted.
admit_limit=100000000
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
require_positive "bench-flask-limiter: BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS, BENCH_CLIENTS and BENCH_WORKERS must be positive whole numbers" \
  "$seconds" "$rounds" "$connections" "$clients" "$workers"
require_whole "bench-flask-limiter: BENCH_DENIED_SECONDS must be a whole number of seconds" \
  "$denied_seconds"
check_at_most() { # NAME VALUE MAX
  if [ "${#2}" -gt 6 ] || [ "$2" -gt "$3" ]; then
    echo "bench-flask-limiter: $1 must be at most $3, got '$2'" >&2
    exit 2
  fi
}
check_at_most BENCH_SECONDS "$seconds" 600
check_at_most BENCH_DENIED_SECONDS "$denied_seconds" 600
check_at_most BENCH_ROUNDS "$rounds" 20
check_at_most BENCH_CONNECTIONS "$connections" 256
check_at_most BENCH_CLIENTS "$clients" 65536
check_at_most BENCH_WORKERS "$workers" 16
strategy_list=()
for strategy in ${strategies//,/ }; do
  case "$strategy" in moving-window | fixed-window) strategy_list+=("$strategy") ;; *)
    echo "bench-flask-limiter: BENCH_STRATEGIES takes moving-window and fixed-window, got '$strategy'" >&2
    exit 2
    ;;
  esac
done
if [ "${#strategy_list[@]}" -eq 0 ]; then
  echo "bench-flask-limiter: BENCH_STRATEGIES takes moving-window and fixed-window, got '$strategies'" >&2
  exit 2
fi

bench_start flask-limiter
out="${BENCH_OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/larder-flask-limiter-report.XXXXXX")}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
: >"$out/results.jsonl"

section "machine"
machine_facts | tee "$out/machine.txt"

larder_bin="$(bench_binary)"
if ! ensure_redis; then
  echo "bench-flask-limiter: Redis is missing and cannot be installed (needs root and apt-get)" >&2
  exit 1
fi
if ! command -v wrk >/dev/null; then
  section "installing wrk"
  if ! { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq wrk >/dev/null; }; then
    echo "bench-flask-limiter: wrk is missing and cannot be installed (needs root and apt-get)" >&2
    exit 1
  fi
fi

section "venv $venv"
python_venv "$venv"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" "${pins[@]}"
# The client as a user installs it; rebuilt every run so its stubs match proto/.
rm -rf clients/python/build clients/python/*.egg-info
"${pip[@]}" ./clients/python
"${pip[@]}" --force-reinstall --no-deps ./clients/python
rm -rf clients/python/build clients/python/*.egg-info

# The bench-only entry point: the example's app, with the storage (and strategy) replaced and
# the client's address taken from X-Forwarded-For.
cat >"$tmp/bench_shop.py" <<'EOF'
"""shop.wsgi with BENCH_STORAGE_URI and BENCH_STRATEGY in its Limiter, behind ProxyFix."""

import os

import flask_limiter
from werkzeug.middleware.proxy_fix import ProxyFix


class BenchLimiter(flask_limiter.Limiter):
    def __init__(self, *args, **kwargs):
        kwargs["storage_uri"] = os.environ["BENCH_STORAGE_URI"]
        kwargs["strategy"] = os.environ["BENCH_STRATEGY"]
        super().__init__(*args, **kwargs)


flask_limiter.Limiter = BenchLimiter  # before the shop's `from flask_limiter import Limiter`

from shop import wsgi  # noqa: E402

app = wsgi.app
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)
EOF

# wrk: each request from the next of CLIENTS addresses PREFIX.x.y; a JSON line at the end.
cat >"$tmp/load.lua" <<'EOF'
local ids = 0
function setup(thread)
  thread:set("id", ids)
  ids = ids + 1
end
local n = 0
function init(args)
  clients = tonumber(args[1])
  prefix = args[2]
  threads = tonumber(args[3])
end
function request()
  local c = (n * threads + id) % clients
  n = n + 1
  return wrk.format("GET", nil,
    { ["X-Forwarded-For"] = prefix .. "." .. math.floor(c / 256) .. "." .. (c % 256) })
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"max_us": %d, "non2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

section "servers"
redis_port="$(free_port)"
mkdir -p "$tmp/redis" "$tmp/larder"
redis-server --bind 127.0.0.1 --port "$redis_port" \
  --save '' --appendonly yes --appendfsync everysec --unixsocket "$tmp/redis.sock" \
  --unixsocketperm 700 --dir "$tmp/redis" --daemonize no --protected-mode yes \
  >"$tmp/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
"$larder_bin" serve --data-dir "$tmp/larder" --listen none --unix-socket "$tmp/larder.sock" \
  --log-level warn >"$tmp/larder.log" 2>&1 &
larder_pid=$!
pids+=("$larder_pid")
wait_for_port "$redis_port" "$redis_pid" "$tmp/redis.log"
wait_for_socket "$tmp/redis.sock" "$redis_pid" "$tmp/redis.log"
wait_for_socket "$tmp/larder.sock" "$larder_pid" "$tmp/larder.log"
{
  echo "larder: $("$larder_bin" --version) (release build, default settings, Unix socket)"
  echo "redis: $(redis-server --version | awk '{print $3}' | sed 's/^v=//')" \
    "(appendonly yes, appendfsync everysec)"
  echo "wrk: $(wrk --version 2>&1 | awk 'NR == 1 {print $2}'), $connections connections," \
    "2 threads; gunicorn: $workers sync workers"
  echo "python: $("$venv/bin/python" -c 'import platform; print(platform.python_version())')," \
    "$("$venv/bin/pip" list --disable-pip-version-check 2>/dev/null |
      awk 'tolower($1) ~ /^(flask|flask-limiter|limits|gunicorn|redis|grpcio|protobuf|larder-client)$/ {
        printf "%s%s %s", sep, $1, $2; sep = ", "
      }')"
} | tee -a "$out/machine.txt"
echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)" |
  tee -a "$out/machine.txt"

storages=(larder redis-tcp redis-unix memory)
storage_uri() {
  case "$1" in
    larder) echo "larder+unix://$tmp/larder.sock?namespace=shop-limits" ;;
    redis-tcp) echo "redis://127.0.0.1:$redis_port/0" ;;
    redis-unix) echo "redis+unix://$tmp/redis.sock" ;;
    memory) echo "memory://" ;;
  esac
}

# The on-CPU nanoseconds of the gunicorn master and its workers.
app_ns() {
  local total pid
  total="$(cpu_ns "$1")"
  for pid in $(ps -o pid= --ppid "$1"); do
    total=$((total + $(cpu_ns "$pid")))
  done
  echo "$total"
}

cell_no=0
# run_cell ROUND STRATEGY STORAGE KIND(admitted|denied) SECONDS LIMIT CLIENTS
run_cell() {
  local round="$1" strategy="$2" storage="$3" kind="$4" secs="$5" limit="$6" nclients="$7"
  local port app_pid prefix l0 r0 a0 m0 l1 r1 a1 m1 line
  cell_no=$((cell_no + 1))
  # A new set of client addresses (so new keys) in every cell.
  prefix="$((11 + cell_no / 256)).$((cell_no % 256))"
  port="$(free_port)"
  (
    cd examples/flask
    exec env BENCH_STORAGE_URI="$(storage_uri "$storage")" BENCH_STRATEGY="$strategy" \
      SHOP_CHAT_LIMIT="$limit" LARDER_LOCATION="unix:$tmp/larder.sock" SHOP_DB="$tmp/shop.db" \
      PYTHONPATH="$tmp:$PWD" "$venv/bin/gunicorn" bench_shop:app --workers "$workers" \
      --bind "127.0.0.1:$port" --log-level warning
  ) >"$tmp/app.log" 2>&1 &
  app_pid=$!
  pids+=("$app_pid")
  wait_for_port "$port" "$app_pid" "$tmp/app.log"
  # Untimed: every worker has its storage connection and its code warm.
  timeout 30 wrk -t 2 -c "$connections" -d 1s -s "$tmp/load.lua" "http://127.0.0.1:$port/api/v1/ai/chat" \
    -- "$nclients" "$prefix" 2 >/dev/null
  l0="$(cpu_ns "$larder_pid")" r0="$(cpu_ns "$redis_pid")" a0="$(app_ns "$app_pid")" m0="$(machine_ns)"
  line="$(timeout $((secs + 60)) wrk -t 2 -c "$connections" -d "${secs}s" -s "$tmp/load.lua" \
    "http://127.0.0.1:$port/api/v1/ai/chat" -- "$nclients" "$prefix" 2 | tail -n 1)"
  l1="$(cpu_ns "$larder_pid")" r1="$(cpu_ns "$redis_pid")" a1="$(app_ns "$app_pid")" m1="$(machine_ns)"
  stop_pids "$app_pid"
  unset 'pids[${#pids[@]}-1]'
  case "$line" in "{"*) ;; *)
    echo "bench-flask-limiter: wrk gave no result for $storage/$strategy/$kind; the app's log:" >&2
    cat "$tmp/app.log" >&2
    exit 1
    ;;
  esac
  printf '{"round": %d, "strategy": "%s", "storage": "%s", "kind": "%s", "limit": %d, "clients": %d, "larder_ns": %d, "redis_ns": %d, "app_ns": %d, "machine_ns": %d, "wrk": %s}\n' \
    "$round" "$strategy" "$storage" "$kind" "$limit" "$nclients" $((l1 - l0)) $((r1 - r0)) \
    $((a1 - a0)) $((m1 - m0)) "$line" >>"$out/results.jsonl"
  echo "round $round $strategy $storage $kind: $line"
  if [ "$kind" = admitted ] && ! grep -q '"non2xx": 0,' <<<"$line"; then
    echo "bench-flask-limiter: a request was not admitted in an admitted cell; the app's log:" >&2
    cat "$tmp/app.log" >&2
    exit 1
  fi
}

section "timing: $rounds rounds of ${seconds} s per storage and strategy (denied: ${denied_seconds} s)"
for round in $(seq 1 "$rounds"); do
  order=()
  for i in 0 1 2 3; do
    order+=("${storages[$(((i + round - 1) % 4))]}")
  done
  for strategy in "${strategy_list[@]}"; do
    for storage in "${order[@]}"; do
      run_cell "$round" "$strategy" "$storage" admitted "$seconds" "$admit_limit" "$clients"
    done
    if [ "$denied_seconds" -gt 0 ]; then
      for storage in "${order[@]}"; do
        run_cell "$round" "$strategy" "$storage" denied "$denied_seconds" 60 1
      done
    fi
  done
done
stop_pids "$larder_pid" "$redis_pid"
pids=()

section "report"
"$venv/bin/python" - "$out/results.jsonl" "$(nproc)" >"$out/report.md" <<'EOF'
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
cpus = int(sys.argv[2])
names = {
    "larder": "Larder (larder+unix://)",
    "redis-tcp": "Redis (redis://, TCP)",
    "redis-unix": "Redis (redis+unix://)",
    "memory": "memory:// (per worker)",
}


def cells(strategy, kind, storage):
    return [r for r in rows if (r["strategy"], r["kind"], r["storage"]) == (strategy, kind, storage)]


def rps(r):
    return r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6)


def fmt(x, digits=0):
    return f"{x:,.{digits}f}"


for kind in ("admitted", "denied"):
    strategies = [s for s in dict.fromkeys(r["strategy"] for r in rows if r["kind"] == kind)]
    if not strategies:
        continue
    if kind == "admitted":
        n = rows[0]["clients"]
        print("Every request admitted (the limit far above the load), requests spread over "
              f"{n:,} client address{'' if n == 1 else 'es'} per cell.\n")
    else:
        print("The real limit, 60 a minute, one client address: all but the first 60 "
              "requests answered 429.\n")
    print("| strategy | storage | requests/s | p50 ms | p99 ms | Larder/this requests/s | "
          "larder CPU µs/req | redis CPU µs/req | app CPU µs/req | the three | 429s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy in strategies:
        larder = {r["round"]: rps(r) for r in cells(strategy, kind, "larder")}
        for storage in names:
            cs = cells(strategy, kind, storage)
            if not cs:
                continue
            reqs = sum(r["wrk"]["requests"] for r in cs)
            total_rps = reqs / sum(r["wrk"]["duration_us"] / 1e6 for r in cs)
            p50 = statistics.median(r["wrk"]["p50_us"] for r in cs) / 1000
            p99 = statistics.median(r["wrk"]["p99_us"] for r in cs) / 1000
            ratios = [larder[r["round"]] / rps(r) for r in cs if r["round"] in larder]
            ratio = "" if storage == "larder" else f"{statistics.median(ratios):.2f}×"
            # A thread that exits between the two reads takes its time along: never below 0.
            per = lambda key: sum(max(0, r[key]) for r in cs) / reqs / 1000  # noqa: E731
            denied = sum(r["wrk"]["non2xx"] for r in cs)
            print(f"| {strategy} | {names[storage]} | {fmt(total_rps)} | {p50:.1f} | {p99:.1f} | "
                  f"{ratio} | {fmt(per('larder_ns'))} | {fmt(per('redis_ns'))} | "
                  f"{fmt(per('app_ns'))} | "
                  f"{fmt(per('larder_ns') + per('redis_ns') + per('app_ns'))} | {denied / reqs:.1%} |")
    print()

print("requests/s: all rounds' requests over all rounds' seconds; p50 and p99: the median of the "
      "rounds' own (wrk's); Larder/this: the median over rounds of the two cells' ratio in each "
      "round. CPU: on-CPU time of each process (all threads; the app is the gunicorn master and "
      "its workers) during the timed seconds, over the requests.")
busy = [(r["machine_ns"] - r["larder_ns"] - r["redis_ns"] - r["app_ns"])
        / (r["wrk"]["duration_us"] * 1000) for r in rows]
print(f"\nCores busy with anything else (wrk included), per cell, of {cpus}: median "
      f"{statistics.median(busy):.2f}, max {max(busy):.2f}.")
EOF
cat "$out/report.md"
echo
echo "bench-flask-limiter: report, results and machine facts in $out"
