"""One real ``larder serve`` for the tests and the Django suite runner, without pytest.

It listens on 127.0.0.1:0 and a Unix socket in a scratch directory under /tmp (a socket path
must fit in 108 bytes), with ``LARDER_*`` variables of the caller's environment left out, and
logs to a file there. ``stop`` sends SIGTERM and returns the exit status (killed after 20 s).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

LISTENING = re.compile(r"listening on tcp addr=(\d+\.\d+\.\d+\.\d+:\d+)")


def larder_bin() -> Path:
    """$LARDER_BIN, else the debug build: $CARGO_TARGET_DIR/debug/larder (default target dir
    ~/.cache/larder-target)."""
    explicit = os.environ.get("LARDER_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "larder-target"))
    return Path(target) / "debug" / "larder"


class DaemonError(Exception):
    """The daemon did not start: no binary, it exited, or it never said where it listens."""


class Daemon:
    """One running ``larder serve``; ``addr`` is its TCP address, ``unix_target`` its socket."""

    def __init__(
        self, binary: str, extra_args: list[str] | None = None, prefix: str = "larder-"
    ) -> None:
        if not os.access(binary, os.X_OK):
            raise DaemonError(f"no larder binary at {binary} (build it, or set LARDER_BIN)")
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.socket = self.dir / "larder.sock"
        self.log_path = self.dir / "larder.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LARDER_")}
        args = [
            binary,
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
        self._args, self._env = args, env
        self.start()
        self.unix_target = f"unix:{self.socket}"

    def start(self) -> None:
        """Starts the daemon (again, after ``stop``) on this data directory and socket."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by stop or cleanup)
        self._logged = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            self._args, stdout=self._log, stderr=subprocess.STDOUT, env=self._env
        )
        self.addr = self._wait_for_addr()

    def restart(self, down_for: float = 0.0) -> int:
        """Stops the daemon (SIGTERM) and, ``down_for`` seconds later, starts it again on the
        same data directory and socket; returns the stopped one's exit status. Its TCP port
        is a new one."""
        status = self.stop()
        time.sleep(down_for)
        self.start()
        return status

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_addr(self) -> str:
        for _ in range(400):  # bounded: 400 x 50 ms
            match = LISTENING.search(self.log()[self._logged :])
            if match and self.socket.exists():
                return match.group(1)
            if self.proc.poll() is not None:
                self.cleanup()
                raise DaemonError(f"larder exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        log = self.log()
        self.cleanup()
        raise DaemonError(f"larder logged no 'listening on tcp' line within 20 s:\n{log}")

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL after 20 s, which shows as -9)."""
        status = terminate(self.proc, 20)
        self._log.close()
        return status

    def cleanup(self) -> None:
        """Kills the daemon if it still runs and removes its directory."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM to ``proc``, then its exit status (SIGKILL after ``timeout`` seconds, which
    shows as -9)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
