# bench-lib.sh: helpers the benchmark scripts (bench.sh, bench-vs-redis.sh, bench-footprint.sh,
# bench-django-cache.sh) source; not run on its own. `bench_start` sets up `tmp` (a scratch
# directory) and the array `pids`, and installs `bench_cleanup` as the EXIT trap.
#   require_whole MSG VALUE...
#                             exits 2 with "MSG, got 'VALUE'" unless every VALUE is a whole number
#   require_positive MSG VALUE...
#                             the same, and no VALUE may be 0
#   bench_start NAME          $tmp (larder-NAME.XXXXXX), an empty `pids`, and the traps that
#                             run bench_cleanup on exit and on an interrupt
#   stop_pids PID...          stops each process (SIGTERM, SIGKILL after 10 s) and reaps it
#   bench_cleanup             stops every process in `pids`, removes $tmp
#   section TEXT              a heading in the log
#   wait_until WHAT PID LOG TEST...
#                             fails unless TEST succeeds within 10 s while PID lives
#   wait_for_port PORT PID LOG
#                             fails unless 127.0.0.1:PORT accepts within 10 s while PID lives
#   wait_for_socket PATH PID LOG
#                             the same for a Unix socket at PATH
#   bench_out_dir PREFIX      $out ($BENCH_OUT_DIR or a new PREFIX.XXXXXX), an empty
#                             $out/results.jsonl in $results, and $out/machine.txt
#   bench_binary              the larder binary: $LARDER_BIN if set (it must exist), else the
#                             release build, made now
#   port_free PORT            fails if something already listens on 127.0.0.1:PORT
#   free_port                 prints a loopback TCP port nothing listens on
#   ensure_redis              installs Debian's redis-server and redis-tools when missing;
#                             returns 1 when it cannot
#   cpu_ns PID                on-CPU nanoseconds of every thread of PID so far
#   machine_ns                busy and stolen nanoseconds of all CPUs so far
#   machine_facts             the machine, commit and kernel, a line each

require_whole() {
  local msg="$1" n
  shift
  for n in "$@"; do
    case "$n" in '' | *[!0-9]*)
      echo "$msg, got '$n'" >&2
      exit 2
      ;;
    esac
  done
}

require_positive() {
  local msg="$1" n
  shift
  require_whole "$msg" "$@"
  for n in "$@"; do
    if [ "$n" -eq 0 ]; then
      echo "$msg, got '$n'" >&2
      exit 2
    fi
  done
}

bench_start() {
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/larder-$1.XXXXXX")"
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

stop_pids() {
  local pid
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    # Bounded: a server that ignores SIGTERM for 10 s gets SIGKILL.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

bench_cleanup() {
  stop_pids "${pids[@]}"
  rm -rf "$tmp"
}

section() { printf '\n== %s\n' "$*"; }

# Fails unless `$4...` (a test) succeeds within 10 s while process $2 lives; $1 names what is
# awaited, $3 is the process's log, shown if it died.
wait_until() {
  local what="$1" pid="$2" log="$3"
  shift 3
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: the server for $what exited; its log:" >&2
      cat "$log" >&2
      exit 1
    fi
    "$@" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: $what was not ready within 10 s" >&2
  exit 1
}

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1"); }

wait_for_port() { wait_until "127.0.0.1:$1" "$2" "$3" accepts "$1"; }

wait_for_socket() { wait_until "$1" "$2" "$3" test -S "$1"; }

bench_binary() {
  if [ -n "${LARDER_BIN:-}" ]; then
    if [ ! -x "$LARDER_BIN" ]; then
      echo "bench: LARDER_BIN=$LARDER_BIN is not an executable file" >&2
      exit 2
    fi
    echo "$LARDER_BIN"
    return
  fi
  section "build (release)" >&2
  # `larder bench` is the cargo feature `bench`.
  cargo build --release --features bench --bin larder >&2
  echo "${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}/release/larder"
}

port_free() {
  if accepts "$1" 2>/dev/null; then
    echo "bench: 127.0.0.1:$1 is already in use; set BENCH_PORT_BASE or stop it" >&2
    exit 1
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ensure_redis() {
  if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null &&
    command -v redis-cli >/dev/null; then
    return 0
  fi
  section "installing redis-server and redis-tools"
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
    timeout 600 apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive timeout 600 \
      apt-get install -y -qq redis-server redis-tools >/dev/null
}

cpu_ns() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'
}

# /proc/stat counts 100 ticks a second.
machine_ns() {
  awk 'NR == 1 { printf "%.0f", ($2 + $3 + $4 + $7 + $8 + $9) * 1e7; exit }' /proc/stat
}

machine_facts() {
  echo "cpu: $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
    "memory $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    # The benchmark's own output (docs/bench/) is no change to what is measured.
    [ -n "$(git status --porcelain -- . ':(exclude)docs/bench' 2>/dev/null)" ] &&
      echo ' (work tree has changes)'
  )"
  echo "kernel: $(uname -r)"
}

# bench_out_dir PREFIX: sets `out` to $BENCH_OUT_DIR (created if missing), or else a new
# directory under $TMPDIR named PREFIX.XXXXXX, as an absolute path; sets `results` to an empty
# $out/results.jsonl; and writes the machine's facts to $out/machine.txt (and stdout).
bench_out_dir() {
  out="${BENCH_OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")}"
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  results="$out/results.jsonl"
  : >"$results"
  section "machine"
  machine_facts | tee "$out/machine.txt"
}
