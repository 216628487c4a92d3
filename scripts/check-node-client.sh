#!/usr/bin/env bash
# check-node-client.sh: installs clients/node's locked dependencies (@grpc/grpc-js,
# @grpc/proto-loader) with `npm ci`, then runs its tests with node's built-in test runner
# against a built larder (the tests start and stop their own daemons, and load the .proto
# files from proto/ at run time).
# Usage: scripts/check-node-client.sh [PATH_TO_LARDER]   (default: the debug build)
# Installs Debian's nodejs and npm when node is missing. A failing test fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
larder="$(larder_binary check-node-client "${1:-}")"
ensure_openssl

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
echo "node $(node --version), npm $(npm --version)"

cd clients/node
npm ci --no-audit --no-fund --loglevel=error
# The runner's closing summary (# tests, # pass, # fail) ends the output.
LARDER_BIN="$larder" npm test --silent
echo "check-node-client: ok"
