#!/usr/bin/env bash
# check-python-client.sh: the Python side, as a user installs it. Builds the larder-server wheel,
# installs it and `./clients/python` with its extras into a fresh venv (the client's native
# core, larder_client._native, must build: LARDER_CLIENT_NATIVE=1), then runs ruff (check and
# format) over clients/python and examples and, once per core of the client
# (LARDER_CLIENT_CORE=grpc, then =native; every runner and server below inherits it), against
# the `larder` that the wheel put on that venv's PATH:
#   - the client's pytest suite (both clients, TLS, the Django, Flask, Starlette adapters, a
#     client made before gunicorn's and os.fork()'s fork);
#   - Django's own cache and session test suites, from the pinned Django sdist, with
#     Larder's backend and engine plugged in (clients/python/tests/django_suite/run.py);
#   - Flask-Caching's and cachelib's own backend tests (clients/python/tests/flask_suite/run.py);
#   - Huey's own storage, consumer and API tests on larder_client.huey.LarderHuey, from the
#     pinned Huey sdist (clients/python/tests/huey_suite/run.py; about 12 s a core, and
#     tests/test_huey*.py about 16 s a core in the pytest suite);
#   - on the native core only (the default a user gets), the example apps' tests
#     (examples/*/tests), each app under its production server (examples/worker: with two
#     job-queue worker processes, one killed mid-job), and the limits package's own
#     storage and strategy tests (tests/limits_suite/run.py);
#   - then, on the native core only, for each other pinned Django (the LTS releases in
#     clients/python/tests/django_suite/DJANGO_VERSION), the adapters' pytest tests and
#     that version's own suites again.
# Usage: scripts/check-python-client.sh [PATH_TO_LARDER]
#   With a path, that binary is used instead of the wheel's (quicker while developing).
#   The wheel is built with LARDER_WHEEL_PROFILE (default here: dev, which reuses the debug
#   build; see scripts/build-server-wheel.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ci-lib.sh
. scripts/ci-lib.sh
ensure_openssl
# The native core's Rust build (by setuptools-rust, in pip's build) shares the daemon's
# target directory, so a second run reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/larder-target}"

tools="$HOME/.cache/larder-ci-tools"
venv="$tools/python-wheel-venv"
# A stale build/ from an earlier run must not stand in for freshly generated stubs.
rm -rf clients/python/build clients/python/*.egg-info

if [ -n "${1:-}" ]; then
  larder="$(larder_binary check-python-client "$1")"
  rm -rf "$venv"
  python_venv "$venv"
else
  wheel="$(LARDER_WHEEL_PROFILE="${LARDER_WHEEL_PROFILE:-dev}" bash scripts/build-server-wheel.sh |
    tail -n 1)"
  echo "wheel: $(basename "$wheel")"
  larder="$(bash scripts/server-wheel-venv.sh "$wheel" "$venv" | tail -n 1)"
fi
"$venv/bin/python" --version
echo "larder: $larder"

# The client is built once (its stubs generated from proto/, its native core compiled), as a
# wheel both venvs install. LARDER_CLIENT_NATIVE=1: a native core that does not build fails
# the build instead of leaving a wheel without it.
client_dir="$(mktemp -d)"
trap 'rm -rf "$client_dir"' EXIT
echo "== building the larder-client wheel, with its native core"
LARDER_CLIENT_NATIVE=1 "$venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps \
  -w "$client_dir" ./clients/python
rm -rf clients/python/build clients/python/*.egg-info
client_wheel="$(echo "$client_dir"/larder_client-*.whl)"

# The client with every extra, the adapters' test pins, and the first pinned Django.
mapfile -t djangos <clients/python/tests/django_suite/DJANGO_VERSION
django="${djangos[0]}"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "$client_wheel[test,django,zstd,flask,starlette,limits,huey]" "Django==$django" ruff \
  -r clients/python/tests/requirements.txt -r clients/python/tests/huey_suite/requirements.txt

echo "== ruff check and ruff format --check (clients/python, examples)"
(cd clients/python && "$venv/bin/ruff" check . && "$venv/bin/ruff" format --check .)
(cd examples && "$venv/bin/ruff" check . && "$venv/bin/ruff" format --check .)

# The suite imports the installed package (pytest's entry point keeps the source tree off
# sys.path), so a package whose stubs were not generated fails here.
"$venv/bin/python" -c 'import larder_client._gen.larder.v1.cache_pb2_grpc'
# The wheel carries the native core, and it loads.
"$venv/bin/python" -c 'import larder_client._native'

# The limits suite runs in a venv of its own: it needs the pytest and pytest-asyncio its lock
# file names.
suite_venv="$tools/python-limits-suite-venv"
python_venv "$suite_venv"
"$suite_venv/bin/pip" install --quiet --disable-pip-version-check "$client_wheel" \
  -r clients/python/tests/limits_suite/suite-requirements.txt
# This venv is kept between runs: the client of this checkout replaces the one of the last run
# even when both carry the same version number.
"$suite_venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$client_wheel"
"$suite_venv/bin/python" -c 'import larder_client._native'

# Everything below runs once per core. A Larder made without core= takes LARDER_CLIENT_CORE,
# and the suite runners and the examples' servers pass this environment on to their
# processes; with =native, a client the native core cannot carry fails instead of falling
# back to grpcio.
for core in grpc native; do
  export LARDER_CLIENT_CORE="$core"
  echo "======== the client's core: $core (LARDER_CLIENT_CORE=$core)"

  echo "== [$core] pytest (clients/python/tests)"
  (cd clients/python && LARDER_BIN="$larder" "$venv/bin/pytest" -q -p no:cacheprovider tests)

  echo "== [$core] Django $django's own cache and session tests against Larder"
  "$venv/bin/python" clients/python/tests/django_suite/run.py --larder-bin "$larder" \
    --django-version "$django"

  echo "== [$core] Flask-Caching's and cachelib's own backend tests against Larder"
  "$venv/bin/python" clients/python/tests/flask_suite/run.py --larder-bin "$larder"

  echo "== [$core] Huey's own storage, consumer and API tests against Larder"
  "$venv/bin/python" clients/python/tests/huey_suite/run.py --larder-bin "$larder"
done

# The example apps on the native core only (the default a user gets): their adapters have
# run on both cores above, in the pytest suite and the frameworks' own suites.
export LARDER_CLIENT_CORE=native
echo "== [native] examples/django under gunicorn with 4 workers, against the daemon"
(cd examples/django && LARDER_BIN="$larder" "$venv/bin/pytest" -q -p no:cacheprovider tests)

echo "== [native] examples/fastapi under gunicorn with 4 uvicorn workers, against the daemon"
(cd examples/fastapi && LARDER_BIN="$larder" "$venv/bin/pytest" -q -p no:cacheprovider tests)

echo "== [native] examples/flask under gunicorn with 4 workers, against the daemon"
(cd examples/flask && LARDER_BIN="$larder" "$venv/bin/pytest" -q -p no:cacheprovider tests)

echo "== [native] examples/worker: its app under gunicorn and two queue workers, one killed"
(cd examples/worker && LARDER_BIN="$larder" "$venv/bin/pytest" -q -p no:cacheprovider tests)

# The limits suite on the native core only (about 3 minutes a run here): the storage's code
# above the core is the same on both, and the client's pytest suite
# runs its limits tests (test_limits.py) on each core above. Run it on grpcio by hand with
# LARDER_CLIENT_CORE=grpc clients/python/tests/limits_suite/run.py --larder-bin PATH.
echo "== [native] the limits package's own storage and strategy tests against Larder"
LARDER_CLIENT_CORE=native "$suite_venv/bin/python" clients/python/tests/limits_suite/run.py \
  --larder-bin "$larder"

# The other pinned Djangos on the native core only: the adapters' Django code is the same on
# both cores, which the first Django has already run on each.
export LARDER_CLIENT_CORE=native
for django in "${djangos[@]:1}"; do
  echo "== [native] Django $django: the adapters' tests, and its own cache and session tests"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "Django==$django"
  (cd clients/python && LARDER_BIN="$larder" "$venv/bin/pytest" -q -p no:cacheprovider \
    tests/test_django_cache.py tests/test_django_sessions.py)
  "$venv/bin/python" clients/python/tests/django_suite/run.py --larder-bin "$larder" \
    --django-version "$django" --verbosity 1
done
echo "check-python-client: ok"
