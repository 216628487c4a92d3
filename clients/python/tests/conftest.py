"""Fixtures that run the real larder binary: a daemon on 127.0.0.1:0 plus a Unix socket.

The binary is $LARDER_BIN, else $CARGO_TARGET_DIR/debug/larder (default target dir
~/.cache/larder-target). Each daemon gets its own data directory and is stopped with SIGTERM,
which must end it with status 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LISTENING = re.compile(r"listening on tcp addr=(\d+\.\d+\.\d+\.\d+:\d+)")


def larder_bin() -> Path:
    explicit = os.environ.get("LARDER_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "larder-target"))
    return Path(target) / "debug" / "larder"


class Daemon:
    """One running `larder serve`; ``addr`` is its TCP address, ``unix_target`` its socket."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        binary = larder_bin()
        if not os.access(binary, os.X_OK):
            pytest.fail(f"no larder binary at {binary} (build it, or set LARDER_BIN)")
        # A short directory under /tmp: a Unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="larder-py-"))
        self.socket = self.dir / "larder.sock"
        self.log_path = self.dir / "larder.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LARDER_")}
        args = [
            str(binary),
            "serve",
            "--data-dir",
            str(self.dir / "data"),
            "--listen",
            "127.0.0.1:0",
            "--unix-socket",
            str(self.socket),
            "--log-format",
            "text",
            "--drain-timeout",
            "5s",
            *(extra_args or []),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop or cleanup)
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.addr = self._wait_for_addr()
        self.unix_target = f"unix:{self.socket}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_addr(self) -> str:
        for _ in range(200):  # bounded: 200 x 50 ms
            match = LISTENING.search(self.log())
            if match and self.socket.exists():
                return match.group(1)
            if self.proc.poll() is not None:
                pytest.fail(f"larder exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"larder logged no 'listening on tcp' line within 10 s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 20 s if it does not exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"larder still running 20 s after SIGTERM:\n{self.log()}")
        self._log.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _run(extra_args: list[str] | None = None) -> Iterator[Daemon]:
    daemon = Daemon(extra_args)
    try:
        yield daemon
        status = daemon.stop()
        assert status == 0, f"larder exited with {status} after SIGTERM:\n{daemon.log()}"
    finally:
        daemon.cleanup()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A daemon without auth, shared by a test module."""
    yield from _run()


@pytest.fixture
def token_daemon(tmp_path: Path) -> Iterator[tuple]:
    """A daemon that accepts one bearer token (44 characters, like `openssl rand -base64 32`)."""
    token = "q2cM5y0rN1Xl0sVfG9k1m2Wc8Yb4f9+vTtKq3zq9h6E="
    assert len(token) == 44
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# test client\n{token}\n")
    tokens.chmod(0o600)
    for d in _run(["--auth-token-file", str(tokens)]):
        yield d, token
