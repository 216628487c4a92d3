"""Runs Django's own test suites against Larder: its cache tests and its session tests.

    python run.py --larder-bin PATH [--django-version X.Y.Z | --django-src DIR_OR_SDIST]
                  [GLUE_APP ...]

1. Django's source distribution of a pinned version (``DJANGO_VERSION`` beside this file, one
   a line: the LTS releases the adapters support; the first is the default, or
   ``--django-version``) is downloaded with pip and extracted into ``~/.cache/larder-ci-tools/django-X.Y.Z`` unless
   ``--django-src`` names an extracted directory or an sdist. The installed Django (the one
   this Python imports) must be the same version as the sdist: its tests are written for it.
2. A larder daemon starts with a scratch data directory, on 127.0.0.1:0 and a Unix socket.
3. Every ``larder_*`` directory beside this file (a glue app: a test module whose classes run
   Django's generic test mixins against Larder) is copied into the sdist's ``tests/``
   directory for the run and removed after it; Django's own files are never edited.
4. Django's ``tests/runtests.py`` runs with the glue apps and the Django test apps they import
   from as labels, and ``-k Larder``, which leaves only the glue apps' classes. The daemon's
   addresses are in LARDER_DJANGO_TARGET (host:port) and LARDER_DJANGO_UNIX_TARGET (unix:).
5. The daemon is stopped with SIGTERM and must exit with status 0.

The exit status is runtests.py's, or 1 when the daemon failed. A glue app names the Django
test apps it needs in ``DJANGO_TEST_APPS = [...]`` in its ``__init__.py`` (read without
importing it).

``larder_client`` is imported from the installed package when there is one, else from this
source tree (whose gRPC stubs are generated first if missing).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
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

PINNED = (HERE / "DJANGO_VERSION").read_text().split()


# --- Django's sources -----------------------------------------------------------------------


def django_sources(src: str | None, version: str, cache: Path, scratch: Path) -> Path:
    if src is None:
        return download("Django", version, cache, "runtests.py")
    root = extract(Path(src), scratch) if Path(src).is_file() else Path(src)
    return checked(root, "Django", "runtests.py")


# --- the run ---------------------------------------------------------------------------------


def glue_apps(names: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("larder_*") if (p / "__init__.py").exists())
    if names:
        wanted = set(names)
        missing = wanted - {p.name for p in found}
        if missing:
            raise RunError(f"no glue app {sorted(missing)} beside {__file__}")
        found = [p for p in found if p.name in wanted]
    if not found:
        raise RunError(f"no larder_* glue app beside {__file__}")
    return found


def test_apps(app: Path) -> list[str]:
    """The Django test apps ``app`` imports from: its DJANGO_TEST_APPS."""
    tree = ast.parse((app / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "DJANGO_TEST_APPS" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise RunError(f"{app.name}: name the Django test apps it needs in DJANGO_TEST_APPS")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="larder-dj-src-") as scratch:
        root = django_sources(
            args.django_src, args.django_version, Path(args.cache_dir), Path(scratch)
        )
        version = sdist_version(root)
        have = installed_version("Django", f"Django=={PINNED[0]}")
        if have != version:
            raise RunError(
                f"the installed Django is {have}, the sdist's tests are Django {version}'s: "
                f"install Django=={version} (or pass the sdist of {have})"
            )
        print(f"run.py: Django {version} from {root}", flush=True)
        apps = glue_apps(args.apps)
        labels: list[str] = []
        for app in apps:
            labels += [a for a in test_apps(app) if a not in labels] + [app.name]
        env = dict(os.environ, PYTHONPATH=python_path())
        tests = root / "tests"
        daemon = Daemon(args.larder_bin, prefix="larder-dj-")
        copied: list[Path] = []
        try:
            env["LARDER_DJANGO_TARGET"] = daemon.addr
            env["LARDER_DJANGO_UNIX_TARGET"] = daemon.unix_target
            print(f"run.py: larder on {daemon.addr} and {daemon.unix_target}", flush=True)
            for app in apps:
                dest = tests / app.name
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(app, dest, ignore=shutil.ignore_patterns("__pycache__"))
                copied.append(dest)
            command = [
                sys.executable,
                "runtests.py",
                "--settings=test_sqlite",
                "--parallel=1",
                f"--verbosity={args.verbosity}",
                "-k",
                "Larder",
                *labels,
            ]
            print(f"run.py: (cd {tests} && {' '.join(command[1:])})", flush=True)
            status = subprocess.run(command, cwd=tests, env=env, check=False).returncode
        except BaseException:
            stop_and_judge(daemon, 1, "the run")
            raise
        finally:
            for dest in copied:
                shutil.rmtree(dest, ignore_errors=True)
        return stop_and_judge(daemon, status, "runtests.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser)
    parser.add_argument(
        "--django-src",
        help="an extracted Django sdist or a .tar.gz (default: --django-version's, downloaded)",
    )
    parser.add_argument(
        "--django-version",
        default=PINNED[0],
        choices=PINNED,
        help=f"the pinned Django whose sdist to download (default {PINNED[0]})",
    )
    parser.add_argument("--verbosity", type=int, default=2, help="runtests.py's (default 2)")
    parser.add_argument("apps", nargs="*", help="glue apps to run (default: every larder_*)")
    args = parser.parse_args()
    return reported(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
