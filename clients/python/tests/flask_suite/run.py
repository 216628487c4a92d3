"""Runs Flask-Caching's and cachelib's own backend tests against larder_client.flask.

    python run.py --larder-bin PATH [-v] [SUITE ...]      SUITE: flask-caching, cachelib

1. The source distribution of each suite's package (Flask-Caching, cachelib), of the version
   pinned in ``requirements.txt`` beside this file, is downloaded with pip and extracted into
   ``~/.cache/larder-ci-tools/NAME-X.Y.Z`` (``--cache-dir``) unless it is there already.
   The installed package (the one this Python imports) must be the same version: its tests
   are written for it. ``pip install -r requirements.txt`` installs the pinned versions.
2. A larder daemon starts with a scratch data directory, on 127.0.0.1:0 and a Unix socket;
   its addresses are in LARDER_FLASK_TARGET (host:port) and LARDER_FLASK_UNIX_TARGET (unix:).
3. Each suite's glue module beside this file (a test class that combines the sdist's
   backend-generic test classes, as the sdist does for its Redis backend, on
   ``larder_client.flask.LarderCache``) is copied into the sdist's ``tests/`` directory as a
   ``test_larder_*.py`` for the run and removed after it; the packages' own files are never
   edited. pytest runs that module from the sdist's root, so the sdist's ``conftest.py`` and
   its pytest configuration (warnings are errors) apply; pytest-asyncio is left out
   (``-p no:asyncio``): these suites have no async test, and it would warn that their
   configuration does not set its loop scope.
4. The daemon is stopped with SIGTERM and must exit with status 0.

The exit status is 0 when every suite's pytest passed, else the first failing one's (1 when
the daemon failed, 2 when a step before the tests failed). ``larder_client`` is imported from
the installed package when there is one, else from this source tree (whose gRPC stubs are
generated first if missing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for larder_daemon
from larder_daemon import Daemon
from peer_suites import (
    RunError,
    common_arguments,
    download,
    installed_version,
    python_path,
    reported,
    stop_and_judge,
)

REQUIREMENTS = HERE / "requirements.txt"


@dataclass(frozen=True)
class Suite:
    """One package's test suite: its distribution, a file its sdist's tests/ must have, and
    the glue module copied in as ``glue_as``."""

    name: str
    dist: str
    marker: str
    glue: str
    glue_as: str


SUITES = {
    s.name: s
    for s in (
        Suite(
            "flask-caching",
            "Flask-Caching",
            "test_backend_cache.py",
            "larder_backend_glue.py",
            "test_larder_backend.py",
        ),
        Suite("cachelib", "cachelib", "common.py", "cachelib_glue.py", "test_larder_cachelib.py"),
    )
}


def pinned() -> dict[str, str]:
    """Distribution name (lower case) -> pinned version, from requirements.txt."""
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def check_installed(suite: Suite, version: str) -> None:
    have = installed_version(suite.dist, f"-r {REQUIREMENTS}")
    if have != version:
        raise RunError(
            f"the installed {suite.dist} is {have}, the pinned sdist's tests are {version}'s: "
            f"pip install -r {REQUIREMENTS}"
        )


def run_suite(suite: Suite, root: Path, env: dict[str, str], verbose: bool) -> int:
    glue = root / "tests" / suite.glue_as
    shutil.copyfile(HERE / suite.glue, glue)
    try:
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",
            "-rs",
            "-v" if verbose else "-q",
            f"tests/{suite.glue_as}",
        ]
        print(f"run.py: (cd {root} && {' '.join(command[1:])})", flush=True)
        return subprocess.run(command, cwd=root, env=env, check=False).returncode
    finally:
        glue.unlink(missing_ok=True)
        shutil.rmtree(root / "tests" / "__pycache__", ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    pins = pinned()
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        raise RunError(f"no suite {unknown}; the suites are {list(SUITES)}")
    suites = [SUITES[name] for name in (args.suites or list(SUITES))]
    roots = {}
    for suite in suites:
        version = pins.get(suite.dist.lower())
        if version is None:
            raise RunError(f"{REQUIREMENTS} pins no {suite.dist} version")
        check_installed(suite, version)
        roots[suite.name] = download(suite.dist, version, Path(args.cache_dir), suite.marker)
        print(f"run.py: {suite.dist} {version} from {roots[suite.name]}", flush=True)
    env = dict(os.environ, PYTHONPATH=python_path())
    daemon = Daemon(args.larder_bin, prefix="larder-fc-")
    statuses: list[int] = []
    try:
        env["LARDER_FLASK_TARGET"] = daemon.addr
        env["LARDER_FLASK_UNIX_TARGET"] = daemon.unix_target
        print(f"run.py: larder on {daemon.addr} and {daemon.unix_target}", flush=True)
        for suite in suites:
            status = run_suite(suite, roots[suite.name], env, args.verbose)
            print(f"run.py: {suite.dist}'s suite: pytest exited {status}", flush=True)
            statuses.append(status)
    except BaseException:
        stop_and_judge(daemon, 1, "the run")
        raise
    return stop_and_judge(daemon, next((s for s in statuses if s != 0), 0), "the suites")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="pytest -v (default -q)")
    parser.add_argument(
        "suites", nargs="*", help=f"suites to run: {', '.join(SUITES)} (default: all)"
    )
    args = parser.parse_args()
    return reported(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
