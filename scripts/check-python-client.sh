#!/usr/bin/env bash
# check-python-client.sh: installs clients/python (larder-client) the way a user would, with
# `pip install ./clients/python`, which generates its gRPC stubs from proto/, then runs its
# pytest suite against a built larder (the tests start and stop their own daemons).
# Usage: scripts/check-python-client.sh [PATH_TO_LARDER]   (default: the debug build)
# The venv lives under $HOME/.cache/larder-ci-tools/pyvenv; the package is reinstalled on
# every run so the stubs always match the protos.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
larder="$(larder_binary check-python-client "${1:-}")"

venv="$HOME/.cache/larder-ci-tools/pyvenv"
python_venv "$venv"
"$venv/bin/python" --version
"$venv/bin/pip" install --quiet --disable-pip-version-check grpcio-tools pytest
# A stale build/ from an earlier run must not stand in for freshly generated stubs.
rm -rf clients/python/build clients/python/*.egg-info
# First its dependencies (grpcio, protobuf), then the package itself rebuilt even when the
# same version is already installed.
"$venv/bin/pip" install --quiet --disable-pip-version-check ./clients/python
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
rm -rf clients/python/build clients/python/*.egg-info

# The suite imports the installed package (pytest's entry point keeps the source tree off
# sys.path), so a package whose stubs were not generated fails here.
"$venv/bin/python" -c 'import larder_client._gen.larder.v1.cache_pb2_grpc'
cd clients/python
LARDER_BIN="$larder" "$venv/bin/pytest" -q -p no:cacheprovider tests
echo "check-python-client: ok"
