"""The example shop as its users run it: gunicorn with 4 workers beside a real Larder daemon.

What one worker does must be seen by the others, and a restart of the daemon must lose
nothing and, with the cache's IGNORE_EXCEPTIONS, cost no 500s. The harness and the checks,
shared with the Flask and FastAPI shops, are in examples/shop_testing.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(APP.parent))  # examples/, for shop_testing
pytest.register_assert_rewrite("shop_testing")  # its failed assertions show their values
import shop_testing
from shop_testing import PASSWORD, USERS, CsrfFormShop


class DjangoShop(CsrfFormShop):
    app = APP
    target = "shop.wsgi:application"
    csrf_field = "csrfmiddlewaretoken"

    def app_env(self) -> dict[str, str]:
        return {"DJANGO_SETTINGS_MODULE": "shop.settings", "DJANGO_SUPERUSER_PASSWORD": PASSWORD}

    def prepare(self) -> None:
        self.run("manage.py", "migrate", "--noinput", "-v0")
        for name in USERS:
            self.run("manage.py", "createsuperuser", "--noinput", "--username", name,
                     "--email", f"{name}@example.com")  # fmt: skip


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DjangoShop]:
    yield from shop_testing.run_shop(DjangoShop, tmp_path_factory)


def test_a_login_through_one_worker_is_seen_by_the_others(shop: DjangoShop) -> None:
    shop_testing.check_login_seen_by_the_other_workers(shop)


def test_a_rate_limit_admits_exactly_n_across_workers_and_holds_across_a_restart(
    shop: DjangoShop,
) -> None:
    shop_testing.check_rate_limit_across_workers(shop)


def test_a_cached_page_survives_a_daemon_restart(shop: DjangoShop) -> None:
    shop_testing.check_cached_page_survives_a_daemon_restart(shop)


def test_a_daemon_restart_during_traffic_costs_no_500s(shop: DjangoShop) -> None:
    shop_testing.check_daemon_restart_during_traffic_costs_no_500s(shop)


def test_logging_out_everywhere_ends_the_users_sessions_in_every_worker(shop: DjangoShop) -> None:
    shop_testing.check_logging_out_everywhere(shop)


def test_the_start_script_runs_larder_beside_the_app_and_stops_both(tmp_path: Path) -> None:
    shop_testing.check_start_script(DjangoShop, tmp_path)
