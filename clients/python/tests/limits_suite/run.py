"""Runs the ``limits`` package's own storage and strategy tests against Larder.

    python run.py --larder-bin PATH [--limits-src DIR_OR_SDIST] [PYTEST_ARG ...]

1. The sdist of the pinned ``limits`` (``LIMITS_VERSION`` beside this file) is downloaded with
   pip and extracted into ``~/.cache/larder-ci-tools/limits-X.Y.Z``, unless ``--limits-src``
   names an extracted directory or an sdist. The installed ``limits`` (the one this Python
   imports) must be the same version: the tests are written for it.
2. A larder daemon starts with a scratch data directory, on 127.0.0.1:0 and a Unix socket.
3. pytest runs in the sdist's root with the plugin ``larder_limits_glue`` (beside this file),
   which adds ``larder://`` and ``larder+unix://`` to the suite's storage parametrisation; the
   suite's files are never edited. The files run are its storage and strategy tests, sync and
   asyncio, and its concurrency tests (``FILES``); the cases of storages that need a service
   this run does not start (Redis, Valkey, Memcached, MongoDB) are deselected by their marks
   (``-m``), which leaves the Larder cases, the in-memory ones beside them, and the tests that
   need no storage service at all.
4. The daemon is stopped with SIGTERM and must exit with status 0.

What the suite needs is in ``suite-requirements.txt`` beside this file, pinned as the sdist's
lock file pins it: install it into a virtual environment of its own (the suite does not start
under the newest pytest and pytest-asyncio) and run this script with that environment's Python.

The exit status is pytest's, or 1 when the daemon failed. ``larder_client`` is imported from
the installed package when there is one, else from this source tree (whose gRPC stubs are
generated first if missing). Extra arguments go to pytest (e.g. ``-k larder``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for larder_daemon
from larder_daemon import Daemon
from peer_suites import (
    RunError,
    checked,
    common_arguments,
    download,
    extract,
    installed_version,
    python_path,
    reported,
    sdist_version,
    stop_and_judge,
)

PINNED = (HERE / "LIMITS_VERSION").read_text().split()[0]
FILES = [
    "tests/test_storage.py",
    "tests/test_strategy.py",
    "tests/aio/test_storage.py",
    "tests/aio/test_strategy.py",
    "tests/integration/test_concurrency.py",
]
# Storages whose services (docker containers in the suite's own CI) this run does not start.
NOT_RUN = "redis or redis_sentinel or redis_cluster or memcached or mongodb or valkey"
MARKS = f"not ({NOT_RUN} or valkey_cluster)"


def limits_sources(src: str | None, cache: Path, scratch: Path) -> Path:
    if src is None:
        return download("limits", PINNED, cache, "test_storage.py")
    root = extract(Path(src), scratch) if Path(src).is_file() else Path(src)
    return checked(root, "limits", "test_storage.py")


def run(args: argparse.Namespace, pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="larder-limits-src-") as scratch:
        root = limits_sources(args.limits_src, Path(args.cache_dir), Path(scratch))
        version = sdist_version(root)
        have = installed_version("limits", f"limits=={PINNED}")
        if have != version:
            raise RunError(
                f"the installed limits is {have}, the sdist's tests are limits {version}'s: "
                f"install limits=={version} (or pass the sdist of {have})"
            )
        print(f"run.py: limits {version} from {root}", flush=True)
        # The glue plugin beside this file comes first.
        env = dict(os.environ, PYTHONPATH=python_path((str(HERE),)))
        env.pop("CI", None)  # the suite's fixtures sleep 10 s per service when CI=True
        daemon = Daemon(args.larder_bin, prefix="larder-limits-")
        try:
            env["LARDER_LIMITS_TARGET"] = daemon.addr
            env["LARDER_LIMITS_SOCKET"] = str(daemon.socket)
            print(f"run.py: larder on {daemon.addr} and {daemon.unix_target}", flush=True)
            command = [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "larder_limits_glue",
                "-p",
                "no:cacheprovider",
                "-m",
                MARKS,
                *FILES,
                *pytest_args,
            ]
            print(f"run.py: (cd {root} && {' '.join(command[1:])})", flush=True)
            status = subprocess.run(command, cwd=root, env=env, check=False).returncode
        except BaseException:
            stop_and_judge(daemon, 1, "the run")
            raise
        return stop_and_judge(daemon, status, "pytest")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser)
    parser.add_argument(
        "--limits-src",
        help=f"an extracted limits sdist or a .tar.gz (default: {PINNED}'s, downloaded)",
    )
    args, pytest_args = parser.parse_known_args()
    return reported(lambda: run(args, pytest_args))


if __name__ == "__main__":
    sys.exit(main())
