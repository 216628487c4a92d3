#!/usr/bin/env bash
# install.sh: installs a built larder as a systemd service, or removes it again.
#
#   scripts/install.sh [--binary PATH] [--prefix DIR]          install (or update)
#   scripts/install.sh --uninstall [--purge] [--prefix DIR]    remove
#
# What it installs (every path below is under $DESTDIR when that is set):
#   PREFIX/bin/larder                  the binary (--binary, default: the release build,
#                                      $CARGO_TARGET_DIR/release/larder or target/release/larder)
#   /etc/larder/larder.toml            the example config, systemd/larder.toml; an existing file
#                                      is never overwritten
#   /etc/systemd/system/larder.service systemd/larder.service, its ExecStart pointing at
#                                      PREFIX/bin/larder
#   the `larder` system user           with useradd, only when run as root without DESTDIR
#
# Running it again is safe: the binary and the unit are replaced, the config and the user are
# left as they are. --uninstall removes the binary and the unit, and the config only while it
# is still the unchanged example; it keeps /var/lib/larder (the data), an edited config and
# the user. --purge also removes /etc/larder, /var/lib/larder and the user.
#
# DESTDIR (for packaging and tests) installs into a staging root: no user is created or
# removed, no file is given to the larder group, and systemctl is never run.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/usr/local
binary=""
action=install
purge=0

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix)
      [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
      prefix="$2"
      shift 2
      ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --binary)
      [ $# -ge 2 ] || { echo "install.sh: --binary needs a path" >&2; exit 2; }
      binary="$2"
      shift 2
      ;;
    --binary=*) binary="${1#--binary=}"; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *)
      echo "install.sh: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
done
case "$prefix" in
  /*) ;;
  *) echo "install.sh: --prefix must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
if [ "$purge" = 1 ] && [ "$action" != uninstall ]; then
  echo "install.sh: --purge goes with --uninstall" >&2
  exit 2
fi

destdir="${DESTDIR:-}"
destdir="${destdir%/}"
bin_path="$prefix/bin/larder"            # as the installed system sees it
unit_path=/etc/systemd/system/larder.service
conf_dir=/etc/larder
conf_path="$conf_dir/larder.toml"
data_dir=/var/lib/larder

# System changes (the user, file ownership, systemctl) only for root on the real root.
system=0
if [ -z "$destdir" ] && [ "$(id -u)" = 0 ]; then
  system=1
fi
why_not_system() {
  if [ -n "$destdir" ]; then
    echo "installing under DESTDIR=$destdir"
  else
    echo "not running as root"
  fi
}
have_systemd() {
  [ "$system" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null
}

install_larder() {
  if [ -z "$binary" ]; then
    binary="${CARGO_TARGET_DIR:-$repo/target}/release/larder"
  fi
  if [ ! -x "$binary" ]; then
    echo "install.sh: no larder binary at $binary: build it (cargo build --release) or pass --binary PATH" >&2
    exit 1
  fi
  "$binary" --version >/dev/null

  install -d -m 0755 "$destdir$prefix/bin"
  install -m 0755 "$binary" "$destdir$bin_path"
  echo "installed $bin_path ($("$destdir$bin_path" --version))"

  if [ "$system" = 1 ]; then
    if getent passwd larder >/dev/null; then
      echo "user larder: exists"
    else
      useradd --system --home-dir "$data_dir" --no-create-home --shell /usr/sbin/nologin larder
      echo "user larder: created"
    fi
  else
    echo "user larder: skipped, $(why_not_system); as root: useradd --system --home-dir $data_dir --shell /usr/sbin/nologin larder"
  fi

  # /etc/larder: readable by the larder group (the daemon, and the app's user if it joins),
  # so that secrets put there later (tokens, a TLS key) can be the larder user's alone.
  install -d -m 0750 "$destdir$conf_dir"
  if [ -e "$destdir$conf_path" ]; then
    echo "kept $conf_path (never overwritten; the example is systemd/larder.toml)"
  else
    install -m 0640 "$repo/systemd/larder.toml" "$destdir$conf_path"
    echo "installed $conf_path (the example config)"
  fi
  if [ "$system" = 1 ]; then
    chgrp larder "$conf_dir" "$conf_path"
  fi

  install -d -m 0755 "$destdir$(dirname "$unit_path")"
  sed "s#^ExecStart=/usr/local/bin/larder #ExecStart=$bin_path #" "$repo/systemd/larder.service" \
    >"$destdir$unit_path.tmp"
  chmod 0644 "$destdir$unit_path.tmp"
  mv "$destdir$unit_path.tmp" "$destdir$unit_path"
  echo "installed $unit_path (ExecStart=$bin_path serve --config $conf_path)"

  if [ "$system" = 1 ]; then
    "$bin_path" check-config --config "$conf_path" >/dev/null
    echo "larder check-config --config $conf_path: ok"
  fi

  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo "
  echo
  echo "Next:"
  echo "  ${sudo}systemctl daemon-reload && ${sudo}systemctl enable --now larder"
  echo "  systemctl status larder    # healthy: \"serving on 127.0.0.1:7379 and unix:/run/larder/larder.sock\""
}

uninstall_larder() {
  if have_systemd && systemctl cat larder.service >/dev/null 2>&1; then
    systemctl disable --now larder.service || true
  fi

  rm -f "$destdir$unit_path"
  echo "removed $unit_path"
  rm -f "$destdir$bin_path"
  echo "removed $bin_path"

  if [ "$purge" = 1 ]; then
    rm -rf "$destdir$conf_dir"
    echo "removed $conf_dir"
    rm -rf "$destdir$data_dir"
    echo "removed $data_dir (the data)"
    if [ "$system" = 1 ]; then
      if getent passwd larder >/dev/null; then
        userdel larder
        echo "user larder: removed"
      fi
    else
      echo "user larder: left alone, $(why_not_system)"
    fi
  else
    if [ -f "$destdir$conf_path" ] && cmp -s "$destdir$conf_path" "$repo/systemd/larder.toml"; then
      rm -f "$destdir$conf_path"
      echo "removed $conf_path (the unchanged example)"
    elif [ -e "$destdir$conf_path" ]; then
      echo "kept $conf_path (edited; --purge removes it)"
    fi
    rmdir "$destdir$conf_dir" 2>/dev/null || true
    if [ -d "$destdir$data_dir" ]; then
      echo "kept $data_dir (the data) and the larder user; --purge removes them"
    fi
  fi

  if have_systemd; then
    systemctl daemon-reload
  fi
}

if [ "$action" = install ]; then
  install_larder
else
  uninstall_larder
fi
