#!/usr/bin/env bash
# server-wheel-venv.sh: installs a larder-server wheel into a fresh venv, the way a user without
# a Rust toolchain would (pip and the wheel file only, no index), and checks that the venv's
# bin/ holds a `larder` that runs and is the one its PATH finds.
# Usage: scripts/server-wheel-venv.sh WHEEL VENV_DIR
#   VENV_DIR is deleted first (it must be a venv, or not exist). The last line printed is the
#   absolute path of the installed binary, e.g. for the Python suites:
#     larder="$(scripts/server-wheel-venv.sh "$wheel" /tmp/larder-wheel-venv | tail -n 1)"
#     scripts/check-python-client.sh "$larder"
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 WHEEL VENV_DIR" >&2
  exit 2
fi
wheel="$1" venv="$2"
if [ ! -f "$wheel" ]; then
  echo "server-wheel-venv: no wheel at $wheel" >&2
  exit 2
fi
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
  echo "server-wheel-venv: $venv exists and is not a venv; not deleting it" >&2
  exit 2
fi
wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"

# shellcheck source=scripts/ci-lib.sh
. "$(dirname "$0")/ci-lib.sh"
rm -rf "$venv"
python_venv "$venv"
venv="$(cd "$venv" && pwd)"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"

larder="$(PATH="$venv/bin:$PATH" command -v larder || true)"
if [ "$larder" != "$venv/bin/larder" ]; then
  echo "server-wheel-venv: PATH with $venv/bin finds larder at '${larder}', not in the venv" >&2
  exit 1
fi
"$larder" --version
echo "$larder"
