"""larder_client.flask.sessions (Flask's SessionInterface on SessionService) against a real
daemon."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

flask = pytest.importorskip("flask")
pytest.importorskip("flask_caching")  # larder_client.flask imports it

from conftest import Daemon
from flask import session

from larder_client import Larder
from larder_client.flask import (
    ConfigError,
    LarderSessionInterface,
    login_session,
    logout_session,
    revoke_user_sessions,
    rotate_session,
)
from larder_client.flask.sessions import looks_like_token


def make_app(target: str, **config: Any) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(LARDER_SESSION_TARGET=target, **config)
    LarderSessionInterface().init_app(app)

    @app.get("/")
    def read() -> dict[str, Any]:
        return {"values": dict(session), "user": session.user_id}  # type: ignore[attr-defined]

    @app.post("/set/<key>")
    def set_value(key: str) -> dict[str, Any]:
        session[key] = flask.request.get_json()
        return {"values": dict(session)}

    @app.post("/append/<key>/<int:item>")
    def append(key: str, item: int) -> dict[str, Any]:
        session.setdefault(key, []).append(item)  # in place: no __setitem__ after the first
        return {"values": dict(session)}

    @app.post("/login/<user>")
    def login(user: str) -> dict[str, Any]:
        login_session(user)
        return {"user": session.user_id}  # type: ignore[attr-defined]

    @app.post("/rotate")
    def rotate() -> str:
        rotate_session()
        return "ok"

    @app.post("/clear")
    def clear() -> str:
        session.clear()
        return "ok"

    @app.post("/logout")
    def logout() -> str:
        logout_session()
        return "ok"

    @app.post("/everywhere")
    def everywhere() -> dict[str, int]:
        keep = flask.request.args.get("keep") == "1"
        user = session.user_id  # type: ignore[attr-defined]
        return {"ended": revoke_user_sessions(user, except_current=keep)}

    @app.get("/untouched")
    def untouched() -> str:
        return "no session here"

    return app


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[Larder]:
    with Larder(daemon.addr) as client:
        yield client


@pytest.fixture
def app(daemon: Daemon) -> flask.Flask:
    return make_app(daemon.unix_target)


def token_of(client: Any, name: str = "session") -> str | None:
    cookie = client.get_cookie(name)
    return None if cookie is None else cookie.value


def test_the_first_write_creates_a_session_and_later_requests_read_it(
    app: flask.Flask, raw: Larder
) -> None:
    client = app.test_client()
    r = client.get("/")
    assert r.json == {"values": {}, "user": None}
    assert "Set-Cookie" not in r.headers, "no session is stored before a write"
    assert client.post("/set/cart", json=[1, 2]).status_code == 200
    token = token_of(client)
    assert looks_like_token(token)
    stored = raw.sessions.get(token)
    assert stored is not None
    assert stored.user_id == "anonymous"
    assert stored.data == {"cart": "[1,2]"}  # one data key per session key, JSON
    assert stored.idle_ttl_ms == 31 * 24 * 3600 * 1000  # PERMANENT_SESSION_LIFETIME
    client.post("/append/cart/3")  # changed in place
    assert raw.sessions.get(token).data == {"cart": "[1,2,3]"}
    assert client.get("/").json == {"values": {"cart": [1, 2, 3]}, "user": None}
    assert token_of(client) == token, "the token stays while nothing logs in"
    assert app.test_client().get("/").json["values"] == {}, "another browser has its own"


def test_flasks_tagged_json_round_trips(app: flask.Flask, raw: Larder) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    with app.test_request_context():
        s = app.session_interface.open_session(app, flask.request)
        s["pair"] = (1, "a")
        s["blob"] = b"\x00\xff"
        s["when"] = when
        s["id"] = uuid.UUID(int=7)
        app.session_interface.save_session(app, s, flask.Response())
        token = s.token
    data = raw.sessions.get(token).data
    assert data["pair"] == '{" t":[1,"a"]}'  # Flask's tags
    client = app.test_client()
    client.set_cookie("session", token)
    with client:
        client.get("/untouched")
        assert session["pair"] == (1, "a")
        assert session["blob"] == b"\x00\xff"
        assert session["when"] == when
        assert session["id"] == uuid.UUID(int=7)


def test_data_other_programs_wrote_is_left_out_and_left_alone(
    app: flask.Flask, raw: Larder
) -> None:
    data = {"plain": "not json", "odd": '{" t": 5}'}
    token, _ = raw.sessions.create("anonymous", data, idle_ttl_ms=31 * 24 * 3600 * 1000)
    client = app.test_client()
    client.set_cookie("session", token)
    assert client.post("/set/mine", json=1).json == {"values": {"mine": 1}}
    assert raw.sessions.get(token).data == {**data, "mine": "1"}


def test_only_the_diff_is_saved_so_concurrent_changes_to_other_keys_both_stay(
    daemon: Daemon, raw: Larder
) -> None:
    app = make_app(daemon.unix_target)
    both_read = threading.Barrier(2, timeout=10)

    @app.post("/slow/<key>")
    def slow(key: str) -> str:
        dict(session)  # loaded by both requests before either saves
        both_read.wait()
        session[key] = key.upper()
        return "ok"

    first = app.test_client()
    first.post("/set/base", json=0)
    token = token_of(first)
    clients = [app.test_client() for _ in range(2)]
    for c in clients:
        c.set_cookie("session", token)
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c, k=k: answers.append(c.post(f"/slow/{k}").status_code))
        for c, k in zip(clients, ("left", "right"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert answers == [200, 200]
    assert raw.sessions.get(token).data == {"base": "0", "left": '"LEFT"', "right": '"RIGHT"'}


def test_the_cookie_follows_flasks_settings(daemon: Daemon) -> None:
    app = make_app(
        daemon.unix_target,
        SESSION_COOKIE_NAME="shop_session",
        SESSION_COOKIE_DOMAIN="shop.example",
        SESSION_COOKIE_PATH="/app",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=2),
    )

    @app.post("/permanent")
    def permanent() -> str:
        session.permanent = True
        return "ok"

    client = app.test_client()
    cookie = client.post("/set/a", json=1).headers["Set-Cookie"]
    name, _, rest = cookie.partition("=")
    assert name == "shop_session"
    token, *flags = [part.strip() for part in rest.split(";")]
    assert looks_like_token(token)
    assert {"Domain=shop.example", "Path=/app", "Secure", "HttpOnly", "SameSite=Strict"} <= set(
        flags
    )
    assert not any(f.startswith("Expires") for f in flags), "not permanent: a browser cookie"
    with Larder(daemon.addr) as raw:
        assert raw.sessions.get(token).idle_ttl_ms == 2 * 3600 * 1000
    again = app.test_client()
    again.set_cookie("shop_session", token, domain="localhost")
    r = again.post("/permanent")
    assert any(f.strip().startswith("Expires=") for f in r.headers["Set-Cookie"].split(";"))
    assert "Cookie" in r.headers["Vary"]


def test_login_makes_a_new_session_under_the_user_and_the_old_token_dies(
    app: flask.Flask, raw: Larder
) -> None:
    client = app.test_client()
    client.post("/set/cart", json=[5])
    anonymous = token_of(client)
    assert client.post("/login/ada").json == {"user": "ada"}
    token = token_of(client)
    assert token != anonymous
    assert raw.sessions.get(anonymous) is None, "the old token stopped working"
    stored = raw.sessions.get(token)
    assert stored.user_id == "ada"
    assert stored.data == {"cart": "[5]", "_user_id": '"ada"'}
    assert client.get("/").json == {"values": {"cart": [5], "_user_id": "ada"}, "user": "ada"}
    client.post("/rotate")
    rotated = token_of(client)
    assert rotated != token and raw.sessions.get(token) is None
    assert raw.sessions.get(rotated).session_id == stored.session_id


def test_setting_the_user_key_as_flask_login_does_moves_the_session(
    app: flask.Flask, raw: Larder
) -> None:
    client = app.test_client()
    client.post("/set/_user_id", json="7")  # flask_login.login_user writes session["_user_id"]
    first = token_of(client)
    assert raw.sessions.get(first).user_id == "7"
    client.post("/set/_user_id", json="8")
    second = token_of(client)
    assert second != first and raw.sessions.get(first) is None
    assert raw.sessions.get(second).user_id == "8"


def test_clear_and_logout_end_the_session_and_delete_the_cookie(
    app: flask.Flask, raw: Larder
) -> None:
    for how in ("/clear", "/logout"):
        client = app.test_client()
        client.post("/login/bob")
        token = token_of(client)
        r = client.post(how)
        assert "session=;" in r.headers["Set-Cookie"]
        assert token_of(client) is None
        assert raw.sessions.get(token) is None
        assert client.get("/").json == {"values": {}, "user": None}


def test_log_out_everywhere(app: flask.Flask, raw: Larder) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    laptop, phone, tablet = (app.test_client() for _ in range(3))
    for c in (laptop, phone, tablet):
        c.post(f"/login/{user}")
    tokens = [token_of(c) for c in (laptop, phone, tablet)]
    assert len(raw.sessions.list(user).sessions) == 3
    assert laptop.post("/everywhere?keep=1").json == {"ended": 2}
    assert laptop.get("/").json["user"] == user
    assert phone.get("/").json["user"] is None
    assert raw.sessions.get(tokens[2]) is None
    r = laptop.post("/everywhere")
    assert r.json == {"ended": 1}
    assert "session=;" in r.headers["Set-Cookie"]
    assert raw.sessions.list(user).sessions == []


def test_a_session_revoked_during_a_request_is_not_brought_back(
    daemon: Daemon, raw: Larder
) -> None:
    app = make_app(daemon.unix_target)

    @app.post("/revoked-meanwhile")
    def revoked_meanwhile() -> str:
        session["seen"] = True
        raw.sessions.revoke(flask.request.cookies["session"])  # a logout elsewhere
        session["more"] = 1
        return "ok"

    client = app.test_client()
    client.post("/login/eve")
    token = token_of(client)
    r = client.post("/revoked-meanwhile")
    assert r.status_code == 200
    assert "session=;" in r.headers["Set-Cookie"]
    assert raw.sessions.get(token) is None
    assert raw.sessions.list("eve").sessions == [], "nothing was created in its place"


@pytest.mark.parametrize("cookie", ["garbage", "lds_" + "A" * 43])
def test_a_garbage_or_unknown_cookie_is_no_session(app: flask.Flask, cookie: str) -> None:
    client = app.test_client()
    client.set_cookie("session", cookie)
    r = client.get("/untouched")
    assert "Set-Cookie" not in r.headers, "a request that does not use the session leaves it"
    r = client.get("/")
    assert r.json == {"values": {}, "user": None}
    assert "session=;" in r.headers["Set-Cookie"], "the dead cookie is deleted"
    client.set_cookie("session", cookie)
    client.post("/set/x", json=1)
    assert token_of(client) != cookie and looks_like_token(token_of(client))


def test_the_daemon_down_is_a_503_and_not_a_logout() -> None:
    d = Daemon()
    try:
        app = make_app(d.unix_target, LARDER_SESSION_RETRIES=0)
        client = app.test_client()
        client.post("/login/zoe")
        token = token_of(client)
        assert d.stop() == 0
        r = client.get("/")
        assert r.status_code == 503
        assert "Set-Cookie" not in r.headers, "the cookie is left alone"
        assert token_of(client) == token
        assert client.post("/set/a", json=1).status_code == 503
        assert client.get("/untouched").status_code == 200, "requests without the session"
    finally:
        d.cleanup()


def test_settings_are_checked_at_init_app(daemon: Daemon) -> None:
    app = flask.Flask(__name__)
    app.config["LARDER_SESSION_TOKN"] = "x"
    with pytest.raises(ConfigError, match="LARDER_SESSION_TOKN"):
        LarderSessionInterface().init_app(app)
    app = flask.Flask(__name__)
    app.config.update(LARDER_SESSION_TARGET="larder.example:7379", LARDER_SESSION_TOKEN="t")
    with pytest.raises(ConfigError, match="LARDER_SESSION_TLS"):
        LarderSessionInterface().init_app(app)
    app = flask.Flask(__name__)
    app.config["LARDER_SESSION_SOCKET_TIMEOUT"] = -1
    with pytest.raises(ConfigError, match="LARDER_SESSION_SOCKET_TIMEOUT"):
        LarderSessionInterface().init_app(app)
    with pytest.raises(ConfigError, match="ABSOLUTE_LIFETIME"):
        LarderSessionInterface(flask.Flask(__name__), absolute_lifetime=0)
    app = flask.Flask(__name__)
    LarderSessionInterface(app, target=daemon.unix_target, absolute_lifetime=dt.timedelta(hours=1))
    with app.test_request_context():
        s = app.session_interface.open_session(app, flask.request)
        s["a"] = 1
        app.session_interface.save_session(app, s, flask.Response())
        server = s.server
    assert server.absolute_expires_at_ms - server.created_at_ms == 3600 * 1000


def test_a_new_lifetime_moves_the_session_at_its_next_write(daemon: Daemon, raw: Larder) -> None:
    app = make_app(daemon.unix_target, PERMANENT_SESSION_LIFETIME=600)
    client = app.test_client()
    client.post("/set/a", json=1)
    first = token_of(client)
    assert raw.sessions.get(first).idle_ttl_ms == 600_000
    client.get("/")  # a read changes nothing
    assert token_of(client) == first
    app.config["PERMANENT_SESSION_LIFETIME"] = dt.timedelta(minutes=20)
    client.post("/set/b", json=2)
    second = token_of(client)
    assert second != first and raw.sessions.get(first) is None
    moved = raw.sessions.get(second)
    assert moved.idle_ttl_ms == 1_200_000
    assert moved.data == {"a": "1", "b": "2"}


def test_revoke_user_sessions_outside_a_request(app: flask.Flask, raw: Larder) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    clients = [app.test_client() for _ in range(2)]
    for c in clients:
        c.post(f"/login/{user}")
    with app.app_context():
        assert revoke_user_sessions(user, app=app) == 2
    assert [c.get("/").json["user"] for c in clients] == [None, None]
    assert raw.sessions.list(user).sessions == []
