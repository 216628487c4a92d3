#!/usr/bin/env bash
# bench-django-cache.sh: Django's cache.get and cache.set through larder_client's LarderCache
# and through django-redis against Redis, one caller, over TCP and over a Unix socket, in the
# same process and run; and, for context, the bare clients (larder_client.Larder.cache against
# redis-py) the same way. Larder's side runs on each of the client's cores (BENCH_CORES: the
# native one, larder_client._native, and grpcio). Prints Markdown tables of p50, p99 and mean
# µs per call. scripts/bench-python-client.sh runs it with the Rust-client and asyncio parts.
#
# Makes (or reuses) a venv with pinned Django, django-redis and redis-py, and installs
# ./clients/python into it with its native core, built from a copy of clients/python and
# proto/ (the checkout's own build/ is left alone) whenever those sources changed since the
# venv's last install (CARGO_TARGET_DIR keeps the Rust build between runs). Starts a fresh release
# larder (temporary data dir) on a free loopback port and a Unix socket, and a fresh Redis
# (appendonly yes, appendfsync everysec, as scripts/bench-vs-redis.sh runs it) on a free
# loopback port and a Unix socket; both are stopped at the end. Then runs
# scripts/bench-django-cache.py, which turns the order of the backends in rounds (see its
# docstring), and then, with BENCH_ASYNC_TASKS, scripts/bench-python-client.py.
# Installs Debian's redis-server if missing. Nothing listens beyond 127.0.0.1. Not run by CI:
# it takes a few minutes.
#
# Environment: BENCH_CALLS (timed calls per cell over all rounds, 20000, at most 1000000),
# BENCH_ROUNDS (10), BENCH_KEYS (1000), BENCH_VALUE_SIZE (bytes, 100), BENCH_WARMUP (untimed
# calls per cell before each timed stretch, 200), BENCH_LAYERS (django,client; also rust: Larder's
# Rust client, `larder bench` with one caller on one connection, against both servers in the
# same rounds), BENCH_CORES (native,grpc), BENCH_ASYNC_TASKS (0: no asyncio part; else that many
# tasks on one event loop calling get, see bench-python-client.py), BENCH_ASYNC_SECONDS (timed
# seconds per asyncio cell and round, 2), BENCH_ASYNC_WARMUP (untimed seconds before each, 0.5),
# BENCH_ASYNC_ROUNDS (5), BENCH_OUT_DIR (where results.jsonl, report.md and machine.txt go, and
# asyncio.jsonl with the asyncio part; default a new directory under /tmp),
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
cores="${BENCH_CORES:-native,grpc}"
async_tasks="${BENCH_ASYNC_TASKS:-0}"
async_seconds="${BENCH_ASYNC_SECONDS:-2}"
async_warmup="${BENCH_ASYNC_WARMUP:-0.5}"
async_rounds="${BENCH_ASYNC_ROUNDS:-5}"
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
require_whole "bench-django-cache: BENCH_ASYNC_TASKS must be a whole number of tasks" "$async_tasks"
require_positive "bench-django-cache: BENCH_ASYNC_ROUNDS must be a positive whole number" "$async_rounds"
for s in "$async_seconds" "$async_warmup"; do
  case "$s" in '' | *[!0-9.]* | *.*.* | .)
    echo "bench-django-cache: BENCH_ASYNC_SECONDS and BENCH_ASYNC_WARMUP take seconds, got '$s'" >&2
    exit 2
    ;;
  esac
done
if [ "${#async_tasks}" -gt 4 ] || [ "$async_tasks" -gt 4096 ] || [ "${#async_rounds}" -gt 3 ] ||
  [ "$async_rounds" -gt 100 ]; then
  echo "bench-django-cache: BENCH_ASYNC_TASKS must be at most 4096 and BENCH_ASYNC_ROUNDS at most 100" >&2
  exit 2
fi
if awk -v s="$async_seconds" -v w="$async_warmup" 'BEGIN { exit !(s <= 0 || s > 60 || w > 60) }'; then
  echo "bench-django-cache: BENCH_ASYNC_SECONDS must be above 0 and, like BENCH_ASYNC_WARMUP, at most 60" >&2
  exit 2
fi
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
  case "$layer" in django | client | rust) ;; *)
    echo "bench-django-cache: BENCH_LAYERS takes django, client and rust, got '$layer'" >&2
    exit 2
    ;;
  esac
done
if [ -z "${layers//,/}" ]; then
  echo "bench-django-cache: BENCH_LAYERS takes django, client and rust, got '$layers'" >&2
  exit 2
fi
for core in ${cores//,/ }; do
  case "$core" in native | grpc) ;; *)
    echo "bench-django-cache: BENCH_CORES takes native and grpc, got '$core'" >&2
    exit 2
    ;;
  esac
done
if [ -z "${cores//,/}" ]; then
  echo "bench-django-cache: BENCH_CORES takes native and grpc, got '$cores'" >&2
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
# The client as a user installs it, stubs generated from proto/ and the native core built, from
# a copy of its sources: a build/ in the checkout (another build's) neither stands in for them
# nor is touched. Reinstalled whenever those sources differ from the last install's.
client_src=(clients/python/{larder_client,native/src,native/Cargo.toml,native/Cargo.lock}
  clients/python/{native/build.rs,setup.py,generate.py,pyproject.toml,README.md} proto)
client_stamp="$(find "${client_src[@]}" -type f ! -path '*/__pycache__/*' -print0 |
  sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$venv/.larder-client-stamp" 2>/dev/null)" != "$client_stamp" ]; then
  mkdir -p "$tmp/src"
  tar -cf - --exclude=__pycache__ "${client_src[@]}" | tar -C "$tmp/src" -xf -
  rm -f "$venv/.larder-client-stamp"
  LARDER_CLIENT_NATIVE=1 "${pip[@]}" --force-reinstall "$tmp/src/clients/python"
  echo "$client_stamp" >"$venv/.larder-client-stamp"
fi
if ! "$venv/bin/python" -c 'import larder_client.django, larder_client._native
larder_client.django.LarderCache' 2>"$tmp/import.err"; then
  cat "$tmp/import.err" >&2
  echo "bench-django-cache: the installed larder_client lacks larder_client.django.LarderCache or its native core" >&2
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
# Bounded: 48 cells at most (and 8 runs of `larder bench` a round), each call well under 5 ms
# even on a slow day, plus warmups and the first writes of every key.
limit=$((300 + (calls + warmup * rounds + keys) * 48 * 5 / 1000 + rounds * 8 * 5))
if ! timeout "$limit" ${client_pin[@]+"${client_pin[@]}"} \
  "$venv/bin/python" scripts/bench-django-cache.py \
  --larder-tcp "127.0.0.1:$larder_port" --larder-unix "unix:$tmp/larder.sock" \
  --redis-tcp "redis://127.0.0.1:$redis_port/0" --redis-unix "unix://$tmp/redis.sock?db=0" \
  --calls "$calls" --rounds "$rounds" --keys "$keys" --value-size "$value_size" \
  --warmup "$warmup" --layers "$layers" --cores "$cores" --larder-bin "$larder_bin" \
  --larder-pid "$larder_pid" --redis-pid "$redis_pid" \
  --json "$out/results.jsonl" >"$out/sync.md"; then
  cat "$out/sync.md" >&2
  echo "bench-django-cache: the timing run failed (or took over $limit s); the servers' logs:" >&2
  cat "$tmp/larder.log" "$tmp/redis.log" >&2
  exit 1
fi
if [ "$async_tasks" -gt 0 ]; then
  section "asyncio: $async_tasks tasks, $async_rounds rounds of ${async_seconds} s per cell"
  # Bounded: 6 cells a round, plus the first writes of every key.
  limit=$(awk -v r="$async_rounds" -v s="$async_seconds" -v w="$async_warmup" -v k="$keys" \
    'BEGIN { printf "%d", 120 + r * 6 * (s + w + 5) + k * 6 * 5 / 1000 }')
  if ! timeout "$limit" ${client_pin[@]+"${client_pin[@]}"} \
    "$venv/bin/python" scripts/bench-python-client.py asyncio \
    --larder-tcp "127.0.0.1:$larder_port" --larder-unix "unix:$tmp/larder.sock" \
    --redis-tcp "redis://127.0.0.1:$redis_port/0" --redis-unix "unix://$tmp/redis.sock?db=0" \
    --cores "$cores" --tasks "$async_tasks" --seconds "$async_seconds" \
    --warmup-seconds "$async_warmup" --rounds "$async_rounds" --keys "$keys" \
    --value-size "$value_size" --larder-pid "$larder_pid" --redis-pid "$redis_pid" \
    --json "$out/asyncio.jsonl" >"$out/asyncio.md"; then
    cat "$out/asyncio.md" >&2
    echo "bench-django-cache: the asyncio run failed (or took over $limit s); the servers' logs:" >&2
    cat "$tmp/larder.log" "$tmp/redis.log" >&2
    exit 1
  fi
fi
stop_pids "$larder_pid" "$redis_pid"
pids=()

{
  if [ "$async_tasks" -gt 0 ] || [[ ",$layers," == *,rust,* ]]; then
    with_async=()
    [ "$async_tasks" -gt 0 ] && with_async=(--asyncio "$out/asyncio.jsonl")
    "$venv/bin/python" scripts/bench-python-client.py targets --sync "$out/results.jsonl" \
      ${with_async[@]+"${with_async[@]}"}
    echo
    echo "## One caller"
    echo
  fi
  cat "$out/sync.md"
  if [ "$async_tasks" -gt 0 ]; then
    echo
    echo "## asyncio"
    echo
    cat "$out/asyncio.md"
  fi
} >"$out/report.md"
rm -f "$out/sync.md" "$out/asyncio.md"

section "report"
cat "$out/report.md"
echo
echo "bench-django-cache: report, results and machine facts in $out"
