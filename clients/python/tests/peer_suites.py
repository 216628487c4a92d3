"""What the runners of other projects' own test suites share (tests/*_suite/run.py).

Each runner takes a project's tests from its source distribution on PyPI, at a pinned
version, and runs them unmodified against a daemon. This module finds the daemon binary,
downloads and extracts an sdist into a cache directory, checks that the installed package is
the version the sdist's tests were written for, and makes the PYTHONPATH under which the
suite imports ``larder_client``.
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
from collections.abc import Callable
from pathlib import Path

from larder_daemon import Daemon, DaemonError, larder_bin

SOURCE_TREE = Path(__file__).resolve().parents[1]  # clients/python


class RunError(Exception):
    """A step before the tests failed; the message says which and why."""


def default_larder_bin() -> str:
    """$LARDER_BIN, else the debug build, else a ``larder`` on PATH."""
    binary = larder_bin()
    if os.environ.get("LARDER_BIN") or binary.exists():
        return str(binary)
    return shutil.which("larder") or str(binary)


def sdist_version(root: Path) -> str:
    """The version in an extracted sdist's PKG-INFO."""
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


def download(dist: str, version: str, cache: Path, marker: str) -> Path:
    """The extracted sdist of ``dist`` ``version`` in ``cache`` (downloaded with pip when
    absent), checked to hold ``tests/<marker>`` and to be that version."""
    target = cache / f"{dist.lower().replace('-', '_')}-{version}"
    if not (target / "tests" / marker).exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            print(f"run.py: downloading the {dist} {version} sdist with pip", flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet",
                 "--disable-pip-version-check", "--no-binary", ":all:", "--no-deps",
                 "--dest", scratch, f"{dist}=={version}"],
                check=True,
            )  # fmt: skip
            archives = list(Path(scratch).glob("*.tar.gz"))
            if len(archives) != 1:
                raise RunError(f"pip download left {archives}, not one {dist} sdist")
            top = extract(archives[0], Path(scratch) / "x")
            shutil.rmtree(target, ignore_errors=True)
            top.rename(target)
    return checked(target, dist, marker, version)


def checked(root: Path, dist: str, marker: str, version: str | None = None) -> Path:
    """``root`` resolved, if it is ``dist``'s extracted sdist (of ``version``, if given)."""
    if not (root / "tests" / marker).exists():
        raise RunError(f"{root} has no tests/{marker}: not {dist}'s source distribution")
    if version is not None and sdist_version(root) != version:
        raise RunError(f"{root} is {dist} {sdist_version(root)}, not {version}")
    return root.resolve()


def installed_version(dist: str, install_hint: str) -> str:
    """The version of ``dist`` installed for this Python; RunError naming ``install_hint``
    (what to pip install) when there is none."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError as err:
        raise RunError(
            f"{dist} is not installed for {sys.executable}: pip install {install_hint}"
        ) from err


def python_path(first: tuple[str, ...] = ()) -> str:
    """PYTHONPATH for a suite: ``first``, then the installed larder_client, else this source
    tree (its gRPC stubs generated first if missing), then the caller's PYTHONPATH."""
    paths = [*first]
    if importlib.util.find_spec("larder_client") is None:
        if not (SOURCE_TREE / "larder_client" / "_gen").exists():
            subprocess.run([sys.executable, str(SOURCE_TREE / "generate.py")], check=True)
        paths.append(str(SOURCE_TREE))
        print(f"run.py: larder_client from the source tree {SOURCE_TREE}", flush=True)
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(paths)


def reported(run: Callable[[], int]) -> int:
    """``run()``'s exit status; a failure before the tests (a download, the daemon, a
    subprocess) is printed in one line and is status 2."""
    try:
        return run()
    except (RunError, DaemonError, subprocess.CalledProcessError) as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 2


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every runner takes: the daemon binary and where sdists are kept."""
    parser.add_argument("--larder-bin", default=default_larder_bin(), help="the larder binary")
    parser.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "larder-ci-tools"),
        help="where the downloaded sdists are kept",
    )


def stop_and_judge(daemon: Daemon, status: int, what: str) -> int:
    """Stops ``daemon`` (SIGTERM) and removes its directory; the run's exit status:
    ``status`` (what ``what`` exited with), or 1 at least when the daemon did not exit 0."""
    exit_status = daemon.stop()
    log = daemon.log()
    daemon.cleanup()
    if exit_status != 0:
        print(f"run.py: larder exited with {exit_status} after SIGTERM:\n{log}", flush=True)
        return status or 1
    print(f"run.py: larder stopped with status 0; {what} exited {status}", flush=True)
    return status
