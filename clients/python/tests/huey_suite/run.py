"""Runs Huey's own storage and consumer tests against larder_client.huey.LarderHuey.

    python run.py --larder-bin PATH [-v] [-k PATTERN ...]

1. The source distribution of Huey, of the version pinned in ``requirements.txt`` beside this
   file, is downloaded with pip and extracted into ``~/.cache/larder-ci-tools/huey-X.Y.Z``
   (``--cache-dir``) unless it is there already. The installed huey (the one
   ``larder_client.huey`` imports in an application) must be the same version; the suite
   itself imports huey from the sdist, ahead of it, so tests and code are one release's.
2. A larder daemon starts with a scratch data directory, on 127.0.0.1:0 and a Unix socket;
   its addresses are in LARDER_HUEY_TARGET (host:port) and LARDER_HUEY_UNIX_TARGET (unix:).
3. ``python -m unittest larder_huey_glue`` runs, in a scratch directory, the sdist's tests
   that the glue module beside this file selects (``StorageTests`` on LarderStorage, and the
   consumer, API, priority, signal, immediate, asyncio, Django-tasks and stats tests with
   their Huey swapped for a LarderHuey; see its docstring). The sdist's files are never edited. HUEY_SLOW_TESTS=1
   runs its slow tests too (consumer integration, a put_if_empty TTL, task timeouts), unless
   the environment sets it. ``-k PATTERN`` (unittest's) runs only the matching tests
   (``-k TestLarderStorage``, ``-k test_api.TestQueue``).
4. The daemon is stopped with SIGTERM and must exit with status 0.

The exit status is unittest's (0 when every test passed or was skipped for its stated
reason), 1 when the daemon failed, 2 when a step before the tests failed. ``larder_client``
is imported from the installed package when there is one, else from this source tree.
"""

from __future__ import annotations

import argparse
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
    common_arguments,
    extract,
    installed_version,
    python_path,
    reported,
    sdist_version,
    stop_and_judge,
)

REQUIREMENTS = HERE / "requirements.txt"
# Huey's sdist keeps its tests inside the package, not in a top-level tests/.
MARKER = Path("huey") / "tests" / "test_storage.py"


def pinned_version() -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if name.strip().lower() == "huey":
            return version.strip()
    raise RunError(f"{REQUIREMENTS} pins no huey version")


def sdist(version: str, cache: Path) -> Path:
    """The extracted Huey sdist of ``version`` in ``cache`` (downloaded with pip if absent)."""
    target = cache / f"huey-{version}"
    if not (target / MARKER).exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            print(f"run.py: downloading the huey {version} sdist with pip", flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet",
                 "--disable-pip-version-check", "--no-binary", ":all:", "--no-deps",
                 "--dest", scratch, f"huey=={version}"],
                check=True,
            )  # fmt: skip
            archives = list(Path(scratch).glob("*.tar.gz"))
            if len(archives) != 1:
                raise RunError(f"pip download left {archives}, not one huey sdist")
            top = extract(archives[0], Path(scratch) / "x")
            shutil.rmtree(target, ignore_errors=True)
            top.rename(target)
    if not (target / MARKER).exists():
        raise RunError(f"{target} has no {MARKER}: not Huey's source distribution")
    if sdist_version(target) != version:
        raise RunError(f"{target} is huey {sdist_version(target)}, not {version}")
    return target.resolve()


def run(args: argparse.Namespace) -> int:
    version = pinned_version()
    have = installed_version("huey", f"-r {REQUIREMENTS}")
    if have != version:
        raise RunError(
            f"the installed huey is {have}, the pinned sdist's tests are {version}'s: "
            f"pip install -r {REQUIREMENTS}"
        )
    root = sdist(version, Path(args.cache_dir))
    print(f"run.py: huey {version} from {root}", flush=True)
    env = dict(os.environ, PYTHONPATH=python_path((str(root), str(HERE))))
    env.setdefault("HUEY_SLOW_TESTS", "1")
    daemon = Daemon(args.larder_bin, prefix="larder-huey-")
    scratch = Path(tempfile.mkdtemp(prefix="larder-huey-cwd-"))
    try:
        env["LARDER_HUEY_TARGET"] = daemon.addr
        env["LARDER_HUEY_UNIX_TARGET"] = daemon.unix_target
        print(f"run.py: larder on {daemon.addr} and {daemon.unix_target}", flush=True)
        command = [sys.executable, "-m", "unittest", "-v" if args.verbose else "-q"]
        for pattern in args.patterns:
            command += ["-k", pattern]
        command.append("larder_huey_glue")
        print(f"run.py: (cd {scratch} && {' '.join(command[1:])})", flush=True)
        status = subprocess.run(command, cwd=scratch, env=env, check=False).returncode
    except BaseException:
        stop_and_judge(daemon, 1, "the run")
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return stop_and_judge(daemon, status, "Huey's suite")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="unittest -v")
    parser.add_argument(
        "-k", dest="patterns", action="append", default=[], help="run only matching tests"
    )
    args = parser.parse_args()
    return reported(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
