#!/usr/bin/env bash
# bench-django-cache.sh: Django's cache.get and cache.set through larder_client's LarderCache
# and through django-redis against Redis, one caller, over TCP and over a Unix socket, in the
# same process and run; and, for context, the bare clients (larder_client.Larder.cache against
# redis-py) the same way. Prints Markdown tables of p50, p99 and mean µs per call.
#
# Makes (or reuses) a venv with pinned Django, django-redis and redis-py, and installs
# ./clients/python into it (its gRPC stubs are generated at install). Starts a fresh release
# larder (temporary data dir) on a free loopback port and a Unix socket, and a fresh Redis
# (appendonly yes, appendfsync everysec, as scripts/bench-vs-redis.sh runs it) on a free
# loopback port and a Unix socket; both are stopped at the end. Then runs
# scripts/bench-django-cache.py, which alternates the backends in rounds (see its docstring).
# Installs Debian's redis-server if missing. Nothing listens beyond 127.0.0.1. Not run by CI:
# it takes a few minutes.
#
# Environment: BENCH_CALLS (timed calls per cell over all rounds, 20000, at most 1000000),
# BENCH_ROUNDS (10), BENCH_KEYS (1000), BENCH_VALUE_SIZE (bytes, 100), BENCH_WARMUP (untimed
# calls per cell before each timed stretch, 200), BENCH_LAYERS (django,client), BENCH_OUT_DIR
# (where results.jsonl, report.md and machine.txt go; default a new directory under /tmp),
# BENCH_DJANGO_VENV (the venv, default $HOME/.cache/larder-ci-tools/bench-django-venv),
# BENCH_PIN (none: the scheduler places every process, the default; same: the client and both
# servers all on CPU 0; split: both servers on CPU 0, the client on CPU 1; with taskset),
# LARDER_BIN (a larder binary to use instead of building the release one).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
calls="${BENCH_CALLS:-20000}"
rounds="${BENCH_ROUNDS:-10}"
keys="${BENCH_KEYS:-1000}"
value_size="${BENCH_VALUE_SIZE:-100}"
warmup="${BENCH_WARMUP:-200}"
layers="${BENCH_LAYERS:-django,client}"
pin="${BENCH_PIN:-none}"
venv="${BENCH_DJANGO_VENV:-$HOME/.cache/larder-ci-tools/bench-django-venv}"
django_pin="Django==5.2.20"
django_redis_pin="django-redis==7.0.0"
redis_py_pin="redis==8.2.0"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
require_positive "bench-django-cache: BENCH_CALLS, BENCH_ROUNDS, BENCH_KEYS and BENCH_VALUE_SIZE must be positive whole numbers" \
  "$calls" "$rounds" "$keys" "$value_size"
require_whole "bench-django-cache: BENCH_WARMUP must be a whole number of calls" "$warmup"
if [ "${#calls}" -gt 7 ] || [ "$calls" -gt 1000000 ]; then
  echo "bench-django-cache: BENCH_CALLS must be at most 1000000, got '$calls'" >&2
  exit 2
fi
if [ "${#warmup}" -gt 7 ] || [ "$warmup" -gt 1000000 ]; then
  echo "bench-django-cache: BENCH_WARMUP must be at most 1000000, got '$warmup'" >&2
  exit 2
fi
if [ "${#keys}" -gt 7 ] || [ "$keys" -gt 1000000 ]; then
  echo "bench-django-cache: BENCH_KEYS must be at most 1000000, got '$keys'" >&2
  exit 2
fi
if [ "${#value_size}" -gt 7 ] || [ "$value_size" -gt 1048576 ]; then
  echo "bench-django-cache: BENCH_VALUE_SIZE must be at most 1048576 bytes, got '$value_size'" >&2
  exit 2
fi
if [ "${#rounds}" -gt 3 ] || [ "$rounds" -gt 100 ] || [ "$rounds" -gt "$calls" ]; then
  echo "bench-django-cache: BENCH_ROUNDS must be at most 100 and at most BENCH_CALLS, got '$rounds'" >&2
  exit 2
fi
server_pin=()
client_pin=()
case "$pin" in
  none) ;;
  same | split)
    if ! command -v taskset >/dev/null; then
      echo "bench-django-cache: BENCH_PIN=$pin needs taskset (util-linux)" >&2
      exit 2
    fi
    if [ "$pin" = split ] && [ "$(nproc)" -lt 2 ]; then
      echo "bench-django-cache: BENCH_PIN=split needs 2 CPUs, this machine has $(nproc)" >&2
      exit 2
    fi
    server_pin=(taskset -c 0)
    client_pin=(taskset -c "$([ "$pin" = same ] && echo 0 || echo 1)")
    ;;
  *)
    echo "bench-django-cache: BENCH_PIN takes none, same or split, got '$pin'" >&2
    exit 2
    ;;
esac
for layer in ${layers//,/ }; do
  case "$layer" in django | client) ;; *)
    echo "bench-django-cache: BENCH_LAYERS takes django and client, got '$layer'" >&2
    exit 2
    ;;
  esac
done
if [ -z "${layers//,/}" ]; then
  echo "bench-django-cache: BENCH_LAYERS takes django and client, got '$layers'" >&2
  exit 2
fi

bench_start django-cache
out="${BENCH_OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/larder-django-cache-report.XXXXXX")}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

section "machine"
machine_facts | tee "$out/machine.txt"

larder_bin="$(bench_binary)"
if ! ensure_redis; then
  echo "bench-django-cache: Redis is missing and cannot be installed (needs root and apt-get)" >&2
  exit 1
fi

section "venv $venv"
python_venv "$venv"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" "$django_pin" "$django_redis_pin" "$redis_py_pin"
# The client as a user installs it; rebuilt every run so its stubs match proto/. A stale
# build/ must not stand in for freshly generated stubs.
rm -rf clients/python/build clients/python/*.egg-info
"${pip[@]}" ./clients/python
"${pip[@]}" --force-reinstall --no-deps ./clients/python
rm -rf clients/python/build clients/python/*.egg-info
if ! "$venv/bin/python" -c 'import larder_client.django; larder_client.django.LarderCache' \
  2>"$tmp/import.err"; then
  cat "$tmp/import.err" >&2
  echo "bench-django-cache: the installed larder_client has no larder_client.django.LarderCache" >&2
  exit 1
fi

section "servers"
redis_port="$(free_port)"
larder_port="$(free_port)"
mkdir -p "$tmp/redis" "$tmp/larder"
${server_pin[@]+"${server_pin[@]}"} redis-server --bind 127.0.0.1 --port "$redis_port" \
  --save '' --appendonly yes --appendfsync everysec --unixsocket "$tmp/redis.sock" \
  --unixsocketperm 700 --dir "$tmp/redis" --daemonize no --protected-mode yes \
  >"$tmp/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
${server_pin[@]+"${server_pin[@]}"} "$larder_bin" serve --data-dir "$tmp/larder" \
  --listen "127.0.0.1:$larder_port" --unix-socket "$tmp/larder.sock" --log-level warn \
  >"$tmp/larder.log" 2>&1 &
larder_pid=$!
pids+=("$larder_pid")
wait_for_port "$redis_port" "$redis_pid" "$tmp/redis.log"
wait_for_socket "$tmp/redis.sock" "$redis_pid" "$tmp/redis.log"
wait_for_port "$larder_port" "$larder_pid" "$tmp/larder.log"
wait_for_socket "$tmp/larder.sock" "$larder_pid" "$tmp/larder.log"
{
  echo "larder: $("$larder_bin" --version) (release build, default settings, one gRPC worker thread)"
  echo "redis: $(redis-server --version | awk '{print $3}' | sed 's/^v=//')" \
    "(appendonly yes, appendfsync everysec)"
  echo "python: $("$venv/bin/python" -c 'import platform; print(platform.python_version())')," \
    "$("$venv/bin/pip" list --disable-pip-version-check 2>/dev/null |
      awk 'tolower($1) ~ /^(django|django-redis|redis|grpcio|protobuf|hiredis|larder-client)$/ {
        printf "%s%s %s", sep, $1, $2; sep = ", "
      }')"
} | tee -a "$out/machine.txt"

echo "pinning: $pin${server_pin[*]:+ (servers: ${server_pin[*]}; client: ${client_pin[*]})}" |
  tee -a "$out/machine.txt"
echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)" |
  tee -a "$out/machine.txt"

section "timing: $calls calls per cell in $rounds rounds"
# Bounded: 16 cells at most, each call well under 5 ms even on a slow day, plus warmups and
# the first writes of every key.
limit=$((300 + (calls + warmup * rounds + keys) * 16 * 5 / 1000))
if ! timeout "$limit" ${client_pin[@]+"${client_pin[@]}"} \
  "$venv/bin/python" scripts/bench-django-cache.py \
  --larder-tcp "127.0.0.1:$larder_port" --larder-unix "unix:$tmp/larder.sock" \
  --redis-tcp "redis://127.0.0.1:$redis_port/0" --redis-unix "unix://$tmp/redis.sock?db=0" \
  --calls "$calls" --rounds "$rounds" --keys "$keys" --value-size "$value_size" \
  --warmup "$warmup" --layers "$layers" --larder-pid "$larder_pid" --redis-pid "$redis_pid" \
  --json "$out/results.jsonl" >"$out/report.md"; then
  cat "$out/report.md" >&2
  echo "bench-django-cache: the timing run failed (or took over $limit s); the servers' logs:" >&2
  cat "$tmp/larder.log" "$tmp/redis.log" >&2
  exit 1
fi
stop_pids "$larder_pid" "$redis_pid"
pids=()

section "report"
cat "$out/report.md"
echo
echo "bench-django-cache: report, results and machine facts in $out"
