#!/usr/bin/env bash
# build-server-wheel.sh: builds the larder-server wheel (packaging/larder-server: maturin with
# bindings = "bin", so the wheel holds the stripped `larder` binary and pip puts it on PATH).
# Usage: scripts/build-server-wheel.sh [OUT_DIR]   (default: $CARGO_TARGET_DIR/wheels)
#   LARDER_WHEEL_PROFILE=release (default) or dev: the Cargo profile. dev reuses the debug
#   build's artifacts in $CARGO_TARGET_DIR and only relinks the binary (seconds, where a cold
#   release build takes minutes); it is meant for CI, release is what users get.
# The wheel's platform tag is the lowest manylinux tag the binary meets, from maturin's own
# auditwheel check, which fails the build if the binary needs a library outside the manylinux
# set. Installs maturin into the venv $HOME/.cache/larder-ci-tools/pyvenv when it is missing.
# The last line printed is the wheel's absolute path.
set -euo pipefail

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"
profile="${LARDER_WHEEL_PROFILE:-release}"
# Absolute before the cd below, so a relative OUT_DIR is the caller's.
out="${1:-$CARGO_TARGET_DIR/wheels}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

cd "$(dirname "$0")/.."
# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh

venv="$HOME/.cache/larder-ci-tools/pyvenv"
python_venv "$venv"
if [ ! -x "$venv/bin/maturin" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin>=1.16,<2'
fi
"$venv/bin/maturin" --version

# A scratch directory of its own, so the one wheel in it is this build's.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
(cd packaging/larder-server &&
  "$venv/bin/maturin" build --locked --profile "$profile" --auditwheel check --out "$scratch")
wheels=("$scratch"/larder_server-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
  echo "build-server-wheel: expected one wheel from maturin, found: ${wheels[*]}" >&2
  exit 1
fi
wheel="$out/$(basename "${wheels[0]}")"
mv -f "${wheels[0]}" "$wheel"
echo "$wheel"
