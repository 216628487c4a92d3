#!/usr/bin/env bash
# check-install.sh: runs scripts/install.sh into a temporary root (DESTDIR) and checks it:
#   install twice               the second run changes nothing (same files, same contents)
#   the installed unit          ExecStart names the installed binary; systemd-analyze verify
#                               passes on it (with the path resolved inside the temporary root,
#                               as scripts/check-systemd.sh does for the checkout's unit)
#   the installed config        larder check-config accepts it
#   --uninstall                 removes the binary, the unit and the unchanged config
#   --uninstall --purge         after an install with a data directory, removes that too
# Usage: scripts/check-install.sh [PATH_TO_LARDER]   (default: the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
larder="$(larder_binary check-install "${1:-}")"

# The scripts a user runs as root, and the checks, pass shellcheck.
if ! command -v shellcheck >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
shellcheck -x scripts/install.sh scripts/check-install.sh scripts/check-docs-examples.sh
echo "shellcheck: ok"

root="$(mktemp -d)"
tmp="$(mktemp -d)"
trap 'rm -rf "$root" "$tmp"' EXIT
fail() {
  echo "check-install: FAILED: $*" >&2
  exit 1
}
# Every file under the root with its mode and checksum: what "changes nothing" compares.
snapshot() {
  (cd "$root" && find . -type f -exec sha256sum {} + | sort -k 2 &&
    find . -printf '%M %p\n' | sort -k 2)
}

DESTDIR="$root" bash scripts/install.sh --binary "$larder" >"$tmp/first.log"
cat "$tmp/first.log"
snapshot >"$tmp/first.snap"
DESTDIR="$root" bash scripts/install.sh --binary "$larder" >"$tmp/second.log"
snapshot >"$tmp/second.snap"
diff -u "$tmp/first.snap" "$tmp/second.snap" || fail "a second install changed the tree"
grep -q '^kept /etc/larder/larder.toml' "$tmp/second.log" ||
  fail "the second install did not keep the existing config"
echo "install.sh twice: the second run changed nothing"

for f in usr/local/bin/larder etc/larder/larder.toml etc/systemd/system/larder.service; do
  [ -f "$root/$f" ] || fail "/$f was not installed"
done
unit="$root/etc/systemd/system/larder.service"
grep -qx 'ExecStart=/usr/local/bin/larder serve --config /etc/larder/larder.toml' "$unit" ||
  fail "ExecStart of the installed unit does not name /usr/local/bin/larder"
# systemd-analyze checks that ExecStart's binary exists on this machine; it lives in the
# temporary root here.
verify_unit "$unit" "$root/usr/local/bin/larder" "$tmp"
echo "systemd-analyze verify (the installed unit): ok"
"$root/usr/local/bin/larder" check-config --config "$root/etc/larder/larder.toml" >/dev/null
echo "larder check-config (the installed config): ok"

# Another prefix: the binary and ExecStart move with it.
DESTDIR="$root" bash scripts/install.sh --binary "$larder" --prefix /opt/larder >/dev/null
[ -x "$root/opt/larder/bin/larder" ] || fail "--prefix /opt/larder installed no binary"
grep -q '^ExecStart=/opt/larder/bin/larder serve ' "$unit" ||
  fail "with --prefix /opt/larder, ExecStart does not name /opt/larder/bin/larder"
DESTDIR="$root" bash scripts/install.sh --uninstall --prefix /opt/larder >/dev/null
[ ! -e "$root/opt/larder/bin/larder" ] || fail "--uninstall --prefix left the binary"
DESTDIR="$root" bash scripts/install.sh --binary "$larder" >/dev/null

# Uninstall keeps data and an edited config.
mkdir -p "$root/var/lib/larder"
echo data >"$root/var/lib/larder/larder.db"
echo '# edited' >>"$root/etc/larder/larder.toml"
DESTDIR="$root" bash scripts/install.sh --uninstall | tee "$tmp/uninstall.log"
[ ! -e "$root/usr/local/bin/larder" ] || fail "--uninstall left the binary"
[ ! -e "$unit" ] || fail "--uninstall left the unit"
[ -f "$root/etc/larder/larder.toml" ] || fail "--uninstall removed an edited config"
[ -f "$root/var/lib/larder/larder.db" ] || fail "--uninstall removed the data"
# Unchanged, the config goes with the rest.
DESTDIR="$root" bash scripts/install.sh --binary "$larder" >/dev/null
cp systemd/larder.toml "$root/etc/larder/larder.toml"
DESTDIR="$root" bash scripts/install.sh --uninstall >/dev/null
[ ! -e "$root/etc/larder" ] || fail "--uninstall left the unchanged example config"
[ -f "$root/var/lib/larder/larder.db" ] || fail "--uninstall removed the data"
DESTDIR="$root" bash scripts/install.sh --uninstall --purge >/dev/null
[ ! -e "$root/var/lib/larder" ] || fail "--uninstall --purge left the data"
left="$(cd "$root" && find . -type f)"
[ -z "$left" ] || fail "files left after --purge: $left"
echo "install.sh --uninstall: keeps the data and an edited config; --purge removes them"
