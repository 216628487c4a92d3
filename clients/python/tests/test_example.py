"""The README's quick start (example.py) runs against a real daemon, over TCP and Unix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import Daemon

EXAMPLE = Path(__file__).resolve().parent.parent / "example.py"


def test_the_quick_start_runs(daemon: Daemon, tmp_path: Path) -> None:
    # Run from a copy: next to the original, the source tree's larder_client (without its
    # generated stubs) would shadow the installed package.
    script = shutil.copy(EXAMPLE, tmp_path / "example.py")
    for target in (daemon.addr, daemon.unix_target):
        done = subprocess.run(
            [sys.executable, str(script), target],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert 'profile: b\'{"name": "Ada"}\'' in done.stdout
        assert "allowed: True" in done.stdout
