"""The example shop as its users run it: gunicorn with 4 uvicorn workers beside a real Larder.

What one worker does must be seen by the others, and a restart of the daemon must lose
nothing and, with the cache helper treating a daemon that cannot answer as a miss, cost no
500s. The daemon is $LARDER_BIN (or the debug build); the app talks to it over its Unix
socket, which survives its restarts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from larder_client import aio

HERE = Path(__file__).resolve().parent
APP = HERE.parent
sys.path.insert(0, str(APP.parent.parent / "clients" / "python" / "tests"))
from larder_daemon import Daemon

WORKERS = 4
CHAT_LIMIT = 20
EXTRA = CHAT_LIMIT + 4  # requests sent: 4 more than the limit
PASSWORD = "correct horse battery staple"
WORKER_CLASS = "uvicorn_worker.UvicornWorker"


def larder_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "larder-target"))
    return os.environ.get("LARDER_BIN", str(Path(target) / "debug" / "larder"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shop:
    """The app under gunicorn, and the daemon it uses."""

    def __init__(self, daemon: Daemon, tmp: Path) -> None:
        self.daemon = daemon
        self.log_path = tmp / "gunicorn.log"
        self.env = dict(
            os.environ,
            LARDER_LOCATION=daemon.unix_target,
            SHOP_DB=str(tmp / "shop.sqlite3"),
            SHOP_CHAT_LIMIT=str(CHAT_LIMIT),
            SHOP_SECURE_COOKIE="0",  # the tests speak plain HTTP
            SHOP_PASSWORD=PASSWORD,
        )
        for name in ("alice", "bob"):
            subprocess.run(
                [sys.executable, "-m", "shop.users", "add", name], cwd=APP, env=self.env, check=True
            )
        self.port = free_port()
        self.log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "shop.app:app", "--worker-class", WORKER_CLASS,
             "--workers", str(WORKERS), "--bind", f"127.0.0.1:{self.port}",
             "--graceful-timeout", "5"],
            cwd=APP, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
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

    def client(self) -> httpx.Client:
        # A uvicorn worker keeps a connection alive, so the next request on it would go to
        # the same worker: close each one, so that any worker may take the next.
        return httpx.Client(base_url=self.url, timeout=10.0, headers={"Connection": "close"})

    def login(self, name: str) -> httpx.Client:
        client = self.client()
        r = client.post("/login", json={"username": name, "password": PASSWORD})
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


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    daemon = Daemon(larder_bin(), prefix="larder-shop-")
    try:
        tmp = tmp_path_factory.mktemp("shop")
        app = Shop(daemon, tmp)
        try:
            yield app
        finally:
            app.stop()
            # What the workers logged (errors with tracebacks), shown with a failure.
            print(app.log_path.read_text(errors="replace"))
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.cleanup()


def test_a_wrong_password_is_refused(shop: Shop) -> None:
    client = shop.client()
    r = client.post("/login", json={"username": "alice", "password": "wrong"})
    assert r.status_code == 403
    r = client.post("/login", json={"username": "mallory", "password": PASSWORD})
    assert r.status_code == 403
    assert "set-cookie" not in r.headers
    assert client.get("/").json() == {"user": None}


def test_a_login_through_one_worker_is_seen_by_the_others(shop: Shop) -> None:
    alice = shop.login("alice")
    seen: set[str] = set()
    for _ in range(200):  # bounded: until 3 workers answered
        r = alice.get("/")
        assert r.json() == {"user": "alice"}, f"worker {r.headers['X-Worker']} lost the login"
        seen.add(r.headers["X-Worker"])
        if len(seen) >= 3:
            break
    assert len(seen) >= 2, f"only worker(s) {seen} answered"
    assert shop.client().get("/").json() == {"user": None}, "another browser is not alice"


def test_a_rate_limit_admits_exactly_n_across_workers_and_holds_across_a_restart(
    shop: Shop,
) -> None:
    # Sent 8 at a time, so that several workers are busy at once and share the requests.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: shop.client().get("/api/v1/ai/chat"), range(EXTRA)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * CHAT_LIMIT + [429] * (EXTRA - CHAT_LIMIT)
    workers = {r.headers["X-Worker"] for r in answers}
    assert len(workers) >= 2, f"only worker(s) {workers} answered: nothing was shared"
    remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in answers)
    assert remaining == [0] * (EXTRA - CHAT_LIMIT + 1) + list(range(1, CHAT_LIMIT))
    denied = next(r for r in answers if r.status_code == 429)
    assert denied.headers["X-RateLimit-Limit"] == str(CHAT_LIMIT)
    assert int(denied.headers["Retry-After"]) >= 1
    body = denied.json()
    assert set(body) == {"error", "message", "retry_after"}
    assert body["error"] == "rate_limited"
    assert body["retry_after"] == int(denied.headers["Retry-After"])

    assert shop.daemon.restart() == 0
    client = shop.client()
    after = [client.get("/api/v1/ai/chat") for _ in range(WORKERS)]
    assert [r.status_code for r in after] == [429] * WORKERS, "a restart reset the limit"
    assert all("Retry-After" in r.headers for r in after)


def test_a_cached_page_survives_a_daemon_restart(shop: Shop) -> None:
    client = shop.client()
    page = client.get("/catalogue").text
    assert "built at" in page
    assert shop.daemon.restart() == 0
    for _ in range(WORKERS * 2):
        assert client.get("/catalogue").text == page


def test_workers_building_the_page_at_once_all_answer_the_one_stored_first(shop: Shop) -> None:
    async def forget() -> None:
        async with aio.Larder(shop.daemon.unix_target) as larder:
            await larder.cache.delete("catalogue-page", namespace="shop")

    asyncio.run(forget())
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: shop.client().get("/catalogue"), range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    assert len({r.headers["X-Worker"] for r in answers}) >= 2
    pages = {r.text for r in answers}
    assert len(pages) == 1, f"{len(pages)} different pages answered"
    assert shop.client().get("/catalogue").text in pages


def test_a_daemon_restart_during_traffic_costs_no_500s(shop: Shop) -> None:
    requests: list[tuple[float, float, int]] = []  # start, end, status
    stop = threading.Event()

    def traffic() -> None:
        with shop.client() as client:
            while not stop.is_set():
                start = time.monotonic()
                status = client.get("/catalogue").status_code
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


def test_with_the_daemon_down_the_page_is_built_uncached_and_a_warning_logged(
    shop: Shop,
) -> None:
    client = shop.client()
    cached = client.get("/catalogue").text
    assert shop.daemon.stop() == 0
    try:
        pages = [client.get("/catalogue") for _ in range(2)]
    finally:
        shop.daemon.start()  # the same data directory and socket, as restart() does
    assert [r.status_code for r in pages] == [200, 200]
    texts = [r.text for r in pages]
    assert cached not in texts and texts[0] != texts[1], "built anew while the daemon was down"
    assert "cache unavailable, catalogue-page built uncached" in shop.log_path.read_text()
    assert client.get("/catalogue").text == cached, "the cached page is back with the daemon"


def test_logging_out_everywhere_ends_the_users_sessions_in_every_worker(shop: Shop) -> None:
    laptop, phone = shop.login("bob"), shop.login("bob")
    assert phone.get("/").json() == {"user": "bob"}
    r = laptop.post("/logout-everywhere")
    assert r.status_code == 200, r.text
    assert r.json()["ended"] >= 2
    seen: set[str] = set()
    for _ in range(200):  # bounded: until 3 workers answered
        r = phone.get("/")
        assert r.json() == {"user": None}, f"worker {r.headers['X-Worker']} kept bob logged in"
        seen.add(r.headers["X-Worker"])
        if len(seen) >= 3:
            break
    assert len(seen) >= 2
    assert laptop.get("/").json() == {"user": None}
    assert laptop.post("/logout-everywhere").status_code == 403


def test_the_start_script_runs_larder_beside_the_app_and_stops_both(tmp_path: Path) -> None:
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
    with open(tmp_path / "start.log", "wb") as log:
        proc = subprocess.Popen(
            ["bash", str(APP / "start.sh")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(400):  # bounded: 400 x 50 ms
                try:
                    page = httpx.get(f"{url}/catalogue", timeout=2.0)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "start.log").read_text()
                    time.sleep(0.05)
            else:
                pytest.fail(f"the app did not answer:\n{(tmp_path / 'start.log').read_text()}")
            assert page.status_code == 200
            assert httpx.get(f"{url}/catalogue").text == page.text, "cached in Larder"
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
    assert "cache unavailable" not in log_text, log_text
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.connect(str(socket_path))  # larder stopped with the app
