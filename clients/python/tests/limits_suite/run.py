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
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for larder_daemon
from larder_daemon import Daemon, DaemonError

SOURCE_TREE = HERE.parents[1]  # clients/python
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


class RunError(Exception):
    """A step before the tests failed; the message says which and why."""


def default_larder_bin() -> str:
    explicit = os.environ.get("LARDER_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "larder-target"))
    built = Path(target) / "debug" / "larder"
    if built.exists():
        return str(built)
    return shutil.which("larder") or str(built)


def sdist_version(root: Path) -> str:
    pkg_info = root / "PKG-INFO"
    if not pkg_info.exists():
        raise RunError(f"{root} has no PKG-INFO: not an extracted limits source distribution")
    for line in pkg_info.read_text(errors="replace").splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise RunError(f"{pkg_info} names no Version")


def extract(archive: Path, into: Path) -> Path:
    """Extracts an sdist (.tar.gz) into ``into``; returns its top directory."""
    with tarfile.open(archive) as tar:
        tops = {name.split("/", 1)[0] for name in tar.getnames()}
        if len(tops) != 1:
            raise RunError(f"{archive}: expected one top directory, found {sorted(tops)}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python before 3.11.4: the archive comes from PyPI through pip
            tar.extractall(into)
    return into / tops.pop()


def download(version: str, cache: Path) -> Path:
    """The extracted sdist of limits ``version`` in ``cache``, downloaded with pip if absent."""
    target = cache / f"limits-{version}"
    if (target / "tests" / "test_storage.py").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        print(f"run.py: downloading the limits {version} sdist with pip", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--dest",
                scratch,
                f"limits=={version}",
            ],
            check=True,
        )
        archives = list(Path(scratch).glob("limits-*.tar.gz"))
        if len(archives) != 1:
            raise RunError(f"pip download left {archives}, not one limits sdist")
        top = extract(archives[0], Path(scratch) / "x")
        shutil.rmtree(target, ignore_errors=True)
        top.rename(target)
    return target


def limits_sources(src: str | None, cache: Path, scratch: Path) -> Path:
    if src is None:
        root = download(PINNED, cache)
    elif Path(src).is_file():
        root = extract(Path(src), scratch)
    else:
        root = Path(src)
    if not (root / "tests" / "test_storage.py").exists():
        raise RunError(f"{root} has no tests/test_storage.py: not the limits sdist")
    return root.resolve()


def installed_limits() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("limits")
    except PackageNotFoundError as err:
        raise RunError(
            f"limits is not installed for {sys.executable}: pip install limits=={PINNED}"
        ) from err


def python_path() -> str:
    """PYTHONPATH for pytest: the glue plugin, and the installed larder_client or this tree."""
    paths = [str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if importlib.util.find_spec("larder_client") is None:
        if not (SOURCE_TREE / "larder_client" / "_gen").exists():
            subprocess.run([sys.executable, str(SOURCE_TREE / "generate.py")], check=True)
        paths.insert(1, str(SOURCE_TREE))
        print(f"run.py: larder_client from the source tree {SOURCE_TREE}", flush=True)
    return os.pathsep.join(paths)


def run(args: argparse.Namespace, pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="larder-limits-src-") as scratch:
        root = limits_sources(args.limits_src, Path(args.cache_dir), Path(scratch))
        version = sdist_version(root)
        have = installed_limits()
        if have != version:
            raise RunError(
                f"the installed limits is {have}, the sdist's tests are limits {version}'s: "
                f"install limits=={version} (or pass the sdist of {have})"
            )
        print(f"run.py: limits {version} from {root}", flush=True)
        env = dict(os.environ, PYTHONPATH=python_path())
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
        finally:
            exit_status = daemon.stop()
            log = daemon.log()
            daemon.cleanup()
        if exit_status != 0:
            print(f"run.py: larder exited with {exit_status} after SIGTERM:\n{log}", flush=True)
            return status or 1
        print(f"run.py: larder stopped with status 0; pytest exited {status}", flush=True)
        return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--larder-bin", default=default_larder_bin(), help="the larder binary")
    parser.add_argument(
        "--limits-src",
        help=f"an extracted limits sdist or a .tar.gz (default: {PINNED}'s, downloaded)",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "larder-ci-tools"),
        help="where the downloaded sdist is kept",
    )
    args, pytest_args = parser.parse_known_args()
    try:
        return run(args, pytest_args)
    except (RunError, DaemonError, subprocess.CalledProcessError) as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
