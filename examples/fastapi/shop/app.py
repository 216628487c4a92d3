"""The shop: a login, a cached catalogue page and a rate-limited chat endpoint.

Run it as it is deployed: ``gunicorn shop.app:app -k uvicorn_worker.UvicornWorker -w 4``.
Each worker process makes its own asyncio Larder client in the lifespan handler (a gRPC
channel belongs to one event loop), and every answer names the worker that made it
(``X-Worker``), so the tests can see that what one worker did (a login, a cached page, a
rate-limit count) is seen by the others.

Settings come from the environment: LARDER_LOCATION (default: the systemd unit's socket),
LARDER_TOKEN_FILE (optional), SHOP_DB (the SQLite file of users), SHOP_CHAT_LIMIT (requests
a minute, default 60), SHOP_SECURE_COOKIE (default 1; 0 for plain-HTTP development).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from larder_client import aio
from larder_client._options import client_kwargs
from larder_client.starlette import RateLimit, SessionMiddleware, add_rate_limit_handler
from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import users

LARDER_LOCATION = os.environ.get("LARDER_LOCATION", "unix:/run/larder/larder.sock")
LARDER_OPTIONS = (
    {"TOKEN_FILE": os.environ["LARDER_TOKEN_FILE"]} if "LARDER_TOKEN_FILE" in os.environ else {}
)
CHAT_LIMIT = int(os.environ.get("SHOP_CHAT_LIMIT", "60"))
CACHE_NAMESPACE = "shop"

logging.basicConfig(format="[%(process)d] %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("shop")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    users.connect().close()  # creates the table on a first start
    connection = client_kwargs(LARDER_LOCATION, LARDER_OPTIONS, "LARDER_LOCATION")
    async with aio.Larder(**connection) as larder:
        app.state.larder = larder
        yield


app = FastAPI(lifespan=lifespan)


def larder() -> aio.Larder:
    """This worker's client (made in the lifespan handler)."""
    return app.state.larder


# --- the cache --------------------------------------------------------------------------------


async def get_or_build(key: str, build: Callable[[], Awaitable[bytes]], ttl_ms: int) -> bytes:
    """The cached value of ``key``, or what ``build()`` makes, stored for ``ttl_ms``.

    Stored only if absent (as Django's ``get_or_set`` adds): when workers build the value at
    once, the first one stored is what they all answer. A daemon that cannot answer is a miss:
    the value is built (and not stored) and a warning logged, so pages stay up, uncached,
    while Larder restarts. A mistake of the caller's own (a key over the daemon's limits:
    ``LarderError``) still raises.
    """
    cache = larder().cache
    try:
        value = await cache.get(key, namespace=CACHE_NAMESPACE)
    except grpc.RpcError as err:
        logger.warning("cache unavailable, %s built uncached: %s", key, err.code().name)
        return await build()
    if value is not None:
        return value
    value = await build()
    try:
        if not await cache.set(key, value, ttl_ms, if_absent=True, namespace=CACHE_NAMESPACE):
            value = await cache.get(key, namespace=CACHE_NAMESPACE) or value  # stored first
    except grpc.RpcError as err:
        logger.warning("cache unavailable, %s not stored: %s", key, err.code().name)
    return value


# --- the routes -------------------------------------------------------------------------------


class Login(BaseModel):
    username: str
    password: str


def _name(request: Request) -> str | None:
    return request.session.get("name") if request.state.session.user_id else None


@app.get("/")
async def home(request: Request) -> dict[str, str | None]:
    return {"user": _name(request)}


@app.post("/login")
async def login(form: Login, request: Request) -> dict[str, str]:
    user_id = await asyncio.to_thread(users.authenticate, form.username, form.password)
    if user_id is None:
        raise HTTPException(403, "invalid login")
    request.session["name"] = form.username
    await request.state.session.login(str(user_id))  # a new token: the old one stops working
    return {"user": form.username}


@app.post("/logout-everywhere")
async def logout_everywhere(request: Request) -> dict[str, int]:
    """Ends every session of the user, on every device, in every worker."""
    if request.state.session.user_id is None:
        raise HTTPException(403, "not logged in")
    return {"ended": await request.state.session.logout_everywhere()}


@app.get("/catalogue", response_class=HTMLResponse)
async def catalogue() -> HTMLResponse:
    """A page that is expensive to build, cached for five minutes for every worker."""

    async def build() -> bytes:
        await asyncio.sleep(0.05)  # stands in for the queries that make it expensive
        page = f"<h1>Catalogue</h1><p>built at {time.time():.6f} by worker {os.getpid()}</p>"
        return page.encode()

    return HTMLResponse(await get_or_build("catalogue-page", build, ttl_ms=300_000))


def user_or_ip(request: Request) -> str | None:
    user_id = request.state.session.user_id
    return f"user:{user_id}" if user_id else None  # None: the client's IP


chat_limit = RateLimit(limit=CHAT_LIMIT, period="1m", name="chat", key=user_or_ip, client=larder)


@app.get("/api/v1/ai/chat", dependencies=[Depends(chat_limit)])
async def chat() -> dict[str, str]:
    return {"reply": "Hello! How can I help?"}


# --- the middleware ---------------------------------------------------------------------------


class WorkerHeader:
    """Adds ``X-Worker: <pid>`` to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_worker(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Worker"] = str(os.getpid())
            await send(message)

        await self.app(scope, receive, send_with_worker if scope["type"] == "http" else send)


add_rate_limit_handler(app)  # the 429's {"error", "message", "retry_after"} body
app.add_middleware(
    SessionMiddleware,
    client=larder,
    secure=os.environ.get("SHOP_SECURE_COOKIE", "1") != "0",
)
app.add_middleware(WorkerHeader)  # added last: outermost, so 429s and 503s carry it too
