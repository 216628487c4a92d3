"""larder_client.starlette against a real daemon: sessions and rate limits in Starlette and
FastAPI apps, driven through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
from conftest import Daemon, _run
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from larder_client import aio
from larder_client.starlette import (
    ConfigError,
    Limit,
    RateLimit,
    RateLimitMiddleware,
    SessionMiddleware,
    add_rate_limit_handler,
)

CONFIG = """
[ratelimit.policies.ai_chat]
limit = 3
period = "1m"
algorithm = "sliding_window"
"""


@pytest.fixture(scope="module")
def policy_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose config file defines the policy ai_chat (3 per minute)."""
    config = tmp_path_factory.mktemp("larder-config") / "larder.toml"
    config.write_text(CONFIG)
    yield from _run(["--config", str(config)])


@pytest.fixture(scope="module")
def stopped_addr() -> Iterator[str]:
    """The address of a daemon that was started and stopped: nothing listens there."""
    daemon = Daemon()
    try:
        addr = daemon.addr
        assert daemon.stop() == 0
        yield addr
    finally:
        daemon.cleanup()


@pytest.fixture
async def larder(policy_daemon: Daemon) -> AsyncIterator[aio.Larder]:
    async with aio.Larder(policy_daemon.addr, timeout=5.0) as client:
        yield client


@pytest.fixture
async def down() -> AsyncIterator[Any]:
    """Makes clients of the stopped daemon (one attempt, short deadline)."""
    made: list[aio.Larder] = []

    def make(addr: str) -> aio.Larder:
        made.append(aio.Larder(addr, timeout=1.0, retries=0))
        return made[-1]

    yield make
    for client in made:
        await client.close()


def http(app: Any, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


def random_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


# --- sessions -------------------------------------------------------------------------------


def set_cookies(response: httpx.Response) -> list[SimpleCookie]:
    cookies = []
    for value in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(value)
        cookies.append(cookie)
    return cookies


def new_token(response: httpx.Response, name: str = "session") -> str | None:
    """The token a response's Set-Cookie gives, "" when it deletes the cookie, None without."""
    found = [c[name] for c in set_cookies(response) if name in c]
    assert len(found) <= 1, response.headers.get_list("set-cookie")
    if not found:
        return None
    return found[0].value


def session_app(client: aio.Larder, **options: Any) -> Starlette:
    arrived: list[asyncio.Event] = []
    both = asyncio.Event()

    async def read(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    async def write(request: Request) -> JSONResponse:
        changes = await request.json()
        for key, value in changes.items():
            if value is None:
                request.session.pop(key, None)
            else:
                request.session[key] = value
        return JSONResponse(dict(request.session))

    async def clear(request: Request) -> JSONResponse:
        request.session.clear()
        return JSONResponse({})

    async def write_together(request: Request) -> JSONResponse:
        # Both requests have read the session before either writes.
        assert "a" in request.session
        arrived.append(asyncio.Event())
        if len(arrived) == 2:
            both.set()
        await both.wait()
        request.session[request.path_params["key"]] = "changed"
        return JSONResponse({})

    async def login(request: Request) -> JSONResponse:
        await request.state.session.login(request.path_params["user"])
        return JSONResponse({"user_id": request.state.session.user_id})

    async def logout(request: Request) -> JSONResponse:
        await request.state.session.logout()
        return JSONResponse({})

    async def logout_everywhere(request: Request) -> JSONResponse:
        keep = request.query_params.get("keep") == "1"
        ended = await request.state.session.logout_everywhere(keep_current=keep)
        return JSONResponse({"ended": ended})

    async def whoami(request: Request) -> JSONResponse:
        control = request.state.session
        return JSONResponse({"user_id": control.user_id, "session_id": control.session_id})

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/read", read),
            Route("/write", write, methods=["POST"]),
            Route("/clear", clear, methods=["POST"]),
            Route("/together/{key}", write_together, methods=["POST"]),
            Route("/login/{user}", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/logout-everywhere", logout_everywhere, methods=["POST"]),
            Route("/whoami", whoami),
            Route("/plain", plain),
        ]
    )
    app.add_middleware(SessionMiddleware, client=client, **options)
    return app


def cookie(token: str, name: str = "session") -> dict[str, str]:
    return {"cookie": f"{name}={token}"}


async def test_session_created_read_and_updated_by_diff(larder: aio.Larder) -> None:
    async with http(session_app(larder)) as web:
        r = await web.get("/read")
        assert r.json() == {} and "set-cookie" not in r.headers  # nothing written: no session

        r = await web.post("/write", json={"a": 1, "cart": [1, "two"], "name": "Zoë"})
        token = new_token(r)
        assert token is not None and token.startswith("lds_") and len(token) == 47
        session = await larder.sessions.get(token)
        assert session is not None and session.user_id == "anonymous"
        assert session.data == {"a": "1", "cart": '[1,"two"]', "name": '"Zoë"'}
        assert session.idle_ttl_ms == 14 * 24 * 3600 * 1000
        assert session.ip == "127.0.0.1"

        r = await web.get("/read", headers=cookie(token))
        assert r.json() == {"a": 1, "cart": [1, "two"], "name": "Zoë"}
        assert new_token(r) == token  # used: the cookie is sent again (Max-Age slides)
        assert "Cookie" in r.headers["vary"]
        r = await web.get("/plain", headers=cookie(token))
        assert new_token(r) is None and "vary" not in r.headers  # not used: no cookie

        # Another program's key, written behind the app's back, is kept by a later save.
        await larder.sessions.update(token, {"other": '"theirs"'})
        r = await web.post("/write", headers=cookie(token), json={"a": 2, "cart": None})
        assert new_token(r) == token  # the same session
        session = await larder.sessions.get(token)
        assert session is not None
        assert session.data == {"a": "2", "name": '"Zoë"', "other": '"theirs"'}


async def test_concurrent_requests_changing_different_keys_both_kept(larder: aio.Larder) -> None:
    async with http(session_app(larder)) as web:
        token = new_token(await web.post("/write", json={"a": "old", "b": "old"}))
        assert token
        r1, r2 = await asyncio.gather(
            web.post("/together/a", headers=cookie(token)),
            web.post("/together/b", headers=cookie(token)),
        )
        assert r1.status_code == r2.status_code == 200
        session = await larder.sessions.get(token)
        assert session is not None
        assert session.data == {"a": '"changed"', "b": '"changed"'}


async def test_cookie_flags(larder: aio.Larder) -> None:
    async with http(session_app(larder)) as web:
        set_cookie = (await web.post("/write", json={"a": 1})).headers["set-cookie"]
    parts = [p.strip() for p in set_cookie.split(";")]
    assert parts[0].startswith("session=lds_")
    assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/", f"Max-Age={14 * 24 * 3600}"} <= set(
        parts
    )

    app = session_app(
        larder,
        session_cookie="sid",
        path="/app",
        domain="example.com",
        secure=False,
        same_site="strict",
        max_age=None,
        absolute_max_age=3600,
    )
    async with http(app) as web:
        r = await web.post("/write", json={"a": 1})
    parts = [p.strip() for p in r.headers["set-cookie"].split(";")]
    assert parts[0].startswith("sid=lds_")
    assert {"HttpOnly", "SameSite=Strict", "Path=/app", "Domain=example.com"} <= set(parts)
    assert "Secure" not in parts and not any(p.startswith("Max-Age") for p in parts)
    token = new_token(r, "sid")
    assert token
    session = await larder.sessions.get(token)
    assert session is not None
    assert session.absolute_expires_at_ms - session.created_at_ms == 3600 * 1000


async def test_login_rotates_and_logout_revokes(larder: aio.Larder) -> None:
    user = f"user-{uuid.uuid4().hex}"
    async with http(session_app(larder)) as web:
        anon = new_token(await web.post("/write", json={"cart": [7]}))
        assert anon
        r = await web.post(f"/login/{user}", headers=cookie(anon))
        assert r.json() == {"user_id": user}
        token = new_token(r)
        assert token and token != anon
        assert await larder.sessions.get(anon) is None  # the old token stops working
        session = await larder.sessions.get(token)
        assert session is not None and session.user_id == user
        assert session.data == {"cart": "[7]"}  # the data moved along

        r = await web.get("/whoami", headers=cookie(token))
        assert r.json() == {"user_id": user, "session_id": session.session_id}
        r = await web.get("/whoami", headers=cookie(anon))
        assert r.json() == {"user_id": None, "session_id": None}
        assert new_token(r) == ""  # the stale cookie is deleted

        # A logged-in session emptied stays logged in (only logout() ends it).
        await web.post("/write", headers=cookie(token), json={"cart": None})
        assert (await web.get("/whoami", headers=cookie(token))).json()["user_id"] == user

        r = await web.post("/logout", headers=cookie(token))
        assert new_token(r) == ""
        assert "Max-Age=0" in r.headers["set-cookie"]
        assert await larder.sessions.get(token) is None


async def test_login_without_a_session_creates_one(larder: aio.Larder) -> None:
    user = f"user-{uuid.uuid4().hex}"
    async with http(session_app(larder)) as web:
        r = await web.post(f"/login/{user}")
        token = new_token(r)
        assert token
        session = await larder.sessions.get(token)
        assert session is not None and session.user_id == user and session.data == {}


async def test_logout_everywhere(larder: aio.Larder) -> None:
    user = f"user-{uuid.uuid4().hex}"
    other1, _ = await larder.sessions.create(user, device_info="phone")
    other2, _ = await larder.sessions.create(user, device_info="laptop")
    async with http(session_app(larder)) as web:
        token = new_token(await web.post(f"/login/{user}"))
        assert token
        r = await web.post("/logout-everywhere?keep=1", headers=cookie(token))
        assert r.json() == {"ended": 2} and new_token(r) == token
        assert await larder.sessions.get(other1) is None
        assert await larder.sessions.get(other2) is None
        assert await larder.sessions.get(token) is not None

        other3, _ = await larder.sessions.create(user)
        r = await web.post("/logout-everywhere", headers=cookie(token))
        assert r.json() == {"ended": 2} and new_token(r) == ""
        assert (await larder.sessions.list(user)).sessions == []

        # Nobody logged in: only this session ends, never every anonymous one.
        bystander, _ = await larder.sessions.create("anonymous")
        anon = new_token(await web.post("/write", json={"a": 1}))
        assert anon
        r = await web.post("/logout-everywhere", headers=cookie(anon))
        assert r.json() == {"ended": 1}
        assert await larder.sessions.get(anon) is None
        assert await larder.sessions.get(bystander) is not None
        assert other3


@pytest.mark.parametrize("bad", ["garbage", "lds_" + "A" * 43, "lds_x;y", ""])
async def test_garbage_cookie_is_a_new_anonymous_session(larder: aio.Larder, bad: str) -> None:
    async with http(session_app(larder)) as web:
        r = await web.get("/read", headers=cookie(bad))
        assert r.status_code == 200 and r.json() == {}
        assert new_token(r) == ""  # the unusable cookie is deleted
        r = await web.post("/write", headers=cookie(bad), json={"a": 1})
        token = new_token(r)
        assert token and token.startswith("lds_") and token != bad
        session = await larder.sessions.get(token)
        assert session is not None and session.user_id == "anonymous"


async def test_clearing_an_anonymous_session_ends_it(larder: aio.Larder) -> None:
    async with http(session_app(larder)) as web:
        token = new_token(await web.post("/write", json={"a": 1}))
        assert token
        r = await web.post("/clear", headers=cookie(token))
        assert new_token(r) == ""
        assert await larder.sessions.get(token) is None


async def test_session_daemon_down(larder: aio.Larder, stopped_addr: str, down: Any) -> None:
    async with http(session_app(larder)) as web:
        token = new_token(await web.post("/write", json={"a": 1}))
    assert token
    async with http(session_app(down(stopped_addr))) as web:
        for path in ("/read", "/whoami"):
            r = await web.get(path, headers=cookie(token))
            assert r.status_code == 503
            assert r.json()["error"] == "session_unavailable"
            assert "set-cookie" not in r.headers  # nobody is logged out
        r = await web.post("/write", json={"a": 1})  # a new session cannot be created
        assert r.status_code == 503 and "set-cookie" not in r.headers
        r = await web.get("/plain", headers=cookie(token))  # does not touch the session
        assert r.status_code == 200 and r.text == "ok"
    assert await larder.sessions.get(token) is not None

    # The same from a FastAPI route, sync (run in a thread) or async.
    app = FastAPI()

    @app.get("/sync")
    def sync_route(request: Request) -> dict[str, Any]:
        return dict(request.session)

    @app.get("/async")
    async def async_route(request: Request) -> dict[str, Any]:
        return {"user": request.state.session.user_id}

    app.add_middleware(SessionMiddleware, client=down(stopped_addr))
    async with http(app) as web:
        for path in ("/sync", "/async"):
            r = await web.get(path, headers=cookie(token))
            assert r.status_code == 503 and r.json()["error"] == "session_unavailable"
            assert "set-cookie" not in r.headers


async def test_websocket_reads_the_session(larder: aio.Larder) -> None:
    async def write(request: Request) -> JSONResponse:
        request.session["name"] = "Ada"
        return JSONResponse({})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(
            {"name": websocket.session.get("name"), "sid": websocket.state.session.session_id}
        )
        await websocket.close()

    app = Starlette(routes=[Route("/write", write, methods=["POST"]), WebSocketRoute("/ws", ws)])
    app.add_middleware(SessionMiddleware, client=larder)
    async with http(app) as web:
        token = new_token(await web.post("/write"))
    assert token
    # httpx speaks no websocket: one connection driven by hand, as an ASGI server would.
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "wss",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", f"session={token}".encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 443),
        "subprotocols": [],
    }
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    message = json.loads(sent[1]["text"])
    session = await larder.sessions.get(token)
    assert session is not None
    assert message == {"name": "Ada", "sid": session.session_id}


def test_session_configuration_errors() -> None:
    app = Starlette()
    with pytest.raises(ConfigError, match="same_site"):
        SessionMiddleware(app, same_site="none", secure=False)
    with pytest.raises(ConfigError, match="same_site"):
        SessionMiddleware(app, same_site="loose")
    with pytest.raises(ConfigError, match="max_age"):
        SessionMiddleware(app, max_age=0)
    with pytest.raises(ConfigError, match="session_cookie"):
        SessionMiddleware(app, session_cookie="a b")
    with pytest.raises(ConfigError, match="SOCKET_TIMEOUT"):
        SessionMiddleware(app, location="127.0.0.1:7379", options={"SOCKET_TIMEOUT": "1s"})
    with pytest.raises(ConfigError, match="client"):
        SessionMiddleware(app, client="127.0.0.1:7379")  # type: ignore[arg-type]


# --- rate limits ----------------------------------------------------------------------------


def limited_app(client: aio.Larder, **options: Any) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/{path:path}", hello, methods=["GET", "POST"])])
    app.add_middleware(RateLimitMiddleware, client=client, **options)
    return app


def limit_headers(r: httpx.Response) -> dict[str, str]:
    names = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after")
    return {n: r.headers[n] for n in names if n in r.headers}


async def test_inline_limit_then_429(larder: aio.Larder) -> None:
    app = limited_app(larder, limit=3, period="1m")
    async with http(app, random_ip()) as web:
        answers = [await web.get("/api/x") for _ in range(4)]
    for r, remaining in zip(answers[:3], ("2", "1", "0"), strict=True):
        assert r.status_code == 200 and r.text == "hello"
        headers = limit_headers(r)
        assert headers["x-ratelimit-limit"] == "3"
        assert headers["x-ratelimit-remaining"] == remaining
        assert int(headers["x-ratelimit-reset"]) >= 1
        assert "retry-after" not in headers
    denied = answers[3]
    assert denied.status_code == 429
    body = denied.json()
    assert set(body) == {"error", "message", "retry_after"}
    assert body["error"] == "rate_limited"
    assert isinstance(body["retry_after"], int) and body["retry_after"] >= 1
    assert denied.headers["retry-after"] == str(body["retry_after"])
    assert denied.headers["x-ratelimit-limit"] == "3"
    assert denied.headers["x-ratelimit-remaining"] == "0"


async def test_named_policy_per_path_rules_and_default(larder: aio.Larder) -> None:
    app = limited_app(
        larder,
        limit=100,
        period_ms=60_000,
        rules={
            "/api/v1/ai/chat": "ai_chat",
            "/static/*": None,
            "/api/*": Limit(limit=50, period="1h"),
        },
    )
    ip = random_ip()
    async with http(app, ip) as web:
        chat = [await web.post("/api/v1/ai/chat") for _ in range(4)]
        assert [r.status_code for r in chat] == [200, 200, 200, 429]
        assert all(r.headers["x-ratelimit-limit"] == "3" for r in chat)
        other = await web.get("/api/v1/items")
        assert other.status_code == 200 and other.headers["x-ratelimit-limit"] == "50"
        static = await web.get("/static/app.js")
        assert static.status_code == 200 and "x-ratelimit-limit" not in static.headers
        home = await web.get("/")
        assert home.status_code == 200 and home.headers["x-ratelimit-limit"] == "100"
    # The policy's state is under the plain key; inline limits under their name.
    assert (await larder.ratelimit.peek(f"ip:{ip}", policy="ai_chat")).remaining == 0
    peek = await larder.ratelimit.peek(f"50/3600000ms/gcra:ip:{ip}", limit=50, period_ms=3_600_000)
    assert peek.remaining == 49


async def test_forwarded_for_only_from_trusted_proxies(larder: aio.Larder) -> None:
    proxy = "192.0.2.10"
    app = limited_app(larder, limit=2, period="1m", trusted_proxies=["192.0.2.0/24"])
    client_a, client_b = random_ip(), random_ip()
    async with http(app, proxy) as web:
        # The right-most address that is not a trusted proxy is the client; what the client
        # wrote to the left of it (a spoofed address) changes nothing.
        for spoof in ("1.1.1.1", "2.2.2.2"):
            r = await web.get("/", headers={"x-forwarded-for": f"{spoof}, {client_a}, 192.0.2.11"})
            assert r.status_code == 200
        r = await web.get("/", headers={"x-forwarded-for": f"{client_a}"})
        assert r.status_code == 429
        r = await web.get("/", headers={"x-forwarded-for": f"{client_a}, {client_b}"})
        assert r.status_code == 200  # another client behind the same proxy
    key = "2/60000ms/gcra:ip:"
    assert (await larder.ratelimit.peek(key + client_a, limit=2, period_ms=60_000)).remaining == 0
    assert (await larder.ratelimit.peek(key + client_b, limit=2, period_ms=60_000)).remaining == 1

    untrusted = random_ip()
    async with http(app, untrusted) as web:
        codes = [
            (await web.get("/", headers={"x-forwarded-for": random_ip()})).status_code
            for _ in range(3)
        ]
    assert codes == [200, 200, 429]  # an untrusted peer's header is ignored: keyed by the peer
    assert (await larder.ratelimit.peek(key + untrusted, limit=2, period_ms=60_000)).remaining == 0


async def test_custom_key_function(larder: aio.Larder) -> None:
    async def by_user(request: Request) -> str | None:
        user = request.headers.get("x-user")
        return f"user:{user}" if user else None

    tag = uuid.uuid4().hex
    ip = random_ip()
    app = limited_app(larder, limit=1, period="1m", key=by_user)
    async with http(app, ip) as web:
        assert (await web.get("/", headers={"x-user": f"alice-{tag}"})).status_code == 200
        assert (await web.get("/", headers={"x-user": f"alice-{tag}"})).status_code == 429
        assert (await web.get("/", headers={"x-user": f"bob-{tag}"})).status_code == 200
        assert (await web.get("/")).status_code == 200  # no user: keyed by the IP
        assert (await web.get("/")).status_code == 429
    peek = await larder.ratelimit.peek(f"1/60000ms/gcra:user:bob-{tag}", limit=1, period_ms=60_000)
    assert peek.remaining == 0


def fastapi_app(client: aio.Larder, **options: Any) -> FastAPI:
    app = FastAPI()
    add_rate_limit_handler(app)

    @app.get("/limited", dependencies=[Depends(RateLimit(client=client, **options))])
    async def limited() -> dict[str, str]:
        return {"hello": "world"}

    chat_limit = Depends(RateLimit("ai_chat", client=client))

    @app.get("/chat")
    async def chat(r: Any = chat_limit) -> dict[str, int]:
        return {"remaining": r.remaining}

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"hello": "world"}

    return app


async def test_fastapi_dependency(larder: aio.Larder) -> None:
    app = fastapi_app(larder, limit=2, period_ms=60_000, algorithm="fixed_window", name="lim")
    async with http(app, random_ip()) as web:
        first, second, third = [await web.get("/limited") for _ in range(3)]
        assert first.status_code == 200 and first.json() == {"hello": "world"}
        assert first.headers["x-ratelimit-limit"] == "2"
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert "x-ratelimit-reset" in first.headers and "retry-after" not in first.headers
        assert second.status_code == 200 and second.headers["x-ratelimit-remaining"] == "0"
        assert third.status_code == 429
        assert third.json()["error"] == "rate_limited"
        assert third.headers["retry-after"] == str(third.json()["retry_after"])
        assert third.headers["x-ratelimit-limit"] == "2"

        free = await web.get("/free")
        assert free.status_code == 200 and "x-ratelimit-limit" not in free.headers

        chat = [await web.get("/chat") for _ in range(4)]
        assert [r.status_code for r in chat] == [200, 200, 200, 429]
        assert chat[0].json() == {"remaining": 2}


async def test_fail_open_and_fail_closed(
    larder: aio.Larder, stopped_addr: str, down: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="larder_client.starlette")
    async with http(limited_app(down(stopped_addr), limit=1, period="1m")) as web:
        for _ in range(2):
            r = await web.get("/")
            assert r.status_code == 200 and r.text == "hello"
            assert "x-ratelimit-limit" not in r.headers
    assert any("rate limiter unavailable" in m for m in caplog.messages)

    closed = limited_app(down(stopped_addr), limit=1, period="1m", fail_open=False)
    async with http(closed) as web:
        r = await web.get("/")
        assert r.status_code == 503 and r.json()["error"] == "rate_limit_unavailable"

    app = fastapi_app(down(stopped_addr), limit=1, period="1m")
    async with http(app) as web:
        r = await web.get("/limited")
        assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers
    app = fastapi_app(down(stopped_addr), limit=1, period="1m", fail_open=False)
    async with http(app) as web:
        r = await web.get("/limited")
        assert r.status_code == 503 and r.json()["error"] == "rate_limit_unavailable"


async def test_session_user_as_rate_limit_key(larder: aio.Larder) -> None:
    user = f"user-{uuid.uuid4().hex}"

    def by_user(request: Request) -> str | None:
        uid = request.state.session.user_id
        return f"user:{uid}" if uid else None

    async def login(request: Request) -> JSONResponse:
        await request.state.session.login(user)
        return JSONResponse({})

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/hello", hello)])
    app.add_middleware(RateLimitMiddleware, client=larder, rules={"/hello": "ai_chat"}, key=by_user)
    app.add_middleware(SessionMiddleware, client=larder)  # outermost: runs first
    async with http(app, random_ip()) as web:
        token = new_token(await web.post("/login"))
        assert token
        codes = [(await web.get("/hello", headers=cookie(token))).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert (await larder.ratelimit.peek(f"user:{user}", policy="ai_chat")).remaining == 0


def test_rate_limit_configuration_errors() -> None:
    app = Starlette()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"policy": "api", "limit": 3, "period": "1m"}, "policy"),
        ({"limit": 3}, "period"),
        ({"limit": 3, "period": "fortnight"}, "period"),
        ({"limit": 0, "period": "1m"}, "limit"),
        ({"limit": 3, "period": "1m", "algorithm": "leaky"}, "algorithm"),
        ({"limit": 3, "period": "1m", "algorithm": "fixed_window", "burst": 5}, "burst"),
        ({"limit": 3, "period": "1m", "trusted_proxies": ["proxy.local"]}, "trusted_proxies"),
        ({"rules": {"api": "x"}}, "rules"),
        ({}, "give a limit"),
    ]
    for kwargs, named in cases:
        with pytest.raises(ConfigError, match=named):
            RateLimitMiddleware(app, **kwargs)
    with pytest.raises(ConfigError, match="period"):
        RateLimit(limit=3)
