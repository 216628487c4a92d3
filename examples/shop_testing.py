"""What the three shops' tests share: the app under gunicorn beside a real Larder daemon, and
the checks that every shop must pass.

Each shop's ``tests/test_shop.py`` puts this directory on ``sys.path``, describes its app in a
subclass of ``Shop`` (the gunicorn target and worker class, the environment, how users are
created, how one logs in and logs out everywhere, the page and the rate-limited path) and runs
each check below in a test of its own, adding what only that app does.

The daemon is $LARDER_BIN (or the debug build); the app talks to it over its Unix socket, which
survives its restarts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python" / "tests"))
from larder_daemon import Daemon

WORKERS = 4
PASSWORD = "correct horse battery staple"
USERS = ("alice", "bob")


def larder_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "larder-target"))
    return os.environ.get("LARDER_BIN", str(Path(target) / "debug" / "larder"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shop:
    """The app under gunicorn, and the daemon it uses.

    A subclass names the app: its directory, its gunicorn target (and worker class), its own
    environment, ``prepare`` (the database and the users in ``USERS``, with ``PASSWORD``),
    ``post_login`` and ``logout_everywhere``.
    """

    app: ClassVar[Path]
    target: ClassVar[str]
    worker_class: ClassVar[str | None] = None
    catalogue: ClassVar[str] = "/catalogue/"  # the cached page
    chat: ClassVar[str] = "/api/v1/ai/chat"  # the rate-limited endpoint
    chat_limit: ClassVar[int] = 20  # its limit, through SHOP_CHAT_LIMIT

    def __init__(self, daemon: Daemon, tmp: Path) -> None:
        self.daemon = daemon
        self.log_path = tmp / "gunicorn.log"
        self.env = dict(
            os.environ,
            LARDER_LOCATION=daemon.unix_target,
            SHOP_DB=str(tmp / "shop.sqlite3"),
            SHOP_CHAT_LIMIT=str(self.chat_limit),
            **self.app_env(),
        )
        self.prepare()
        self.port = free_port()
        worker_class = ["--worker-class", self.worker_class] if self.worker_class else []
        self.log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", self.target, *worker_class,
             "--workers", str(WORKERS), "--bind", f"127.0.0.1:{self.port}",
             "--graceful-timeout", "5"],
            cwd=self.app, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(400):  # bounded: 400 x 50 ms
            try:
                httpx.get(f"{self.url}/", timeout=1.0)
                return
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"gunicorn did not answer:\n{self.log_path.read_text()}")

    def app_env(self) -> Mapping[str, str]:
        """The app's own environment variables (besides LARDER_LOCATION, SHOP_DB and
        SHOP_CHAT_LIMIT)."""
        return {}

    def prepare(self) -> None:
        """Creates the app's database and the users in ``USERS``, before gunicorn starts."""

    def run(self, *args: str) -> None:
        """Runs ``python args...`` in the app's directory, with its environment."""
        done = subprocess.run(
            [sys.executable, *args], cwd=self.app, env=self.env, capture_output=True, check=False
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            pytest.fail(f"{' '.join(args)} exited with {done.returncode}:\n{output}")

    def client(self) -> httpx.Client:
        # gunicorn's sync workers close every connection, so each request is a new one and
        # any of the workers may take it.
        return httpx.Client(base_url=self.url, timeout=10.0)

    def post_login(self, client: httpx.Client, name: str) -> httpx.Response:
        """Sends the app's login request for ``name`` (with ``PASSWORD``) on ``client``."""
        raise NotImplementedError

    def logout_everywhere(self, client: httpx.Client) -> httpx.Response:
        """Sends the app's "log out everywhere" request on ``client``."""
        raise NotImplementedError

    def login(self, name: str) -> httpx.Client:
        """A new browser, logged in as ``name``."""
        client = self.client()
        r = self.post_login(client, name)
        assert r.status_code == 200, r.text
        assert r.json() == {"user": name}
        return client

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class CsrfFormShop(Shop):
    """The Django and Flask shops' protocol: ``GET /login/`` answers the CSRF token, the login
    form carries it in the field ``csrf_field`` and other POSTs in the ``X-CSRFToken`` header."""

    csrf_field: ClassVar[str]

    def csrf_token(self, client: httpx.Client) -> str:
        return client.get("/login/").json()["csrf_token"]

    def post_login(self, client: httpx.Client, name: str) -> httpx.Response:
        token = self.csrf_token(client)
        return client.post(
            "/login/", data={"username": name, "password": PASSWORD, self.csrf_field: token}
        )

    def logout_everywhere(self, client: httpx.Client) -> httpx.Response:
        token = self.csrf_token(client)
        return client.post("/logout-everywhere/", headers={"X-CSRFToken": token})


S = TypeVar("S", bound=Shop)


def run_shop(shop_class: type[S], tmp_path_factory: pytest.TempPathFactory) -> Iterator[S]:
    """The body of a test module's ``shop`` fixture: a daemon, the app beside it, and both
    stopped at the end (the daemon must exit cleanly)."""
    daemon = Daemon(larder_bin(), prefix="larder-shop-")
    try:
        tmp = tmp_path_factory.mktemp("shop")
        shop = shop_class(daemon, tmp)
        try:
            yield shop
        finally:
            shop.stop()
            # What the workers logged (errors with tracebacks), shown with a failure.
            print(shop.log_path.read_text(errors="replace"))
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.cleanup()


def assert_every_worker_answers(client: httpx.Client, expected: object, otherwise: str) -> None:
    """GETs ``/`` until 3 workers answered (200 requests at most), each answer ``expected``."""
    seen: set[str] = set()
    for _ in range(200):  # bounded: until 3 workers answered
        r = client.get("/")
        assert r.json() == expected, f"worker {r.headers['X-Worker']} {otherwise}"
        seen.add(r.headers["X-Worker"])
        if len(seen) >= 3:
            break
    assert len(seen) >= 2, f"only worker(s) {seen} answered"


def check_login_seen_by_the_other_workers(shop: Shop) -> None:
    alice = shop.login("alice")
    assert_every_worker_answers(alice, {"user": "alice"}, "lost the login")
    assert shop.client().get("/").json() == {"user": None}, "another browser is not alice"


RemainingCheck = Callable[[list[httpx.Response], int], None]


def remaining_counts_down(answers: list[httpx.Response], limit: int) -> None:
    """Each admitted request took one of the limit: ``X-RateLimit-Remaining`` counts down to
    0, and the denied ones have 0 left."""
    remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in answers)
    assert remaining == [0] * (len(answers) - limit + 1) + list(range(1, limit))


@dataclass
class RateLimited:
    """What ``check_rate_limit_across_workers`` saw, for an app's own assertions."""

    answers: list[httpx.Response]  # the concurrent requests'
    denied: httpx.Response  # one of the 429s among them
    after_restart: list[httpx.Response]  # one a worker, after the daemon restarted


def check_rate_limit_across_workers(
    shop: Shop, remaining: RemainingCheck = remaining_counts_down
) -> RateLimited:
    """The limit admits exactly N of N+4 concurrent requests across the workers, answers the
    rest with 429, ``Retry-After`` and the JSON body, and still denies after a daemon restart.
    ``remaining`` checks the answers' ``X-RateLimit-Remaining`` headers."""
    limit = shop.chat_limit
    sent = limit + 4
    # Sent 8 at a time, so that several workers are busy at once and share the requests.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: shop.client().get(shop.chat), range(sent)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * limit + [429] * (sent - limit)
    workers = {r.headers["X-Worker"] for r in answers}
    assert len(workers) >= 2, f"only worker(s) {workers} answered: nothing was shared"
    remaining(answers, limit)
    denied = next(r for r in answers if r.status_code == 429)
    assert denied.headers["X-RateLimit-Limit"] == str(limit)
    assert int(denied.headers["Retry-After"]) >= 1
    body = denied.json()
    assert body["error"] == "rate_limited" and body["retry_after"] >= 1

    assert shop.daemon.restart() == 0
    client = shop.client()
    after = [client.get(shop.chat) for _ in range(WORKERS)]
    assert [r.status_code for r in after] == [429] * WORKERS, "a restart reset the limit"
    return RateLimited(answers, denied, after)


def check_cached_page_survives_a_daemon_restart(shop: Shop) -> None:
    client = shop.client()
    page = client.get(shop.catalogue).text
    assert "built at" in page
    assert shop.daemon.restart() == 0
    for _ in range(WORKERS * 2):
        assert client.get(shop.catalogue).text == page


def check_daemon_restart_during_traffic_costs_no_500s(shop: Shop) -> None:
    requests: list[tuple[float, float, int]] = []  # start, end, status
    stop = threading.Event()

    def traffic() -> None:
        with shop.client() as client:
            while not stop.is_set():
                start = time.monotonic()
                status = client.get(shop.catalogue).status_code
                requests.append((start, time.monotonic(), status))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.3)
        down = time.monotonic()
        assert shop.daemon.restart(down_for=1.0) == 0
        up = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
    overlapping = [r for r in requests if r[0] < up and r[1] > down]
    assert overlapping, "no request was in flight while the daemon restarted"
    statuses = sorted({status for _, _, status in requests})
    assert statuses == [200], f"statuses seen: {statuses}"


def check_logging_out_everywhere(shop: Shop) -> httpx.Client:
    """bob logs in twice, logs out everywhere from one browser, and no worker knows him in
    either; returns the browser that logged out."""
    laptop, phone = shop.login("bob"), shop.login("bob")
    assert phone.get("/").json() == {"user": "bob"}
    r = shop.logout_everywhere(laptop)
    assert r.status_code == 200, r.text
    assert r.json()["ended"] >= 2
    assert_every_worker_answers(phone, {"user": None}, "kept bob logged in")
    assert laptop.get("/").json() == {"user": None}
    return laptop


def check_start_script(shop_class: type[Shop], tmp_path: Path) -> str:
    """The app's ``start.sh`` runs Larder beside it, serves the cached page and stops both;
    returns what the script logged."""
    port = free_port()
    socket_path = tmp_path / "larder.sock"
    env = dict(
        os.environ,
        # larder, and this Python's gunicorn, as a deployment would have them on PATH.
        PATH=os.pathsep.join(
            [str(Path(larder_bin()).parent), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        PORT=str(port),
        WEB_CONCURRENCY="2",
        LARDER_DATA_DIR=str(tmp_path / "larder-data"),
        LARDER_SOCKET=str(socket_path),
        SHOP_DB=str(tmp_path / "shop.sqlite3"),
    )
    env.pop("LARDER_LOCATION", None)
    page_url = f"http://127.0.0.1:{port}{shop_class.catalogue}"
    with open(tmp_path / "start.log", "wb") as log:
        script = str(shop_class.app / "start.sh")
        proc = subprocess.Popen(["bash", script], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(400):  # bounded: 400 x 50 ms
                try:
                    page = httpx.get(page_url, timeout=2.0)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "start.log").read_text()
                    time.sleep(0.05)
            else:
                pytest.fail(f"the app did not answer:\n{(tmp_path / 'start.log').read_text()}")
            assert page.status_code == 200
            assert httpx.get(page_url).text == page.text, "cached in Larder"
            assert socket_path.exists()
        finally:
            proc.terminate()
            try:
                status = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    log_text = (tmp_path / "start.log").read_text(errors="replace")
    assert status in (0, 143), log_text  # 143: the shell's own answer to SIGTERM
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.connect(str(socket_path))  # larder stopped with the app
    return log_text
