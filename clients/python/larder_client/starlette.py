"""Starlette and FastAPI on Larder: server-side sessions and rate limiting, on asyncio.

    from larder_client.starlette import RateLimit, RateLimitMiddleware, SessionMiddleware

    app.add_middleware(RateLimitMiddleware, policy="api", rules={"/api/v1/ai/chat": "ai_chat"})
    app.add_middleware(SessionMiddleware, location="unix:/run/larder/larder.sock")

    @app.post("/chat", dependencies=[Depends(RateLimit(policy="ai_chat"))])
    async def chat(request: Request) -> dict: ...

Every middleware and dependency talks to the daemon through a ``larder_client.aio.Larder``:
``client=`` (the client itself, or a function without arguments returning it, e.g. one made in
the lifespan handler), or ``location=`` and ``options=`` (the connection options of
``larder_client._options``: ``TOKEN``, ``TOKEN_FILE``, ``TLS``, ...), which share one client
per event loop. Neither: ``127.0.0.1:7379`` without a token. A bad setting raises
``ConfigError`` (a ``ValueError``) naming it when the middleware is made.

Sessions (``SessionMiddleware``)
--------------------------------

The cookie holds only the session token (``lds_`` and 43 url-safe characters); the data lives
in SessionService. ``request.session`` is a mutable mapping, as with Starlette's own
``SessionMiddleware``. A request whose cookie looks like a token asks the daemon for its
session (GetSession, which slides the idle expiry) before the app runs, because
``request.session`` is synchronous and cannot wait for the daemon when it is first touched; a
cookie that does not look like a token is treated as no session without a call. Each key of
``request.session`` is one key of the session's data, holding the JSON text of its value
(``json.dumps``: values must be JSON-serializable, and come back as JSON gives them: a tuple
as a list). When the response starts, only the keys whose JSON changed are written
(UpdateSession ``set``/``remove``), so two requests changing different keys at once both keep
their change; a value changed in place (``request.session["cart"].append(x)``) counts as a
change. A request without a session creates one (CreateSession, under the anonymous user id)
at its first write. Emptying an anonymous session (``request.session.clear()``, Starlette's
usual logout) ends it and deletes the cookie; a logged-in session stays until ``logout()``.

``request.state.session`` (a ``SessionControl``) carries the operations: ``await login(user_id)``
(a new session under the user's id with the current data, the old token revoked: the token
always changes at login), ``await rotate()``, ``await logout()``, ``await
logout_everywhere(keep_current=False)``, ``user_id`` and ``session_id``.

When the daemon cannot be reached, a request that touches the session gets a 503 (JSON
``{"error": "session_unavailable", ...}``) and its cookie is left alone: an outage never logs
anyone out. Requests that do not touch the session are served as usual.

Rate limits (``RateLimitMiddleware``, ``RateLimit``)
-----------------------------------------------------

A limit is a named policy of the daemon's config (``policy="api"``) or inline (``limit=100,
period="1m"``, ``algorithm``, ``burst``, ``cost``). Each request is counted under a key: the
client's IP (``ip:203.0.113.9``), the right-most address of ``X-Forwarded-For`` that is not a
trusted proxy when the direct peer is one of ``trusted_proxies``, or what ``key(request)``
returns (a string such as ``user:42``; None falls back to the IP). Allowed answers carry
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``; a request over the
limit gets a 429 with those, ``Retry-After`` and the JSON body ``{"error": "rate_limited",
"message": ..., "retry_after": seconds}``. When the daemon cannot be reached: ``fail_open=True``
(the default) lets the request through without headers and logs a warning on the
``larder_client.starlette`` logger; ``fail_open=False`` answers 503 (``{"error":
"rate_limit_unavailable", ...}``).
"""

# No "from __future__ import annotations" here: FastAPI reads the annotations of
# RateLimit.__call__ (Request, Response) at runtime to know what to pass.

import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import grpc
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import aio
from ._calls import client_fields
from ._invoke import describe, unreachable
from ._options import ConfigError, async_client, client_kwargs
from ._types import RateLimitResult, Session

logger = logging.getLogger(__name__)

DEFAULT_LOCATION = "127.0.0.1:7379"
# What a session token looks like, loosely (``lds_`` + 43 characters today): enough to skip the
# round trip for cookies that cannot be tokens, without tying the client to the exact length.
_TOKEN = re.compile(r"lds_[A-Za-z0-9_-]{1,256}")
# RFC 6265 cookie-name characters (an RFC 7230 token).
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SAME_SITE = ("lax", "strict", "none")
_MAX_TTL_S = 365 * 24 * 3600

ClientSource = aio.Larder | Callable[[], aio.Larder]
KeyFunc = Callable[[Request], str | None | Awaitable[str | None]]


# --- the connection ---------------------------------------------------------------------------


class _Connection:
    """Where a middleware gets its asyncio client: given, made by a function, or shared."""

    def __init__(
        self,
        client: ClientSource | None,
        location: str | None,
        options: Mapping[str, Any] | None,
        setting: str,
    ) -> None:
        self._setting = setting
        self._client = client
        if client is not None:
            if location is not None or options is not None:
                raise ConfigError(f"{setting}: give client, or location and options, not both")
            if not isinstance(client, aio.Larder) and not callable(client):
                raise ConfigError(
                    f"{setting}: client must be a larder_client.aio.Larder or a function "
                    f"returning one, not {type(client).__name__}"
                )
            self._location: str = ""
            self._options: Mapping[str, Any] = {}
            return
        self._location = DEFAULT_LOCATION if location is None else location
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"{setting}: options must be a dict of connection options")
        self._options = dict(options or {})
        client_kwargs(self._location, self._options, setting)  # checks them now

    def get(self) -> aio.Larder:
        client = self._client
        if client is None:
            return async_client(self._location, self._options, self._setting)
        if isinstance(client, aio.Larder):
            return client
        made = client()
        if not isinstance(made, aio.Larder):
            raise ConfigError(
                f"{self._setting}: client() returned {type(made).__name__}, "
                "not a larder_client.aio.Larder"
            )
        return made


def _seconds(value: Any, name: str, setting: str) -> int | None:
    """A positive whole number of seconds (int or timedelta), or None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
        if value == int(value):
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_TTL_S:
        raise ConfigError(
            f"{setting}: {name} must be a whole number of seconds from 1 to {_MAX_TTL_S} "
            f"(365 days), or None, not {value!r}"
        )
    return value


# --- sessions ---------------------------------------------------------------------------------


class SessionUnavailable(Exception):
    """The session store could not be reached; ``SessionMiddleware`` answers 503.

    The ``grpc.RpcError`` is ``__cause__``.
    """


@contextmanager
def _reaching_store() -> Iterator[None]:
    """Turns the daemon being out of reach into ``SessionUnavailable``; other errors pass."""
    try:
        yield
    except grpc.RpcError as err:
        if unreachable(err):
            raise SessionUnavailable("the session store could not be reached") from err
        raise


def _encode(key: Any, value: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"session keys are strings; {key!r} is not")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _State:
    """One request's session: what the daemon holds and what the app made of it."""

    def __init__(self, token: str | None, cookie_sent: bool) -> None:
        self.token = token  # the live session's token, None when there is none
        self.cookie_sent = cookie_sent
        self.server: Session | None = None
        self.error: BaseException | None = None  # loading failed: touching the session raises
        self.values: dict[str, Any] = {}
        self.stored: dict[str, str] = {}  # encoded values as on the daemon (decodable keys)
        self.accessed = False
        self.token_changed = False  # send the new token in the cookie
        self.ended = False  # logged out (or revoked elsewhere): delete the cookie
        self.gone = False  # revoked by someone else during this request: do not recreate

    def touch(self) -> None:
        if self.error is not None:
            raise SessionUnavailable("the session store could not be reached") from self.error
        self.accessed = True

    def take(self, token: str | None, server: Session | None) -> None:
        """The daemon's session (or none) becomes this request's."""
        self.token = token
        self.server = server
        self.values, self.stored = {}, {}
        if server is None:
            return
        for key, text in server.data.items():
            try:
                self.values[key] = json.loads(text)
            except ValueError:
                continue  # written by another program: left out, and left alone
            self.stored[key] = text

    def end(self, gone: bool = False) -> None:
        """The session is over (logged out, emptied or revoked): no data, the cookie deleted.
        ``gone``: revoked by someone else, so this request never recreates it."""
        self.take(None, None)
        self.ended, self.token_changed = True, False
        self.gone = self.gone or gone

    def changes(self) -> tuple[dict[str, str], list[str], dict[str, str]]:
        """(keys to set, keys to remove, every current key's JSON)."""
        current = {key: _encode(key, value) for key, value in self.values.items()}
        changed = {k: v for k, v in current.items() if self.stored.get(k) != v}
        removed = [k for k in self.stored if k not in current]
        return changed, removed, current


class LarderSession(MutableMapping[str, Any]):
    """``request.session``: the session's data as a mutable mapping of JSON values.

    ``accessed`` and ``modified`` mirror Starlette's ``Session``. Touching it while the daemon
    cannot be reached raises ``SessionUnavailable``.
    """

    def __init__(self, state: _State) -> None:
        self._state = state

    def _data(self) -> dict[str, Any]:
        self._state.touch()
        return self._state.values

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        _encode(key, value)  # a value JSON cannot hold fails here, not at the response
        self._data()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data()))

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return f"LarderSession({self._state.values!r})"

    @property
    def accessed(self) -> bool:
        return self._state.accessed

    @property
    def modified(self) -> bool:
        changed, removed, _ = self._state.changes()
        return bool(changed or removed)


class SessionControl:
    """``request.state.session``: the session's identity and what changes it.

    ``user_id`` is None while nobody is logged in (the session is anonymous or there is none).
    """

    def __init__(
        self, middleware: "SessionMiddleware", state: _State, request: HTTPConnection
    ) -> None:
        self._mw = middleware
        self._state = state
        self._request = request

    @property
    def user_id(self) -> str | None:
        self._state.touch()
        server = self._state.server
        if server is None or server.user_id == self._mw.anonymous_user_id:
            return None
        return server.user_id

    @property
    def session_id(self) -> str | None:
        """The Larder session id (``ses_...``, not secret), None when there is no session."""
        self._state.touch()
        return None if self._state.server is None else self._state.server.session_id

    async def login(self, user_id: str) -> None:
        """Moves the session to ``user_id`` under a new token (the old one stops working).

        Pending changes are written to the old session first, so the new one gets its data
        merged with what other requests wrote; without a session, one is created. The new
        token goes out in the cookie.
        """
        if not isinstance(user_id, str) or not 1 <= len(user_id.encode()) <= 256:
            raise ValueError(f"user_id must be a string of 1 to 256 bytes, not {user_id!r}")
        if user_id == self._mw.anonymous_user_id:
            raise ValueError(f"user_id {user_id!r} is the anonymous user id")
        state = self._state
        state.touch()
        sessions = self._mw.sessions()
        changed, removed, current = state.changes()
        old_token = state.token
        data = current
        with _reaching_store():
            if old_token is not None:
                merged = await sessions.update(old_token, changed, removed)
                if merged is not None:
                    data = merged.data
            token, session = await sessions.create(
                user_id, data, **self._mw.creation(self._request)
            )
            if old_token is not None:
                await sessions.revoke(old_token)
        state.take(token, session)
        state.token_changed, state.ended, state.gone = True, False, False

    async def rotate(self) -> None:
        """Gives the session a new token (after a change of privilege); the old one stops
        working. Does nothing without a session."""
        state = self._state
        state.touch()
        if state.token is None:
            return
        with _reaching_store():
            rotated = await self._mw.sessions().rotate(state.token)
        if rotated is None:  # revoked meanwhile
            state.end(gone=True)
            return
        state.token, state.server = rotated
        state.token_changed = True

    async def logout(self) -> None:
        """Ends the session (RevokeSession), empties ``request.session`` and deletes the cookie.

        Data written after it goes to a new anonymous session.
        """
        state = self._state
        state.touch()
        if state.token is not None:
            with _reaching_store():
                await self._mw.sessions().revoke(state.token)
        state.end()

    async def logout_everywhere(self, *, keep_current: bool = False) -> int:
        """Ends every session of the logged-in user (RevokeUserSessions), this one too unless
        ``keep_current``; returns how many ended. Without a logged-in user it ends only this
        session (never every anonymous one)."""
        user_id = self.user_id
        state = self._state
        if user_id is None:
            if keep_current or state.token is None:
                return 0
            await self.logout()
            return 1
        assert state.server is not None
        keep = state.server.session_id if keep_current else ""
        with _reaching_store():
            count = await self._mw.sessions().revoke_user(user_id, keep)
        if not keep_current:
            state.end()
        return count


class SessionMiddleware:
    """Server-side sessions in Larder's SessionService (see the module's description).

    ``session_cookie``, ``path``, ``domain``, ``max_age`` and ``same_site`` mean what they mean
    for Starlette's ``SessionMiddleware``; ``secure`` (default True) and HttpOnly are set on
    the cookie. ``max_age`` (seconds, default 14 days) is also the session's idle TTL: it
    slides with every request that has the session, and a response to a request that used the
    session sends the cookie again; None makes the cookie last as long as the browser and
    leaves the idle TTL to the daemon (30 minutes by default). ``absolute_max_age`` (seconds;
    None: the daemon's default, 30 days) ends a session however much it is used.
    ``anonymous_user_id`` is the user id of sessions nobody is logged in to.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: ClientSource | None = None,
        location: str | None = None,
        options: Mapping[str, Any] | None = None,
        session_cookie: str = "session",
        max_age: int | timedelta | None = 14 * 24 * 3600,
        absolute_max_age: int | timedelta | None = None,
        path: str = "/",
        domain: str | None = None,
        secure: bool = True,
        same_site: str = "lax",
        anonymous_user_id: str = "anonymous",
    ) -> None:
        setting = "SessionMiddleware"
        self.app = app
        self._connection = _Connection(client, location, options, setting)
        if not isinstance(session_cookie, str) or not _COOKIE_NAME.fullmatch(session_cookie):
            raise ConfigError(f"{setting}: session_cookie {session_cookie!r} is not a cookie name")
        if not isinstance(path, str) or not path.startswith("/") or ";" in path:
            raise ConfigError(f"{setting}: path must start with '/' (and hold no ';'): {path!r}")
        if domain is not None and (not isinstance(domain, str) or not domain or ";" in domain):
            raise ConfigError(f"{setting}: domain must be a host name or None, not {domain!r}")
        same = same_site.lower() if isinstance(same_site, str) else same_site
        if same not in _SAME_SITE:
            raise ConfigError(
                f"{setting}: same_site must be one of {_SAME_SITE}, not {same_site!r}"
            )
        if same == "none" and not secure:
            raise ConfigError(f"{setting}: same_site='none' needs secure=True (browsers say so)")
        if (
            not isinstance(anonymous_user_id, str)
            or not 1 <= len(anonymous_user_id.encode()) <= 256
        ):
            raise ConfigError(
                f"{setting}: anonymous_user_id must be a string of 1 to 256 bytes, "
                f"not {anonymous_user_id!r}"
            )
        self.max_age = _seconds(max_age, "max_age", setting)
        self.absolute_max_age = _seconds(absolute_max_age, "absolute_max_age", setting)
        self.session_cookie = session_cookie
        self.anonymous_user_id = anonymous_user_id
        flags = f"; Path={path}"
        if domain is not None:
            flags += f"; Domain={domain}"
        if secure:
            flags += "; Secure"
        self._flags = flags + f"; HttpOnly; SameSite={same.capitalize()}"

    def sessions(self) -> aio.Sessions:
        return self._connection.get().sessions

    def creation(self, request: HTTPConnection) -> dict[str, Any]:
        """CreateSession's TTLs, device_info and ip for a session made during ``request``."""
        host = request.client.host if request.client else ""
        return {
            "idle_ttl_ms": (self.max_age or 0) * 1000,
            "absolute_ttl_ms": (self.absolute_max_age or 0) * 1000,
            **client_fields(request.headers.get("user-agent", ""), host),
        }

    def _cookie(self, token: str | None) -> str:
        if token is None:
            return (
                f"{self.session_cookie}=; Max-Age=0; "
                f"Expires=Thu, 01 Jan 1970 00:00:00 GMT{self._flags}"
            )
        age = f"; Max-Age={self.max_age}" if self.max_age is not None else ""
        return f"{self.session_cookie}={token}{age}{self._flags}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request = HTTPConnection(scope)
        cookie = request.cookies.get(self.session_cookie)
        token = cookie if cookie is not None and _TOKEN.fullmatch(cookie) else None
        state = _State(token, cookie is not None)
        if token is not None:
            try:
                state.take(token, await self.sessions().get(token))
            except grpc.RpcError as err:
                if not unreachable(err):
                    raise
                logger.warning("session lookup failed: %s", describe(err))
                state.error = err
            if state.server is None and state.error is None:
                state.token = None  # unknown, expired or revoked: no session
        scope["session"] = LarderSession(state)
        scope.setdefault("state", {})["session"] = SessionControl(self, state, request)
        if scope["type"] == "websocket":  # read only: a websocket has no response to save in
            await self.app(scope, receive, send)
            return

        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                cookies = await self._save(state, request)
                headers = MutableHeaders(scope=message)
                if state.accessed:
                    headers.add_vary_header("Cookie")
                for value in cookies:
                    headers.append("Set-Cookie", value)
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            unavailable = _find(exc, SessionUnavailable)
            if unavailable is None or started:
                raise
            cause = unavailable.__cause__
            logger.error(
                "session store unavailable, answered 503: %s",
                describe(cause) if cause is not None else unavailable,
            )
            response = JSONResponse(
                {
                    "error": "session_unavailable",
                    "message": "The session store is unavailable; try again shortly.",
                },
                status_code=503,
            )
            await response(scope, receive, send)

    async def _save(self, state: _State, request: HTTPConnection) -> list[str]:
        """Writes what changed; returns the Set-Cookie values to send."""
        if state.error is not None:
            return []  # never touched (or the app got the error): the cookie stays as it was
        changed, removed, current = state.changes() if state.accessed else ({}, [], {})
        sessions = self.sessions() if (changed or removed or current) else None
        with _reaching_store():
            if state.token is not None and (changed or removed):
                assert sessions is not None and state.server is not None
                anonymous = state.server.user_id == self.anonymous_user_id
                if not current and anonymous:  # an anonymous session emptied: it ends
                    await sessions.revoke(state.token)
                    state.end()
                elif await sessions.update(state.token, changed, removed) is None:
                    # revoked meanwhile (logout elsewhere): never brought back
                    logger.info("session revoked during the request; its changes are dropped")
                    state.end(gone=True)
            elif state.token is None and current and not state.gone:
                assert sessions is not None
                token, session = await sessions.create(
                    self.anonymous_user_id, current, **self.creation(request)
                )
                state.take(token, session)
                state.token_changed = True
        if state.token is not None:
            # A request that used the session sends the cookie again, so that its Max-Age
            # slides as the idle expiry did on the daemon.
            again = state.accessed and self.max_age is not None
            return [self._cookie(state.token)] if state.token_changed or again else []
        if state.ended or state.cookie_sent:
            return [self._cookie(None)]
        return []


def _find(exc: BaseException, kind: type[Exception]) -> Exception | None:
    """``exc`` if it is a ``kind``, or the first ``kind`` in an exception group."""
    if isinstance(exc, kind):
        return exc
    group = getattr(exc, "exceptions", None)
    if isinstance(group, tuple):
        for inner in group:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


# --- rate limits ------------------------------------------------------------------------------

_PERIOD = re.compile(r"\s*(\d+)\s*(ms|s|sec|m|min|h|hour|d|day|days)\s*")
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "sec": 1000,
    "m": 60_000,
    "min": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}
_ALGORITHMS = ("gcra", "sliding_window", "fixed_window")


def _positive_int(value: Any, name: str, setting: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{setting}: {name} must be a whole number, 1 or more, not {value!r}")
    return value


def _period_ms(period: Any, setting: str) -> int:
    if isinstance(period, timedelta):
        ms = period / timedelta(milliseconds=1)
        if ms != int(ms) or ms < 1:
            raise ConfigError(f"{setting}: period must be whole milliseconds, 1 or more: {period}")
        return int(ms)
    if isinstance(period, str):
        match = _PERIOD.fullmatch(period)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * _UNIT_MS[match.group(2)]
    raise ConfigError(
        f"{setting}: period must be a duration such as '500ms', '30s', '1m', '1h', '1d' or a "
        f"timedelta, not {period!r}"
    )


class Limit:
    """One limit: a named policy of the daemon's config, or an inline one.

    ``Limit("ai_chat")``, or ``Limit(limit=100, period="1m")`` (``period`` a string such as
    ``"500ms"``, ``"30s"``, ``"1m"``, ``"1h"``, ``"1d"`` or a timedelta; or ``period_ms``),
    with ``algorithm`` ("gcra", the default, "sliding_window" or "fixed_window") and
    ``burst`` (GCRA only). ``cost`` units are consumed per request. Inline limits keep their
    state under keys prefixed with ``name`` (default: the numbers, e.g. ``100/60000ms/gcra``),
    so different inline limits never share a budget and equal ones do.
    """

    def __init__(
        self,
        policy: str | None = None,
        *,
        limit: int | None = None,
        period: str | timedelta | None = None,
        period_ms: int | None = None,
        algorithm: str | None = None,
        burst: int | None = None,
        cost: int = 1,
        name: str | None = None,
        setting: str = "Limit",
    ) -> None:
        self.cost = _positive_int(cost, "cost", setting)
        inline = (limit, period, period_ms, algorithm, burst)
        if policy is not None:
            if not isinstance(policy, str) or not policy:
                raise ConfigError(f"{setting}: policy must be a policy name, not {policy!r}")
            if any(v is not None for v in inline):
                raise ConfigError(
                    f"{setting}: give policy, or limit and period, not both (the policy "
                    f"{policy!r} is defined in the daemon's config)"
                )
            self.policy, self.limit, self.period_ms = policy, 0, 0
            self.algorithm, self.burst, self.name = "", 0, ""
            return
        if limit is None:
            raise ConfigError(f"{setting}: give policy='name', or limit and period")
        self.policy = ""
        self.limit = _positive_int(limit, "limit", setting)
        if (period is None) == (period_ms is None):
            raise ConfigError(f"{setting}: give period (e.g. '1m') or period_ms, one of them")
        if period_ms is not None:
            self.period_ms = _positive_int(period_ms, "period_ms", setting)
        else:
            self.period_ms = _period_ms(period, setting)
        if algorithm is not None and algorithm not in _ALGORITHMS:
            raise ConfigError(
                f"{setting}: algorithm must be one of {_ALGORITHMS}, not {algorithm!r}"
            )
        self.algorithm = algorithm or "gcra"
        if burst is not None and self.algorithm != "gcra":
            raise ConfigError(f"{setting}: burst is a GCRA setting, not one of {self.algorithm}")
        self.burst = 0 if burst is None else _positive_int(burst, "burst", setting)
        default_name = f"{self.limit}/{self.period_ms}ms/{self.algorithm}"
        if self.burst:
            default_name += f"/{self.burst}"
        self.name = default_name if name is None else name

    def __repr__(self) -> str:
        if self.policy:
            return f"Limit({self.policy!r})"
        return f"Limit(limit={self.limit}, period_ms={self.period_ms}, name={self.name!r})"

    async def check(self, client: aio.Larder, who: str) -> RateLimitResult:
        if self.policy:
            return await client.ratelimit.check(who, policy=self.policy, cost=self.cost)
        return await client.ratelimit.check(
            f"{self.name}:{who}",
            limit=self.limit,
            period_ms=self.period_ms,
            cost=self.cost,
            burst=self.burst,
            algorithm=self.algorithm,
        )


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(trusted: Iterable[str], setting: str) -> tuple[Network, ...]:
    if isinstance(trusted, str):
        raise ConfigError(f"{setting}: trusted_proxies is a list of addresses, not one string")
    networks = []
    for entry in trusted:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"{setting}: trusted_proxies: {entry!r} is not an IP address or network"
            ) from err
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_ip(connection: HTTPConnection, trusted_proxies: Iterable[Network] = ()) -> str | None:
    """The client's address: the direct peer, or, when the peer is one of
    ``trusted_proxies`` (networks, e.g. from ``ipaddress.ip_network``), the right-most address
    of ``X-Forwarded-For`` that is not a trusted proxy (the left-most when all are). The
    addresses left of it were written by the client and prove nothing. None without a peer.
    """
    peer = connection.client.host if connection.client else None
    if peer is None:
        return None
    trusted = tuple(trusted_proxies)

    def is_trusted(text: str) -> bool:
        addr = _ip(text)
        return addr is not None and any(addr in net for net in trusted)

    if not trusted or not is_trusted(peer):
        return peer
    hops = [
        hop.strip()
        for value in connection.headers.getlist("x-forwarded-for")
        for hop in value.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not is_trusted(hop):
            addr = _ip(hop)
            return hop if addr is None else str(addr)
    return hops[0] if hops else peer


class _Keyer:
    """Whose budget a request counts against."""

    def __init__(self, key: KeyFunc | None, trusted: Iterable[str], setting: str) -> None:
        if key is not None and not callable(key):
            raise ConfigError(f"{setting}: key must be a function of the request, or None")
        self._key = key
        self._trusted = _networks(trusted, setting)

    async def __call__(self, request: Request) -> str:
        if self._key is not None:
            who = self._key(request)
            if isinstance(who, Awaitable):
                who = await who
            if who:
                return str(who)
        return f"ip:{client_ip(request, self._trusted) or 'unknown'}"


def _denied_body(result: RateLimitResult) -> dict[str, Any]:
    retry = int(result.headers().get("Retry-After", "0"))
    return {
        "error": "rate_limited",
        "message": f"Too many requests; retry after {retry} second{'s' if retry != 1 else ''}.",
        "retry_after": retry,
    }


_UNAVAILABLE_BODY = {
    "error": "rate_limit_unavailable",
    "message": "The rate limiter is unavailable; try again shortly.",
}


class RateLimitMiddleware:
    """Limits every HTTP request (see the module's description).

    The default limit is ``policy`` or the inline ``limit``/``period``/``period_ms``/
    ``algorithm``/``burst``/``cost``; ``rules`` maps paths to their own limit: a policy name,
    a ``Limit``, or None for no limit. A rule's path matches exactly, or, ending in ``*``, as a
    prefix (``"/api/*"``); an exact match wins, then the longest prefix, then the default.
    Without a default, paths no rule matches are not limited. Headers an inner limit (a
    ``RateLimit`` dependency) already set are kept.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: ClientSource | None = None,
        location: str | None = None,
        options: Mapping[str, Any] | None = None,
        policy: str | None = None,
        limit: int | None = None,
        period: str | timedelta | None = None,
        period_ms: int | None = None,
        algorithm: str | None = None,
        burst: int | None = None,
        cost: int = 1,
        rules: Mapping[str, str | Limit | None] | None = None,
        key: KeyFunc | None = None,
        trusted_proxies: Iterable[str] = (),
        fail_open: bool = True,
    ) -> None:
        setting = "RateLimitMiddleware"
        self.app = app
        self._connection = _Connection(client, location, options, setting)
        self._key = _Keyer(key, trusted_proxies, setting)
        self._fail_open = bool(fail_open)
        self._default: Limit | None = None
        if policy is not None or limit is not None or period is not None or period_ms is not None:
            self._default = Limit(
                policy,
                limit=limit,
                period=period,
                period_ms=period_ms,
                algorithm=algorithm,
                burst=burst,
                cost=cost,
                setting=setting,
            )
        elif algorithm is not None or burst is not None:
            raise ConfigError(f"{setting}: algorithm and burst go with limit and period")
        self._exact: dict[str, Limit | None] = {}
        self._prefixes: list[tuple[str, Limit | None]] = []
        for path, rule in (rules or {}).items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"{setting}: rules: {path!r} is not a path starting with '/'")
            if isinstance(rule, str):
                rule = Limit(rule, setting=f"{setting}: rules[{path!r}]")
            elif rule is not None and not isinstance(rule, Limit):
                raise ConfigError(
                    f"{setting}: rules[{path!r}] must be a policy name, a Limit or None, "
                    f"not {rule!r}"
                )
            if path.endswith("*"):
                self._prefixes.append((path[:-1], rule))
            else:
                self._exact[path] = rule
        self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        if self._default is None and not self._exact and not self._prefixes:
            raise ConfigError(f"{setting}: give a limit (policy=, or limit= and period=) or rules")

    def limit_for(self, path: str) -> Limit | None:
        """The limit of ``path``, None when it is not limited."""
        if path in self._exact:
            return self._exact[path]
        for prefix, rule in self._prefixes:
            if path.startswith(prefix):
                return rule
        return self._default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        limit = self.limit_for(request.url.path)
        if limit is None:
            await self.app(scope, receive, send)
            return
        who = await self._key(request)
        try:
            result = await limit.check(self._connection.get(), who)
        except grpc.RpcError as err:
            if not unreachable(err):
                raise
            if self._fail_open:
                logger.warning("rate limiter unavailable, request let through: %s", describe(err))
                await self.app(scope, receive, send)
                return
            logger.error("rate limiter unavailable, request refused: %s", describe(err))
            await JSONResponse(_UNAVAILABLE_BODY, status_code=503)(scope, receive, send)
            return
        headers = result.headers()
        if not result.allowed:
            response = JSONResponse(_denied_body(result), status_code=429, headers=headers)
            await response(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                if "x-ratelimit-limit" not in out:
                    for name, value in headers.items():
                        out[name] = value
            await send(message)

        await self.app(scope, receive, send_wrapper)


class RateLimitError(HTTPException):
    """A ``RateLimit`` dependency's refusal: 429 (over the limit) or 503 (fail-closed
    without the daemon). ``body`` is the JSON answer ``rate_limit_error_handler`` sends."""

    def __init__(
        self, status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail=body["message"], headers=headers)
        self.body = body


async def rate_limit_error_handler(request: Request, exc: Exception) -> Response:
    """Answers a ``RateLimitError`` with its JSON body and headers."""
    if not isinstance(exc, RateLimitError):
        raise exc
    return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)


def add_rate_limit_handler(app: Any) -> None:
    """Registers ``rate_limit_error_handler`` for ``RateLimitError`` on a Starlette or FastAPI
    app, so a ``RateLimit`` dependency's 429 has the ``{"error", "message", "retry_after"}``
    body (without it, FastAPI's own handler answers ``{"detail": message}``, same headers)."""
    app.add_exception_handler(RateLimitError, rate_limit_error_handler)


class RateLimit:
    """A FastAPI dependency limiting one route: ``Depends(RateLimit(policy="ai_chat"))`` or
    ``Depends(RateLimit(limit=60, period_ms=60_000))``.

    Takes what ``Limit`` takes, and ``key``, ``trusted_proxies``, ``fail_open`` and the
    connection as ``RateLimitMiddleware`` does. Sets the ``X-RateLimit-*`` headers on the
    route's response and returns the ``RateLimitResult`` (None when it failed open); over the
    limit it raises ``RateLimitError`` (429, with ``Retry-After``). Call
    ``add_rate_limit_handler(app)`` once for its JSON body.
    """

    def __init__(
        self,
        policy: str | None = None,
        *,
        limit: int | None = None,
        period: str | timedelta | None = None,
        period_ms: int | None = None,
        algorithm: str | None = None,
        burst: int | None = None,
        cost: int = 1,
        name: str | None = None,
        key: KeyFunc | None = None,
        trusted_proxies: Iterable[str] = (),
        fail_open: bool = True,
        client: ClientSource | None = None,
        location: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        setting = "RateLimit"
        self.limit = Limit(
            policy,
            limit=limit,
            period=period,
            period_ms=period_ms,
            algorithm=algorithm,
            burst=burst,
            cost=cost,
            name=name,
            setting=setting,
        )
        self._connection = _Connection(client, location, options, setting)
        self._key = _Keyer(key, trusted_proxies, setting)
        self._fail_open = bool(fail_open)

    async def __call__(self, request: Request, response: Response) -> RateLimitResult | None:
        who = await self._key(request)
        try:
            result = await self.limit.check(self._connection.get(), who)
        except grpc.RpcError as err:
            if not unreachable(err):
                raise
            if self._fail_open:
                logger.warning("rate limiter unavailable, request let through: %s", describe(err))
                return None
            logger.error("rate limiter unavailable, request refused: %s", describe(err))
            raise RateLimitError(503, dict(_UNAVAILABLE_BODY)) from err
        headers = result.headers()
        if not result.allowed:
            raise RateLimitError(429, _denied_body(result), headers)
        for name, value in headers.items():
            response.headers[name] = value
        return result


__all__ = [
    "ConfigError",
    "LarderSession",
    "Limit",
    "RateLimit",
    "RateLimitError",
    "RateLimitMiddleware",
    "SessionControl",
    "SessionMiddleware",
    "SessionUnavailable",
    "add_rate_limit_handler",
    "client_ip",
    "rate_limit_error_handler",
]
