"""Flask-Limiter and slowapi with ``storage_uri="larder://..."``, against a real daemon.

Each app allows 3 requests a minute per client address: the fourth answer is a 429 carrying
the ``X-RateLimit-*`` and ``Retry-After`` headers the extension sets, from the counts the
Larder storage keeps.
"""

import time
import uuid
from typing import Any

import pytest

pytest.importorskip("limits", reason="the limits storages need limits (pip install limits)")

from larder_client.limits import LarderStorage  # importing it registers larder://


def _uri(daemon: Any) -> str:
    return f"larder://{daemon.addr}?namespace=e2e-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_flask_limiter(daemon: Any, strategy: str) -> None:
    flask = pytest.importorskip("flask")
    flask_limiter = pytest.importorskip("flask_limiter")
    from flask_limiter.util import get_remote_address

    app = flask.Flask(__name__)
    limiter = flask_limiter.Limiter(
        get_remote_address,
        app=app,
        storage_uri=_uri(daemon),
        strategy=strategy,
        default_limits=["3 per minute"],
        headers_enabled=True,
    )

    @app.route("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    answers = [client.get("/") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    denied = answers[3]
    assert 0 < int(denied.headers["Retry-After"]) <= 60
    reset = int(denied.headers["X-RateLimit-Reset"])  # Unix seconds, as Flask-Limiter sends
    assert time.time() - 1 <= reset <= time.time() + 61
    # Another address has its own budget.
    assert client.get("/", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 200
    assert isinstance(limiter.storage, LarderStorage)
    assert limiter.storage.check()


def test_slowapi(daemon: Any) -> None:
    fastapi = pytest.importorskip("fastapi")
    slowapi = pytest.importorskip("slowapi")
    from fastapi.testclient import TestClient
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    limiter = slowapi.Limiter(
        key_func=get_remote_address, storage_uri=_uri(daemon), headers_enabled=True
    )
    app = fastapi.FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, slowapi._rate_limit_exceeded_handler)

    # Annotations are evaluated here (no ``from __future__ import annotations`` in this
    # module), so FastAPI sees the Request and Response classes themselves.
    @app.get("/")
    @limiter.limit("3/minute")
    async def index(request: fastapi.Request, response: fastapi.Response) -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        answers = [client.get("/") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    assert 0 < int(answers[3].headers["Retry-After"]) <= 60
    assert "Rate limit exceeded" in answers[3].text
    assert isinstance(limiter._storage, LarderStorage)
