"""Fixtures that run the real larder binary: a daemon on 127.0.0.1:0 plus a Unix socket.

The binary is $LARDER_BIN, else $CARGO_TARGET_DIR/debug/larder (default target dir
~/.cache/larder-target). Each daemon gets its own data directory and is stopped with SIGTERM,
which must end it with status 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import larder_daemon
import pytest
from larder_daemon import larder_bin


class Daemon(larder_daemon.Daemon):
    """``larder_daemon.Daemon`` on ``larder_bin()``; a daemon that does not start fails the
    test."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        try:
            super().__init__(str(larder_bin()), extra_args, prefix="larder-py-")
        except larder_daemon.DaemonError as err:
            pytest.fail(str(err))


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
