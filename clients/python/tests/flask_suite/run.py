"""Runs Flask-Caching's own backend tests against Larder's Flask-Caching backend.

    python run.py --larder-bin PATH [--src DIR_OR_SDIST] [-- PYTEST_ARGS ...]

1. Flask-Caching's source distribution of the version pinned in ``FLASK_CACHING_VERSION``
   beside this file is downloaded with pip and extracted into
   ``~/.cache/larder-ci-tools/flask_caching-X.Y.Z`` unless ``--src`` names an extracted
   directory or an sdist. The installed Flask-Caching (the one this Python imports) must be
   the same version: its tests are written for it.
2. A larder daemon starts with a scratch data directory, on 127.0.0.1:0 and a Unix socket;
   its addresses are in LARDER_FLASK_TARGET (host:port) and LARDER_FLASK_UNIX_TARGET (unix:).
3. ``larder_backend_glue.py`` beside this file (a test class that runs the sdist's
   ``GenericCacheTests`` on ``larder_client.flask.LarderCache``) is copied into the sdist's
   ``tests/`` as ``test_larder_backend.py`` for the run and removed after it; Flask-Caching's
   own files are never edited. pytest runs that module from the sdist's root, so the sdist's
   ``conftest.py`` and its pytest configuration (warnings are errors) apply; pytest-asyncio
   is left out (``-p no:asyncio``), since that file has no async test.
4. The daemon is stopped with SIGTERM and must exit with status 0.

The exit status is pytest's, or 1 when the daemon failed (2 when a step before the tests
failed). ``larder_client`` is imported from the installed package when there is one, else
from this source tree (whose gRPC stubs are generated first if missing).
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
PINNED = (HERE / "FLASK_CACHING_VERSION").read_text().strip()
GLUE = HERE / "larder_backend_glue.py"
GLUE_AS = "test_larder_backend.py"


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
    """The version in the sdist's PKG-INFO."""
    pkg_info = root / "PKG-INFO"
    if not pkg_info.exists():
        raise RunError(f"{root} has no PKG-INFO: not an extracted source distribution")
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
    """The extracted Flask-Caching sdist of ``version`` in ``cache``, downloaded if absent."""
    target = cache / f"flask_caching-{version}"
    if (target / "tests" / "test_backend_cache.py").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        print(f"run.py: downloading the Flask-Caching {version} sdist with pip", flush=True)
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
                f"Flask-Caching=={version}",
            ],
            check=True,
        )
        archives = list(Path(scratch).glob("[Ff]lask[_-][Cc]aching-*.tar.gz"))
        if len(archives) != 1:
            raise RunError(f"pip download left {archives}, not one Flask-Caching sdist")
        top = extract(archives[0], Path(scratch) / "x")
        shutil.rmtree(target, ignore_errors=True)
        top.rename(target)
    return target


def sources(src: str | None, cache: Path, scratch: Path) -> Path:
    if src is None:
        root = download(PINNED, cache)
    elif Path(src).is_file():
        root = extract(Path(src), scratch)
    else:
        root = Path(src)
    if not (root / "tests" / "test_backend_cache.py").exists():
        raise RunError(
            f"{root} has no tests/test_backend_cache.py: not Flask-Caching's source distribution"
        )
    return root.resolve()


def installed_version() -> str:
    try:
        return importlib.metadata.version("Flask-Caching")
    except importlib.metadata.PackageNotFoundError as err:
        raise RunError(
            f"Flask-Caching is not installed for {sys.executable}: "
            f"pip install Flask-Caching=={PINNED} pytest-xprocess"
        ) from err


def python_path() -> str:
    """PYTHONPATH for pytest: the installed larder_client, else this source tree."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if importlib.util.find_spec("larder_client") is None:
        if not (SOURCE_TREE / "larder_client" / "_gen").exists():
            subprocess.run([sys.executable, str(SOURCE_TREE / "generate.py")], check=True)
        paths.insert(0, str(SOURCE_TREE))
        print(f"run.py: larder_client from the source tree {SOURCE_TREE}", flush=True)
    return os.pathsep.join(paths)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="larder-fc-src-") as scratch:
        root = sources(args.src, Path(args.cache_dir), Path(scratch))
        version = sdist_version(root)
        have = installed_version()
        if have != version:
            raise RunError(
                f"the installed Flask-Caching is {have}, the sdist's tests are {version}'s: "
                f"install Flask-Caching=={version} (or pass the sdist of {have})"
            )
        print(f"run.py: Flask-Caching {version} from {root}", flush=True)
        env = dict(os.environ, PYTHONPATH=python_path())
        glue = root / "tests" / GLUE_AS
        daemon = Daemon(args.larder_bin, prefix="larder-fc-")
        try:
            env["LARDER_FLASK_TARGET"] = daemon.addr
            env["LARDER_FLASK_UNIX_TARGET"] = daemon.unix_target
            print(f"run.py: larder on {daemon.addr} and {daemon.unix_target}", flush=True)
            shutil.copyfile(GLUE, glue)
            command = [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                # test_backend_cache.py has no async test; pytest-asyncio (installed for
                # larder_client's own tests) would warn that the sdist's configuration does
                # not set its loop scope, and that configuration makes warnings errors.
                "-p",
                "no:asyncio",
                "-rs",
                "-v" if args.verbose else "-q",
                f"tests/{GLUE_AS}",
                *args.pytest_args,
            ]
            print(f"run.py: (cd {root} && {' '.join(command[1:])})", flush=True)
            status = subprocess.run(command, cwd=root, env=env, check=False).returncode
        finally:
            glue.unlink(missing_ok=True)
            shutil.rmtree(root / "tests" / "__pycache__", ignore_errors=True)
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
        "--src",
        help=f"an extracted Flask-Caching sdist or a .tar.gz (default: {PINNED}'s, downloaded)",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "larder-ci-tools"),
        help="where the downloaded sdist is kept",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="pytest -v (default -q)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    try:
        return run(parser.parse_args())
    except (RunError, DaemonError, subprocess.CalledProcessError) as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
