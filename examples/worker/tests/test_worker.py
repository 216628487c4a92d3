"""The mailer as it is deployed: the app under gunicorn and two worker processes beside a real
Larder daemon, all real processes.

What it shows: a signup's email is sent once, by one worker; a double-clicked signup enqueues
one email; and a worker killed with SIGKILL in the middle of an email loses nothing: once its
lease has run out, the other worker sends the email. The lease is short (1 s) so the test
takes seconds; every wait is bounded by a generous deadline and no duration is asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

APP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(APP.parent))  # examples/: shop_testing's helpers
sys.path.insert(0, str(APP.parent.parent / "clients" / "python" / "tests"))  # larder_daemon
from larder_daemon import Daemon
from shop_testing import free_port, larder_bin

T = TypeVar("T")

LEASE_MS = 1_000
SEND_SECONDS = 4.0  # how long the slow email takes: the kill lands in the middle of it


def wait_for(what: str, check: Callable[[], T | None], seconds: float = 60.0) -> T:
    """``check()``'s first answer that is not None, polled until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {seconds} s")


class Process:
    """A process of the mailer (gunicorn, or a worker), logging to a file of its own."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], tmp: Path) -> None:
        self.name = name
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop)
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=APP, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Mailer:
    """The daemon, the app under gunicorn (2 workers) and two mailer workers."""

    def __init__(self, tmp: Path) -> None:
        self.daemon = Daemon(larder_bin(), prefix="larder-mailer-")
        self.outbox = tmp / "outbox"
        self.env = dict(
            os.environ,
            LARDER_LOCATION=self.daemon.unix_target,
            MAILER_OUTBOX=str(self.outbox),
            MAILER_LEASE_MS=str(LEASE_MS),
            MAILER_WAIT_MS="2000",
            MAILER_SEND_SECONDS=str(SEND_SECONDS),
        )
        self.processes: list[Process] = []
        port = free_port()
        self.web = self.start(
            "gunicorn",
            ["-m", "gunicorn", "mailer.app:app", "--workers", "2",
             "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"],
            tmp,
        )  # fmt: skip
        self.workers = [self.start(f"worker-{i}", ["-m", "mailer.worker"], tmp) for i in (1, 2)]
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
        wait_for("gunicorn answers", self._answers)
        for worker in self.workers:
            wait_for(f"{worker.name} waits for jobs", lambda w=worker: w.log().count("waiting"))

    def start(self, name: str, args: list[str], tmp: Path) -> Process:
        process = Process(name, args, self.env, tmp)
        self.processes.append(process)
        return process

    def _answers(self) -> bool | None:
        try:
            return self.http.get("/").status_code == 200 or None
        except httpx.TransportError:
            if self.web.proc.poll() is not None:
                pytest.fail(f"gunicorn exited:\n{self.web.log()}")
            return None

    def signup(self, email: str) -> dict[str, object]:
        r = self.http.post("/signup", data={"email": email, "name": email.split("@")[0]})
        assert r.status_code == 202, r.text
        return r.json()

    def email(self, job: int) -> dict[str, str] | None:
        """The headers of the email of ``job``, once a worker has written it."""
        path = self.outbox / f"{job}.eml"
        if not path.exists():
            return None
        head = path.read_text().split("\n\n", 1)[0]
        return dict(line.split(": ", 1) for line in head.splitlines())

    def stats(self) -> dict[str, int]:
        return self.http.get("/queue").json()

    def stop(self) -> None:
        self.http.close()
        for process in self.processes:
            process.stop()
            print(f"--- {process.name} ---\n{process.log()}")  # shown with a failure
        try:
            assert self.daemon.stop() == 0, self.daemon.log()
        finally:
            self.daemon.cleanup()


@pytest.fixture
def mailer(tmp_path: Path) -> Iterator[Mailer]:
    m = Mailer(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def took(worker: Process, job: int) -> bool | None:
    return f"took job {job} " in worker.log() or None


def test_a_worker_killed_mid_email_loses_nothing_the_other_sends_it(mailer: Mailer) -> None:
    job = int(mailer.signup("ada@example.com")["job"])
    # One of the two workers takes the job and starts sending (it takes SEND_SECONDS).
    first = wait_for(
        "a worker takes the job",
        lambda: next((w for w in mailer.workers if took(w, job)), None),
    )
    (other,) = [w for w in mailer.workers if w is not first]
    os.kill(first.pid, signal.SIGKILL)
    assert first.proc.wait(timeout=30) == -signal.SIGKILL
    # Nobody extends the lease any more: it runs out, and the other worker sends the email.
    email = wait_for("the other worker sends the email", lambda: mailer.email(job))
    assert email["X-Sent-By"] == str(other.pid)
    assert email["X-Attempt"] == "2"  # the killed worker's delivery was the first
    assert email["To"] == "ada@example.com"
    assert f"took job {job} (attempt 2)" in other.log()
    assert sorted(p.name for p in mailer.outbox.iterdir() if p.suffix == ".eml") == [f"{job}.eml"]
    stats = wait_for(
        "the job is acked", lambda: mailer.stats() if not mailer.stats()["leased"] else None
    )
    assert stats == {"ready": 0, "delayed": 0, "leased": 0, "dead": 0, "oldest_ready_age_ms": 0}


def test_each_signup_is_sent_once_and_a_double_click_enqueues_one_email(mailer: Mailer) -> None:
    first = mailer.signup("grace@example.com")
    again = mailer.signup("grace@example.com")  # while the first job exists
    assert again == {"job": first["job"], "duplicate": True}
    other = mailer.signup("alan@example.com")
    assert other["duplicate"] is False
    for job in (first["job"], other["job"]):
        email = wait_for(f"job {job} is sent", lambda j=job: mailer.email(int(j)))
        assert email["X-Attempt"] == "1"
        assert email["X-Sent-By"] in {str(w.pid) for w in mailer.workers}
    sent = sorted(p.name for p in mailer.outbox.iterdir() if p.suffix == ".eml")
    assert sent == sorted(f"{job}.eml" for job in (first["job"], other["job"]))


def test_a_bad_signup_is_refused_and_enqueues_nothing(mailer: Mailer) -> None:
    r = mailer.http.post("/signup", json={"email": "not an address"})
    assert r.status_code == 400 and "email" in r.json()["error"]
    assert mailer.stats()["ready"] == 0
