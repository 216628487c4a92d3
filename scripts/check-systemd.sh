#!/usr/bin/env bash
# check-systemd.sh: checks systemd/larder.service and the example config with a built larder.
#   systemd-analyze verify      the unit parses and its commands exist
#   systemd-analyze security    exposure score at most 2.0 (--threshold=20, tenths)
#   larder check-config         systemd/larder.toml is a valid config
# Usage: scripts/check-systemd.sh [PATH_TO_LARDER]   (default: the debug build)
# Installs Debian's systemd (for systemd-analyze) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
larder="$(larder_binary check-systemd "${1:-}")"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The unit names the installed path; it is pointed at the binary under test.
verify_unit systemd/larder.service "$larder" "$tmp"
echo "systemd-analyze verify: ok"
systemd-analyze security --offline=yes --threshold=20 "$tmp/larder.service" >"$tmp/security.txt" || {
  cat "$tmp/security.txt"
  echo "check-systemd: exposure score above 2.0" >&2
  exit 1
}
tail -n 1 "$tmp/security.txt"

"$larder" check-config --config systemd/larder.toml >/dev/null
echo "larder check-config systemd/larder.toml: ok"
