"""The example shop as its users run it: gunicorn with 4 uvicorn workers beside a real Larder.

What one worker does must be seen by the others, and a restart of the daemon must lose
nothing and, with the cache helper treating a daemon that cannot answer as a miss, cost no
500s. The harness and the checks, shared with the Django and Flask shops, are in
examples/shop_testing.py; what only this app does is tested here.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from larder_client import aio

APP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(APP.parent))  # examples/, for shop_testing
pytest.register_assert_rewrite("shop_testing")  # its failed assertions show their values
import shop_testing
from shop_testing import PASSWORD, USERS, Shop


class FastApiShop(Shop):
    app = APP
    target = "shop.app:app"
    worker_class = "uvicorn_worker.UvicornWorker"
    catalogue = "/catalogue"

    def app_env(self) -> dict[str, str]:
        # SHOP_SECURE_COOKIE=0: the tests speak plain HTTP.
        return {"SHOP_SECURE_COOKIE": "0", "SHOP_PASSWORD": PASSWORD}

    def prepare(self) -> None:
        for name in USERS:
            self.run("-m", "shop.users", "add", name)

    def client(self) -> httpx.Client:
        # A uvicorn worker keeps a connection alive, so the next request on it would go to
        # the same worker: close each one, so that any worker may take the next.
        return httpx.Client(base_url=self.url, timeout=10.0, headers={"Connection": "close"})

    def post_login(self, client: httpx.Client, name: str) -> httpx.Response:
        return client.post("/login", json={"username": name, "password": PASSWORD})

    def logout_everywhere(self, client: httpx.Client) -> httpx.Response:
        return client.post("/logout-everywhere")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastApiShop]:
    yield from shop_testing.run_shop(FastApiShop, tmp_path_factory)


def test_a_wrong_password_is_refused(shop: FastApiShop) -> None:
    client = shop.client()
    r = client.post("/login", json={"username": "alice", "password": "wrong"})
    assert r.status_code == 403
    r = client.post("/login", json={"username": "mallory", "password": PASSWORD})
    assert r.status_code == 403
    assert "set-cookie" not in r.headers
    assert client.get("/").json() == {"user": None}


def test_a_login_through_one_worker_is_seen_by_the_others(shop: FastApiShop) -> None:
    shop_testing.check_login_seen_by_the_other_workers(shop)


def test_a_rate_limit_admits_exactly_n_across_workers_and_holds_across_a_restart(
    shop: FastApiShop,
) -> None:
    seen = shop_testing.check_rate_limit_across_workers(shop)
    body = seen.denied.json()
    assert set(body) == {"error", "message", "retry_after"}
    assert body["retry_after"] == int(seen.denied.headers["Retry-After"])
    assert all("Retry-After" in r.headers for r in seen.after_restart)


def test_a_cached_page_survives_a_daemon_restart(shop: FastApiShop) -> None:
    shop_testing.check_cached_page_survives_a_daemon_restart(shop)


def test_workers_building_the_page_at_once_all_answer_the_one_stored_first(
    shop: FastApiShop,
) -> None:
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


def test_a_daemon_restart_during_traffic_costs_no_500s(shop: FastApiShop) -> None:
    shop_testing.check_daemon_restart_during_traffic_costs_no_500s(shop)


def test_with_the_daemon_down_the_page_is_built_uncached_and_a_warning_logged(
    shop: FastApiShop,
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


def test_logging_out_everywhere_ends_the_users_sessions_in_every_worker(
    shop: FastApiShop,
) -> None:
    laptop = shop_testing.check_logging_out_everywhere(shop)
    assert laptop.post("/logout-everywhere").status_code == 403


def test_the_start_script_runs_larder_beside_the_app_and_stops_both(tmp_path: Path) -> None:
    log_text = shop_testing.check_start_script(FastApiShop, tmp_path)
    assert "cache unavailable" not in log_text, log_text
