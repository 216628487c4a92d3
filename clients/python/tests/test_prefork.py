"""A ``Larder`` made, and called, before a fork keeps working after it: in the workers of
``gunicorn --preload`` (prefork_app.py, 4 sync workers) and in the child of a plain
``os.fork()``, on the core under test (``LARDER_CLIENT_CORE``; unset, the default).

Only the native core promises that: in a forked process its calls go on a runtime and a
channel of that process's own. grpcio does not: gRPC Python supports fork() only before any
channel is made (its doc/fork_support.md), and a client made before the fork fails now and
then in the child, on a call soon after the fork, with CANCELLED or UNAVAILABLE "Stream
removed (Closed on fork)" or "Stream removed (sendmsg: Wrong file descriptor generation)",
with or without ``GRPC_ENABLE_FORK_SUPPORT=1``. So these tests skip on the grpcio core; an
app on it makes its client after the fork (gunicorn without ``--preload``, or in
``post_fork``).

Every wait is bounded, so a client that deadlocks after the fork fails the test instead of
hanging it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pytest
from conftest import Daemon
from larder_daemon import terminate

from larder_client import Larder

pytest.importorskip("gunicorn", reason="gunicorn is in tests/requirements.txt")

HERE = Path(__file__).resolve().parent
CORE = os.environ.get("LARDER_CLIENT_CORE") or None
WORKERS = 4
REQUESTS = 64  # from 8 threads at once, each held 50 ms by its worker: several workers answer
# A worker is replaced after this many requests, so some answer right after their fork.
MAX_REQUESTS = 12
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+) ")
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
GRPCIO_FORK = (
    "grpcio does not carry a client made before fork() into the child: a call soon after the "
    "fork fails now and then with CANCELLED or UNAVAILABLE 'Stream removed (Closed on fork)' "
    "or '(sendmsg: Wrong file descriptor generation)'; gRPC Python supports fork() only "
    "before any channel is made"
)


def wait_exit(pid: int, seconds: float) -> int | None:
    """The exit code of child ``pid`` (negative: killed by that signal), or None when it did not
    end within ``seconds`` (it is then killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


class Gunicorn:
    """``gunicorn --preload prefork_app:app`` with 4 sync workers on a port of its choosing;
    the master forks a fresh worker for each one that has served ``MAX_REQUESTS``."""

    def __init__(self, target: str, key: str, core: str, tmp: Path) -> None:
        self.log_path = tmp / "gunicorn.log"
        env = dict(os.environ, PREFORK_TARGET=target, PREFORK_KEY=key, PREFORK_CORE=core)
        self.log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop)
        # From this directory, where prefork_app is; larder_client is the installed one.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "prefork_app:app", "--preload",
             "--worker-class", "sync", "--workers", str(WORKERS), "--bind", "127.0.0.1:0",
             "--max-requests", str(MAX_REQUESTS), "--timeout", "20", "--graceful-timeout", "5",
             "--no-control-socket"],
            cwd=HERE, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.port = self._wait_for_workers()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_workers(self) -> int:
        for _ in range(600):  # bounded: 600 x 50 ms
            text = self.text()
            port = LISTENING.search(text)
            if port and len(BOOTED.findall(text)) >= WORKERS:
                return int(port.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"gunicorn did not start {WORKERS} workers within 30 s:\n{self.text()}")

    def stop(self) -> int:
        """SIGTERM, then its exit status (SIGKILL after 30 s, which shows as -9)."""
        status = terminate(self.proc, 30)
        self.log.close()
        return status


@pytest.fixture
def core(daemon: Daemon) -> str:
    """The core a ``Larder`` takes here (``LARDER_CLIENT_CORE``, else the default); skips the
    test on grpcio (see the module's docstring)."""
    with Larder(daemon.addr, core=CORE) as larder:
        taken = larder.core
    if taken == "grpc":
        pytest.skip(GRPCIO_FORK)
    return taken


@pytest.fixture(params=["tcp", "unix"])
def target(request: pytest.FixtureRequest, daemon: Daemon) -> str:
    return daemon.addr if request.param == "tcp" else daemon.unix_target


@pytest.fixture
def gunicorn(target: str, core: str, tmp_path: Path) -> Iterator[tuple[Gunicorn, str]]:
    key = f"prefork-{uuid.uuid4().hex}"
    server = Gunicorn(target, key, core, tmp_path)
    try:
        yield server, key
    finally:
        server.stop()


def test_preforked_gunicorn_workers_share_the_masters_client(
    gunicorn: tuple[Gunicorn, str], target: str, core: str
) -> None:
    server, key = gunicorn

    def get(_: int) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10.0)
        try:
            conn.request("GET", "/?hold=0.05")
            r = conn.getresponse()
            body = r.read()
        finally:
            conn.close()
        assert r.status == 200, body
        return json.loads(body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(get, i) for i in range(REQUESTS)]
        answers = [f.result() for f in as_completed(futures, timeout=60)]

    log = server.text()
    assert len(answers) == REQUESTS
    assert {a["import_pid"] for a in answers} == {server.proc.pid}, "not the master's client"
    assert {a["import_value"] for a in answers} == {0}
    threads = answers[0]["import_threads"]
    assert threads is None or threads > 1, "no thread of the client's existed before the fork"
    assert {a["core"] for a in answers} == {core}
    pids = {a["pid"] for a in answers}
    assert server.proc.pid not in pids
    assert len(pids) >= 2, f"only worker {pids} answered:\n{log}"
    values = sorted(a["value"] for a in answers)
    assert values == list(range(1, REQUESTS + 1)), "lost or repeated increments"

    with Larder(target, timeout=5.0, core=core) as larder:
        assert larder.cache.get(key) is not None
        assert larder.cache.increment(key, 0) == REQUESTS
    assert server.stop() == 0, log
    log = server.text()
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log, log


def test_a_forked_child_uses_the_parents_client(daemon: Daemon, core: str) -> None:
    key = f"fork-{uuid.uuid4().hex}"
    with Larder(daemon.addr, timeout=5.0, core=core) as larder:
        assert larder.cache.increment(key) == 1
        read, write = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns that this process has threads (the client's, pytest's).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            status = 3
            try:
                os.close(read)
                values = [larder.cache.increment(key) for _ in range(3)]
                os.write(write, f"child increments: {values}".encode())
                status = 0 if values == [2, 3, 4] else 1
            except BaseException as err:  # noqa: BLE001  (reported through the pipe)
                os.write(write, f"child: {type(err).__name__}: {err}".encode())
                status = 2
            finally:
                os._exit(status)
        os.close(write)
        status = wait_exit(pid, 30.0)
        with os.fdopen(read, "rb") as pipe:
            said = pipe.read().decode(errors="replace")
        assert status is not None, f"the child did not end within 30 s: {said}"
        assert status == 0, f"the child exited with {status}: {said}"
        assert larder.cache.increment(key) == 5
