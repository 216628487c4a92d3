"""The Django session engine (larder_client.django.sessions) against a real daemon: the key
format, login and logout through Django's middleware, merged concurrent writes, expiry,
log out everywhere and the larder_sessions command. Django's own engine-generic tests run in
tests/django_suite (larder_sessions)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import django
import django_settings
import grpc
import pytest
from conftest import Daemon
from django.conf import settings
from django.contrib.auth import SESSION_KEY, login, logout
from django.contrib.auth.signals import user_logged_in
from django.contrib.sessions.backends.base import UpdateError
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.test.utils import override_settings

import larder_client.django
from larder_client import Larder, LarderError
from larder_client.django import sessions
from larder_client.django.sessions import SessionMiddleware, SessionStore

TOKEN = re.compile(r"lds_[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module", autouse=True)
def engine(daemon: Daemon) -> Iterator[None]:
    """Django configured, with this engine on the module's daemon (over its Unix socket)."""
    django_settings.configure()
    installed = list(settings.INSTALLED_APPS)
    for app in django_settings.INSTALLED_APPS:  # in case another module configured Django
        if app not in installed:
            installed.append(app)
    with override_settings(
        INSTALLED_APPS=installed,
        SESSION_ENGINE="larder_client.django.sessions",
        LARDER_SESSIONS={"LOCATION": daemon.unix_target},
    ):
        yield


@pytest.fixture
def larder(daemon: Daemon) -> Iterator[Larder]:
    with Larder(daemon.addr, timeout=5.0) as client:
        yield client


def user(pk: int) -> Any:
    from django.contrib.auth.models import User  # needs the app registry, set up by `engine`

    return User(pk=pk, username=f"user{pk}", password="!")


def new_user_id() -> int:
    return time.time_ns() % 10**12


def saved(values: dict[str, Any]) -> SessionStore:
    store = SessionStore()
    store.update(values)
    store.save()
    return store


def test_the_session_key_is_the_token_and_cookie_safe(daemon: Daemon) -> None:
    store = saved({"cart": [1, 2]})
    key = store.session_key
    assert key is not None and TOKEN.fullmatch(key), key
    assert len(key) == 47 and store._validate_session_key(key)
    assert SessionStore(key).get("cart") == [1, 2]

    # The middleware sends it as is: url-safe base64 needs no quoting in a cookie.
    def view(request: HttpRequest) -> HttpResponse:
        request.session["seen"] = True
        return HttpResponse()

    response = SessionMiddleware(view)(RequestFactory().get("/"))
    morsel = response.cookies[settings.SESSION_COOKIE_NAME]
    assert TOKEN.fullmatch(morsel.value)
    assert f"{settings.SESSION_COOKIE_NAME}={morsel.value};" in morsel.OutputString()


def test_keys_that_are_not_tokens_cost_no_call() -> None:
    # Nothing listens on port 1: a call would fail. Keys of Django's own engines (32 of
    # a-z0-9) and garbage are unknown sessions without one.
    with override_settings(LARDER_SESSIONS={"LOCATION": "127.0.0.1:1", "OPTIONS": {"RETRIES": 0}}):
        for key in ["a" * 32, "someunknownkey", "lds_not/a/token", "x" * 2000]:
            store = SessionStore(key)
            assert store.load() == {} and store.session_key is None
            assert store.exists(key) is False
            store.delete(key)


def test_the_daemon_being_down_is_an_error_not_a_logout() -> None:
    with override_settings(
        LARDER_SESSIONS={
            "LOCATION": "127.0.0.1:1",
            "OPTIONS": {"RETRIES": 0, "SOCKET_TIMEOUT": 2.0},
        }
    ):
        store = SessionStore("lds_" + "A" * 43)
        with pytest.raises(grpc.RpcError) as err:
            store.load()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def no_last_login_update() -> Iterator[None]:
    """login() without the update_last_login receiver (these tests have no user table)."""
    from django.contrib.auth.models import update_last_login

    user_logged_in.disconnect(update_last_login, dispatch_uid="update_last_login")
    try:
        yield
    finally:
        user_logged_in.connect(update_last_login, dispatch_uid="update_last_login")


def request_with(cookie: str | None = None, **meta: str) -> HttpRequest:
    request = RequestFactory().get("/", **meta)
    if cookie is not None:
        request.COOKIES[settings.SESSION_COOKIE_NAME] = cookie
    return request


def run(view: Callable[[HttpRequest], HttpResponse], request: HttpRequest) -> str:
    """The session cookie the middleware sets for ``request`` answered by ``view``."""
    response = SessionMiddleware(view)(request)
    return response.cookies[settings.SESSION_COOKIE_NAME].value


def test_login_creates_the_users_session_and_ends_the_anonymous_one(
    larder: Larder, no_last_login_update: None
) -> None:
    someone = user(new_user_id())
    user_id = str(someone.pk)

    def browse(request: HttpRequest) -> HttpResponse:
        request.session["cart"] = ["book"]
        return HttpResponse()

    anonymous = run(browse, request_with(HTTP_USER_AGENT="Firefox/1", REMOTE_ADDR="192.0.2.7"))
    before = larder.sessions.get(anonymous)
    assert before is not None and before.user_id == "anonymous"

    rotated: list[str] = []

    def sign_in(request: HttpRequest) -> HttpResponse:
        # login() calls cycle_key() (RotateSession) before it sets _auth_user_id...
        login(request, someone, backend="django.contrib.auth.backends.ModelBackend")
        rotated.append(request.session.session_key or "")
        return HttpResponse()

    signed_in = run(sign_in, request_with(anonymous, HTTP_USER_AGENT="Firefox/2"))
    # ... and save() gives the session to the user: a new Larder session with the data.
    assert TOKEN.fullmatch(signed_in) and signed_in not in (anonymous, rotated[0])
    for dead in (anonymous, rotated[0]):
        assert larder.sessions.get(dead) is None
    session = larder.sessions.get(signed_in)
    assert session is not None and session.user_id == user_id
    assert session.session_id != before.session_id
    assert session.data["cart"] == '["book"]' and session.data[SESSION_KEY] == f'"{user_id}"'
    assert (session.device_info, session.ip) == ("Firefox/2", "127.0.0.1")
    listed = larder.sessions.list(user_id).sessions
    assert [s.session_id for s in listed] == [session.session_id]

    # Later requests keep the session; logging out revokes it.
    def sign_out(request: HttpRequest) -> HttpResponse:
        assert request.session[SESSION_KEY] == user_id
        logout(request)
        return HttpResponse()

    SessionMiddleware(sign_out)(request_with(signed_in))
    assert larder.sessions.get(signed_in) is None
    assert larder.sessions.list(user_id).sessions == []


def test_cycle_key_rotates_the_same_session(larder: Larder) -> None:
    store = saved({"a": 1})
    key, session_id = store.session_key, store.session_id
    store.cycle_key()
    assert store.session_key != key and store.session_id == session_id
    assert larder.sessions.get(key or "") is None
    assert SessionStore(store.session_key).get("a") == 1


def test_concurrent_writes_of_different_keys_are_both_kept(larder: Larder) -> None:
    key = saved({"theme": "dark", "draft": "x", "count": 0}).session_key
    first, second = SessionStore(key), SessionStore(key)
    # Both requests read the session before either writes (whole-blob engines lose one).
    assert first["theme"] == "dark" and second["draft"] == "x"
    first["theme"] = "light"
    first["count"] = 1
    second["cart"] = ["book"]
    del second["draft"]
    first.save()
    second.save()
    assert dict(SessionStore(key).items()) == {"theme": "light", "count": 1, "cart": ["book"]}
    session = larder.sessions.get(key or "")
    assert session is not None and set(session.data) == {"theme", "count", "cart"}


def test_data_other_programs_wrote_is_left_alone(larder: Larder) -> None:
    store = saved({"a": 1})
    key = store.session_key or ""
    larder.sessions.update(key, {"legacy": "not json", "shared": '"hello"'})
    again = SessionStore(key)
    assert dict(again.items()) == {"a": 1, "shared": "hello"}
    again.clear()
    again.save()
    session = larder.sessions.get(key)
    assert session is not None and session.data == {"legacy": "not json"}


def test_set_expiry_sets_the_idle_ttl(larder: Larder) -> None:
    store = saved({"a": 1})
    assert store._server is not None
    assert store._server.idle_ttl_ms == settings.SESSION_COOKIE_AGE * 1000
    first_key = store.session_key
    # The idle TTL is fixed at creation: a new one means a new session, with the same data.
    store.set_expiry(2)
    store.save()
    assert store.session_key != first_key and larder.sessions.get(first_key or "") is None
    session = larder.sessions.get(store.session_key or "")
    assert session is not None and session.idle_ttl_ms == 2000 and session.data["a"] == "1"
    assert SessionStore(store.session_key).get("a") == 1
    time.sleep(2.3)
    gone = SessionStore(store.session_key)
    assert gone.load() == {} and gone.session_key is None

    # Saving with an unchanged expiry keeps the session.
    kept = saved({"b": 2})
    kept.set_expiry(300)
    kept.save()
    key = kept.session_key
    kept["b"] = 3
    kept.save()
    assert kept.session_key == key


def test_a_fixed_expiry_date_is_not_extended_by_use(larder: Larder) -> None:
    store = SessionStore()
    store["a"] = 1
    store.set_expiry(timedelta(seconds=120))
    store.save()
    session = larder.sessions.get(store.session_key or "")
    assert session is not None
    assert session.idle_expires_at_ms == session.absolute_expires_at_ms
    assert 118_000 <= session.absolute_expires_at_ms - session.created_at_ms <= 120_000
    key = store.session_key
    store["a"] = 2
    store.save()
    assert store.session_key == key

    # An expiry in the past ends the session at save().
    store.set_expiry(-10)
    store.save()
    assert larder.sessions.get(key or "") is None


def test_absolute_age_and_the_anonymous_user_id_are_settings(
    daemon: Daemon, larder: Larder
) -> None:
    with override_settings(
        LARDER_SESSIONS={
            "LOCATION": daemon.addr,
            "ABSOLUTE_AGE": 600,
            "ANONYMOUS_USER_ID": "guest",
        }
    ):
        store = saved({"a": 1})
    session = larder.sessions.get(store.session_key or "")
    assert session is not None and session.user_id == "guest"
    assert session.absolute_expires_at_ms - session.created_at_ms == 600_000


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"LOCATON": "x", "TIMEOUT": 1}, "unknown key(s) ['LOCATON', 'TIMEOUT']"),
        ({"ABSOLUTE_AGE": -1}, "ABSOLUTE_AGE must be a positive number"),
        ({"ANONYMOUS_USER_ID": ""}, "ANONYMOUS_USER_ID must be a string of 1 to 256 bytes"),
        ({"OPTIONS": {"TOKENN": "x"}}, "unknown connection option(s) ['TOKENN']"),
    ],
)
def test_bad_settings_are_named(value: dict[str, Any], message: str) -> None:
    with override_settings(LARDER_SESSIONS=value), pytest.raises(ImproperlyConfigured) as err:
        SessionStore("lds_" + "A" * 43).load()
    assert "LARDER_SESSIONS" in str(err.value) and message in str(err.value)


def test_a_save_after_a_logout_elsewhere_is_refused() -> None:
    store = saved({"a": 1})
    SessionStore(store.session_key).flush()
    store["a"] = 2
    with pytest.raises(UpdateError):
        store.save()


def test_revoke_user_sessions(larder: Larder) -> None:
    someone = user(new_user_id())
    user_id = str(someone.pk)
    stores = [saved({SESSION_KEY: user_id, "n": n}) for n in range(3)]
    other = saved({SESSION_KEY: user_id + "0"})
    current = SessionStore(stores[0].session_key)  # request.session of the request asking

    assert larder_client.django.revoke_user_sessions(someone, except_current=current) == 2
    assert [s.session_id for s in larder.sessions.list(user_id).sessions] == [stores[0].session_id]
    assert larder.sessions.get(other.session_key or "") is not None
    assert sessions.revoke_user_sessions(user_id) == 1
    assert larder.sessions.list(user_id).sessions == []
    assert sessions.revoke_user_sessions(int(user_id)) == 0
    with pytest.raises(ValueError, match="anonymous"):
        sessions.revoke_user_sessions(user(1).__class__())  # no pk


@pytest.mark.skipif(
    django.VERSION < (5, 0), reason="SessionBase's async API (aset, aget, ...) is Django 5.0's"
)
def test_async_methods_use_the_asyncio_client(
    larder: Larder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_blocking_client(*args: Any) -> Any:
        raise AssertionError("the blocking client was used")

    monkeypatch.setattr(sessions, "sync_client", no_blocking_client)

    async def flow() -> tuple[str, str]:
        store = SessionStore()
        await store.aset("a", 1)
        await store.asave()
        first = store.session_key or ""
        again = SessionStore(first)
        assert await again.aget("a") == 1
        await again.acycle_key()
        assert not await again.aexists(first)
        await again.aset(SESSION_KEY, "7")
        await again.asave()
        assert await sessions.arevoke_user_sessions("7", except_current=again) == 0
        return first, again.session_key or ""

    first, last = asyncio.run(flow())
    monkeypatch.undo()
    assert larder.sessions.get(first) is None
    session = larder.sessions.get(last)
    assert session is not None and session.user_id == "7" and session.data["a"] == "1"
    larder.sessions.revoke(last)


def test_the_larder_sessions_command(larder: Larder) -> None:
    user_id = str(new_user_id())
    tokens = []
    for agent in ("Firefox\x1b[2J", "curl/8"):
        token, _ = larder.sessions.create(user_id, device_info=agent, ip="198.51.100.4")
        tokens.append(token)
    ids = [s.session_id for s in larder.sessions.list(user_id).sessions]

    def command(*args: str) -> str:
        out = StringIO()
        call_command("larder_sessions", *args, stdout=out)
        return out.getvalue()

    listed = command("list", user_id)
    assert listed.splitlines()[0].split() == [
        "SESSION_ID",
        "CREATED",
        "LAST_SEEN",
        "IDLE_EXPIRES",
        "EXPIRES",
        "IP",
        "DEVICE",
    ]
    assert all(i in listed for i in ids) and "198.51.100.4" in listed and "curl/8" in listed
    assert "Firefox?[2J" in listed  # control characters of the client's text are not printed
    assert not any(t in listed for t in tokens) and "lds_" not in listed

    assert command("revoke", user_id, "--except", ids[1]) == (
        f"Revoked 1 session(s) of user {user_id!r}, kept {ids[1]}.\n"
    )
    assert command("revoke", "--session", ids[1]) == f"Revoked session {ids[1]}.\n"
    assert "was not live" in command("revoke", "--session", ids[1])
    assert command("list", user_id) == f"No live sessions of user {user_id!r}.\n"
    for bad in (["revoke"], ["revoke", user_id, "--session", ids[0]], ["list"]):
        with pytest.raises(CommandError):
            command(*bad)
    with pytest.raises(CommandError, match="session_id"):
        command("revoke", "--session", "not-an-id")


def test_data_over_the_daemons_limits_fails_at_save() -> None:
    store = SessionStore()
    store["big"] = "x" * (64 << 10)
    with pytest.raises(LarderError, match="big"):
        store.save()


def test_sessions_of_the_engine_used_before_are_taken_over(daemon: Daemon, larder: Larder) -> None:
    from django.contrib.sessions.backends.cache import SessionStore as CacheSession

    old = CacheSession()
    old.update({SESSION_KEY: "5", "cart": ["book"]})
    old.save()
    old_key = old.session_key or ""
    assert len(old_key) == 32

    def view(request: HttpRequest) -> HttpResponse:
        assert request.session[SESSION_KEY] == "5"
        return HttpResponse()

    # Without MIGRATE_FROM the old cookie is an unknown session: the user logs in again.
    assert SessionStore(old_key).load() == {}
    with override_settings(
        LARDER_SESSIONS={
            "LOCATION": daemon.addr,
            "MIGRATE_FROM": "django.contrib.sessions.backends.cache",
        }
    ):
        new_key = run(view, request_with(old_key))
        assert CacheSession(old_key).load() == {}  # gone from the cache: taken over once
        assert SessionStore(old_key).load() == {}
    assert TOKEN.fullmatch(new_key)
    session = larder.sessions.get(new_key)
    assert session is not None and session.user_id == "5" and session.data["cart"] == '["book"]'
    larder.sessions.revoke(new_key)
