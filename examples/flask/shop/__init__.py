"""The shop on Flask: a login, a cached catalogue page and a rate-limited chat endpoint, with
everything Redis would have done in Larder.

- sessions: ``larder_client.flask.LarderSessionInterface`` (server-side, in SessionService);
- the cached page: Flask-Caching with ``CACHE_TYPE="larder_client.flask.LarderCache"``;
- the rate limit: Flask-Limiter with ``storage_uri="larder+unix://..."`` (``larder_client.limits``).

Every answer names the worker process that made it (``X-Worker``), so the tests can see that
what one worker did (a login, a cached page, a rate-limit count) is seen by the others.
Settings come from the environment: ``LARDER_LOCATION`` (default the systemd unit's socket,
``unix:/run/larder/larder.sock``), ``SHOP_DB``, ``SHOP_CHAT_LIMIT``, ``SHOP_SECURE_COOKIES``.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import time
from datetime import timedelta
from typing import Any

import click
import larder_client.limits  # noqa: F401  (registers larder:// and larder+unix:// with limits)
from flask import Flask, Response, abort, jsonify, request, session
from flask_caching import Cache
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from larder_client.flask import LarderSessionInterface, login_session, revoke_user_sessions

from . import users

HERE = os.path.dirname(os.path.abspath(__file__))


def storage_uri(location: str, namespace: str) -> str:
    """The ``limits`` storage URI of a client target (``unix:/path`` or ``host:port``)."""
    if location.startswith("unix:"):
        return f"larder+unix://{location[len('unix:') :]}?namespace={namespace}"
    return f"larder://{location}?namespace={namespace}"


def create_app() -> Flask:
    location = os.environ.get("LARDER_LOCATION", "unix:/run/larder/larder.sock")
    app = Flask(__name__)
    app.config.update(
        SHOP_DB=os.environ.get("SHOP_DB", os.path.join(HERE, "..", "shop.db")),
        CHAT_LIMIT=int(os.environ.get("SHOP_CHAT_LIMIT", "60")),
        # Sessions in Larder's SessionService: the cookie holds only the token.
        LARDER_SESSION_TARGET=location,
        PERMANENT_SESSION_LIFETIME=timedelta(days=14),  # the idle TTL, sliding with use
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=os.environ.get("SHOP_SECURE_COOKIES") == "1",
        # The cache: shared by every worker, kept across restarts. IGNORE_EXCEPTIONS keeps
        # pages up (uncached) while the daemon restarts.
        CACHE_TYPE="larder_client.flask.LarderCache",
        CACHE_LARDER_TARGET=location,
        CACHE_LARDER_NAMESPACE="shop",
        CACHE_KEY_PREFIX="shop:",
        CACHE_DEFAULT_TIMEOUT=300,
        CACHE_LARDER_IGNORE_EXCEPTIONS=True,
    )
    LarderSessionInterface().init_app(app)
    cache = Cache(app)

    def who() -> str:
        """The rate limit's key: the user, or the client's address before login."""
        user = session.user_id  # type: ignore[attr-defined]
        return f"user:{user}" if user else f"ip:{get_remote_address()}"

    limiter = Limiter(
        who,
        app=app,
        storage_uri=storage_uri(location, "shop-limits"),
        strategy="moving-window",  # exact: N in any 60 s, whatever the window's alignment
        headers_enabled=True,  # X-RateLimit-Limit, -Remaining, -Reset, and Retry-After
    )

    def answer(body: dict[str, Any], status: int = 200) -> Response:
        response = jsonify(body)
        response.status_code = status
        return response

    @app.after_request
    def name_the_worker(response: Response) -> Response:
        response.headers["X-Worker"] = str(os.getpid())
        return response

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(error: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        retry_after = max(1, math.ceil(current.reset_at - time.time())) if current else 1
        response = answer(
            {
                "error": "rate_limited",
                "message": f"at most {error.description}",
                "retry_after": retry_after,
            },
            status=429,
        )
        response.headers["Retry-After"] = str(retry_after)
        return response

    def check_csrf() -> None:
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRFToken", "")
        expected = session.get("csrf_token", "")
        if not expected or not hmac.compare_digest(sent, expected):
            abort(403, "CSRF token missing or wrong")

    @app.get("/")
    def home() -> Response:
        return answer({"user": session.user_id})  # type: ignore[attr-defined]

    @app.route("/login/", methods=["GET", "POST"])
    def login() -> Response:
        """GET: the CSRF token for the form; POST username and password: logs in."""
        if request.method == "GET":
            if "csrf_token" not in session:
                session["csrf_token"] = secrets.token_urlsafe(32)
            return answer({"csrf_token": session["csrf_token"]})
        check_csrf()
        name = request.form.get("username", "")
        if not users.authenticate(app.config["SHOP_DB"], name, request.form.get("password", "")):
            return answer({"error": "invalid_login"}, status=403)
        session.permanent = True  # the cookie lasts PERMANENT_SESSION_LIFETIME, not the browser
        login_session(name)  # a new session (and token) under the user's id
        return answer({"user": name})

    @app.post("/logout-everywhere/")
    def logout_everywhere() -> Response:
        """Ends every session of the user, on every device, in every worker."""
        user = session.user_id  # type: ignore[attr-defined]
        if user is None:
            return answer({"error": "not_logged_in"}, status=403)
        check_csrf()
        return answer({"ended": revoke_user_sessions(user)})

    @app.get("/catalogue/")
    @cache.cached(timeout=300, key_prefix="catalogue-page")
    def catalogue() -> str:
        """A page that is expensive to build, cached for five minutes for every worker."""
        return f"<h1>Catalogue</h1><p>built at {time.time():.6f} by worker {os.getpid()}</p>"

    @app.get("/api/v1/ai/chat")
    @limiter.limit(lambda: f"{app.config['CHAT_LIMIT']} per minute")
    def chat() -> Response:
        return answer({"reply": "Hello! How can I help?"})

    @app.cli.command("init-db")
    def init_db() -> None:
        """Creates the users table."""
        users.init_db(app.config["SHOP_DB"])

    @app.cli.command("add-user")
    @click.argument("name")
    @click.password_option(envvar="SHOP_USER_PASSWORD")
    def add_user(name: str, password: str) -> None:
        """Adds a user (or sets their password)."""
        users.add_user(app.config["SHOP_DB"], name, password)

    return app
