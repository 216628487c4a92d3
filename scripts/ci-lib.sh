# ci-lib.sh: helpers the check-*.sh scripts source (not run on its own).
#   larder_binary NAME [PATH]   the larder binary to test: PATH, or the debug build; absolute;
#                               exits 2, naming the script, when there is none
#   python_venv DIR             a Python venv at DIR, made if missing (installs Debian's
#                               python3-venv when python3 lacks it)
#   ensure_openssl              installs Debian's openssl when the command is missing

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
