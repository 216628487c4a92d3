"""The Flask shop as its users run it: gunicorn with 4 workers beside a real Larder daemon.

What one worker does must be seen by the others, and a restart of the daemon must lose
nothing and, with the cache's CACHE_LARDER_IGNORE_EXCEPTIONS, cost no 500s. The harness and
the checks, shared with the Django and FastAPI shops, are in examples/shop_testing.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

APP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(APP.parent))  # examples/, for shop_testing
pytest.register_assert_rewrite("shop_testing")  # its failed assertions show their values
import shop_testing
from shop_testing import PASSWORD, USERS, CsrfFormShop


class FlaskShop(CsrfFormShop):
    app = APP
    target = "shop.wsgi:app"
    csrf_field = "csrf_token"

    def app_env(self) -> dict[str, str]:
        return {"SHOP_USER_PASSWORD": PASSWORD}

    def prepare(self) -> None:
        flask_cli = ["-m", "flask", "--app", "shop.wsgi"]
        self.run(*flask_cli, "init-db")
        for name in USERS:
            self.run(*flask_cli, "add-user", name)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskShop]:
    yield from shop_testing.run_shop(FlaskShop, tmp_path_factory)


def remaining_within_the_limit(answers: list[httpx.Response], limit: int) -> None:
    # Flask-Limiter reads the window again for its headers, so concurrent answers may share a
    # count; each is within the limit, and a denied one has none left.
    for r in answers:
        assert r.headers["X-RateLimit-Limit"] == str(limit)
        assert 0 <= int(r.headers["X-RateLimit-Remaining"]) < limit
    assert {r.headers["X-RateLimit-Remaining"] for r in answers if r.status_code == 429} == {"0"}


def test_a_login_through_one_worker_is_seen_by_the_others(shop: FlaskShop) -> None:
    shop_testing.check_login_seen_by_the_other_workers(shop)


def test_a_rate_limit_admits_exactly_n_across_workers_and_holds_across_a_restart(
    shop: FlaskShop,
) -> None:
    shop_testing.check_rate_limit_across_workers(shop, remaining=remaining_within_the_limit)


def test_a_cached_page_survives_a_daemon_restart(shop: FlaskShop) -> None:
    shop_testing.check_cached_page_survives_a_daemon_restart(shop)


def test_a_daemon_restart_during_traffic_costs_no_500s(shop: FlaskShop) -> None:
    shop_testing.check_daemon_restart_during_traffic_costs_no_500s(shop)


def test_logging_out_everywhere_ends_the_users_sessions_in_every_worker(shop: FlaskShop) -> None:
    shop_testing.check_logging_out_everywhere(shop)


def test_the_start_script_runs_larder_beside_the_app_and_stops_both(tmp_path: Path) -> None:
    shop_testing.check_start_script(FlaskShop, tmp_path)
