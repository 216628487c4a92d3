"""A Django session engine on Larder's SessionService.

    SESSION_ENGINE = "larder_client.django.sessions"
    LARDER_SESSIONS = {                               # every key is optional
        "LOCATION": "unix:/run/larder/larder.sock",   # default "127.0.0.1:7379"
        "OPTIONS": {"TOKEN_FILE": "/etc/larder/token"},  # as for the cache backend (_connect)
        "ABSOLUTE_AGE": 30 * 24 * 3600,   # seconds a session lives at most, however much it
                                          # is used; None or 0 = the daemon's default (30 days)
        "ANONYMOUS_USER_ID": "anonymous", # the user id of sessions nobody is logged in to
        "MIGRATE_FROM": None,             # the engine used before, whose sessions are
                                          # taken over (e.g. "...backends.cache")
    }

Sessions live in SessionService (not in the cache): they survive restarts, only a hash of each
token is stored, and a user's sessions can be listed and ended (``revoke_user_sessions``, the
``larder_sessions`` management command).

How a Django session maps onto a Larder session
-----------------------------------------------

Session key. The key Django puts in the cookie is the Larder token: ``lds_`` and 43 url-safe
base64 characters (47 in all), made by the daemon, which keeps only its SHA-256. Django asks
of a key only that it be at least 8 characters long (``SessionBase._validate_session_key``),
and every character of the url-safe alphabet (``A-Z a-z 0-9 - _``) may stand in a cookie
without quoting. Django's own backends make 32 characters of ``a-z0-9`` and call them case
insensitive (for file systems that are); a token is case sensitive, which matters to nothing
here because Django never writes one to a file. ``_get_new_session_key`` is never used: a new
key comes from CreateSession. A cookie that does not look like a token (``lds_`` and url-safe
characters, e.g. a key of the engine used before) is taken for an unknown session without a
call to the daemon; with ``MIGRATE_FROM`` it is looked up once in that engine instead, and a
session found there is deleted there and stored here at ``save()``, under a new key.

Data. Each key of the session dict is its own key in the Larder session's data, and its value
is the text of ``SESSION_SERIALIZER``'s encoding of that one value (its bytes read as
latin-1, which maps every byte to one character and back; the default JSON serializer writes
plain ASCII). ``save()`` sends only what changed since the session was read (UpdateSession's
``set`` and ``remove``), and the daemon merges it, so two requests that change different keys
at the same time both keep their change; Django's own backends write the whole dict back and
the last request wins. Two requests changing the same key: the last write wins, as in Django.
A data key written by another program that the serializer cannot read is left out of the
session dict, and left alone on the daemon. Nothing is signed: like Django's cache backend,
the store is trusted. The daemon's limits apply: at most 128 keys, each of 1 to 256 bytes
(so ``""`` cannot be a session key), values of at most 64 KiB, 256 KiB in all; more fails
with ``larder_client.LarderError`` at ``save()``.

User and expiry. The Larder session's user id is ``_auth_user_id``
(``django.contrib.auth.SESSION_KEY``), or ``ANONYMOUS_USER_ID`` when nobody is logged in
(SessionService needs a user id of 1 to 256 bytes for every session; pick a placeholder that
no real user id can equal). The idle TTL is ``get_expiry_age()`` (``SESSION_COOKIE_AGE``, or
what ``set_expiry`` gave), sliding forward each time the session is read or written. An
expiry at a fixed date (``set_expiry`` with a datetime or timedelta) becomes an idle TTL and an
absolute TTL both equal to the time left, so use does not extend it. ``ABSOLUTE_AGE`` bounds
every session. An expiry already past ends the session at ``save()`` (RevokeSession).

SessionService fixes a session's user id and TTLs when it is created. So when ``save()``
finds that the dict's user id differs from the daemon's (login, logout without ``flush``), that
the idle TTL differs (``set_expiry`` with seconds, or a new ``SESSION_COOKIE_AGE``), or that
``_session_expiry`` changed, it writes the changes to the old session (which checks that it is
still live and merges in what other requests wrote), creates a new session with the merged
data and the new user and TTLs, and revokes the old one. The new token becomes the session
key, and ``SessionMiddleware`` puts ``session_key`` in the cookie after ``save()``, so the
browser follows. ``django.contrib.auth.login()`` calls ``cycle_key()`` before it sets
``_auth_user_id``, so a login rotates the token and then replaces the session: one token more
than needed, but the old token stops working at once either way. The other mappings
considered were worse: giving every session the placeholder user id and keeping the real one
only in the data would lose ListSessions and RevokeUserSessions ("log out everywhere"), and
creating the Larder session only at login would leave anonymous session data (CSRF token,
cart, messages) without a store.

Operations. ``cycle_key()`` is RotateSession: same session id and data, new token, and the old
token stops working. ``flush()`` and ``delete()`` are RevokeSession. ``exists()`` is
GetSession, which counts as a use of the session. ``clear_expired()`` does nothing: the daemon
sweeps expired sessions itself. A ``save()`` of a session that was revoked or expired
meanwhile raises ``UpdateError`` (``SessionMiddleware`` turns it into ``SessionInterrupted``)
and never brings it back.

Errors. When the daemon cannot be reached, a request that touches ``request.session`` fails with
the ``grpc.RpcError`` (a 500), after the client's retries of reads (``RETRIES``) within
``SOCKET_TIMEOUT``. Treating an outage as "no session" would log every user out and hand out
new cookies to replace theirs.

The asyncio methods (``aload``, ``asave``, ``acycle_key``, ...) run natively on
``larder_client.aio``; the same code decides what to call (see ``_Rpc``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils import timezone

from .._calls import client_fields
from .._types import Session
from ._connect import async_client, sync_client

T = TypeVar("T")

SETTING = "LARDER_SESSIONS"
DEFAULT_LOCATION = "127.0.0.1:7379"
DEFAULT_ANONYMOUS_USER_ID = "anonymous"
_SETTING_KEYS = frozenset(
    {"LOCATION", "OPTIONS", "ABSOLUTE_AGE", "ANONYMOUS_USER_ID", "MIGRATE_FROM"}
)
# Where SessionBase.set_expiry keeps a custom expiry.
EXPIRY_KEY = "_session_expiry"
# What a token looks like, loosely (``lds_`` + 43 characters today): enough to skip the round
# trip for keys of another engine, without tying the client to the token's exact length.
_TOKEN = re.compile(r"lds_[A-Za-z0-9_-]{1,256}")

logger = logging.getLogger(__name__)


def looks_like_token(key: object) -> bool:
    """Whether ``key`` has the form of a Larder session token."""
    return isinstance(key, str) and _TOKEN.fullmatch(key) is not None


@dataclass(frozen=True)
class Config:
    """``settings.LARDER_SESSIONS``, checked."""

    location: Any
    options: Mapping[str, Any]
    absolute_age_ms: int  # 0 = the daemon's default
    anonymous_user_id: str
    migrate_from: str | None  # the SESSION_ENGINE whose sessions are taken over


def config() -> Config:
    """Reads and checks ``settings.LARDER_SESSIONS``; ImproperlyConfigured names what is wrong.

    The connection (``LOCATION`` and ``OPTIONS``) is checked by ``_connect`` when the first
    call is made.
    """
    raw = getattr(settings, SETTING, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - _SETTING_KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING}: unknown key(s) {unknown}; known: {sorted(_SETTING_KEYS)}"
        )
    options = raw.get("OPTIONS")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"{SETTING}: OPTIONS must be a dict of connection options")
    age = raw.get("ABSOLUTE_AGE")
    if isinstance(age, timedelta):
        age = age.total_seconds()
    if age is None or age == 0:
        absolute_age_ms = 0
    elif isinstance(age, (int, float)) and not isinstance(age, bool) and age > 0:
        absolute_age_ms = max(1, int(age * 1000))
    else:
        raise ImproperlyConfigured(
            f"{SETTING}: ABSOLUTE_AGE must be a positive number of seconds, or None for the "
            f"daemon's default, not {age!r}"
        )
    anonymous = raw.get("ANONYMOUS_USER_ID", DEFAULT_ANONYMOUS_USER_ID)
    if not isinstance(anonymous, str) or not 1 <= len(anonymous.encode()) <= 256:
        raise ImproperlyConfigured(
            f"{SETTING}: ANONYMOUS_USER_ID must be a string of 1 to 256 bytes, not {anonymous!r}"
        )
    migrate_from = raw.get("MIGRATE_FROM") or None
    if migrate_from is not None and (not isinstance(migrate_from, str) or migrate_from == __name__):
        raise ImproperlyConfigured(
            f"{SETTING}: MIGRATE_FROM names the session engine used before, e.g. "
            f"'django.contrib.sessions.backends.cache', not {migrate_from!r}"
        )
    return Config(
        raw.get("LOCATION", DEFAULT_LOCATION), options, absolute_age_ms, anonymous, migrate_from
    )


@dataclass(frozen=True)
class _Rpc:
    """One call of ``larder_client``'s ``Sessions`` sub-API, by method name and arguments.

    The blocking and the asyncio client have the same methods with the same arguments, so the
    engine's logic is written once, as generators that yield the calls to make and receive
    their answers; ``_run`` makes them with the blocking client, ``_arun`` with the asyncio
    one.
    """

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _TakeOver:
    """Read the session of ``key`` from the ``MIGRATE_FROM`` engine, and delete it there."""

    key: str


Steps = Generator[_Rpc | _TakeOver, Any, T]


def _old_store(cfg: Config, key: str) -> SessionBase:
    assert cfg.migrate_from is not None
    try:
        engine = import_module(cfg.migrate_from)
    except ImportError as err:
        raise ImproperlyConfigured(f"{SETTING}: MIGRATE_FROM: {err}") from err
    return engine.SessionStore(key)


def _take_over(cfg: Config, key: str) -> dict[str, Any]:
    old = _old_store(cfg, key)
    values = old.load()
    if values:
        old.delete(key)
    return values


async def _atake_over(cfg: Config, key: str) -> dict[str, Any]:
    old = _old_store(cfg, key)
    values = await old.aload()
    if values:
        await old.adelete(key)
    return values


def _run(cfg: Config, steps: Steps[T]) -> T:
    api = None
    try:
        step = next(steps)
        while True:
            if isinstance(step, _TakeOver):
                step = steps.send(_take_over(cfg, step.key))
                continue
            if api is None:
                api = sync_client(cfg.location, cfg.options, SETTING).sessions
            step = steps.send(getattr(api, step.method)(*step.args, **step.kwargs))
    except StopIteration as done:
        return done.value
    finally:
        steps.close()


async def _arun(cfg: Config, steps: Steps[T]) -> T:
    api = None
    try:
        step = next(steps)
        while True:
            if isinstance(step, _TakeOver):
                step = steps.send(await _atake_over(cfg, step.key))
                continue
            if api is None:
                api = async_client(cfg.location, cfg.options, SETTING).sessions
            step = steps.send(await getattr(api, step.method)(*step.args, **step.kwargs))
    except StopIteration as done:
        return done.value
    finally:
        steps.close()


@dataclass(frozen=True)
class _Lifetime:
    """The TTLs a new Larder session gets (milliseconds; absolute 0 = the daemon's default)."""

    idle_ttl_ms: int
    absolute_ttl_ms: int
    fixed: bool  # ends at a set date (set_expiry with a datetime): use does not extend it


class SessionStore(SessionBase):
    """Django's session interface over a Larder session (see the module's description).

    ``device_info`` and ``ip`` are recorded when a Larder session is created (this module's
    ``SessionMiddleware`` fills them in from the request); ``session_id`` is the Larder
    session's id once it has been read or written (None before).
    """

    def __init__(self, session_key: str | None = None) -> None:
        self._config = config()
        # The daemon's session as last read or written here (None: not looked up, or none).
        self._server: Session | None = None
        # Encoded values of the keys this object read or wrote: what save() diffs against.
        self._stored: dict[str, str] | None = None
        # The data was taken over from the MIGRATE_FROM engine: save() creates the session.
        self._taken_over = False
        self.device_info = ""
        self.ip = ""
        super().__init__(session_key)

    @property
    def session_id(self) -> str | None:
        """The Larder session id (``ses_...``, not secret) once known, else None."""
        return None if self._server is None else self._server.session_id

    # --- what goes to the daemon -----------------------------------------------------------

    def _encode(self, values: Mapping[Any, Any]) -> dict[str, str]:
        serializer = self.serializer()
        encoded = {}
        for key, value in values.items():
            if not isinstance(key, str):
                raise TypeError(f"a Larder session's keys are strings; {key!r} is not")
            data = serializer.dumps(value)
            encoded[key] = data if isinstance(data, str) else data.decode("latin-1")
        return encoded

    def _decode(self, data: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        """The session dict of a Larder session's data, and the encoded values it came from."""
        serializer = self.serializer()
        values: dict[str, Any] = {}
        stored: dict[str, str] = {}
        for key, text in data.items():
            try:
                values[key] = serializer.loads(text.encode("latin-1"))
            except (ValueError, TypeError):  # another program's format: left alone
                logger.warning("Larder session data key %r is not readable; left out", key)
                continue
            stored[key] = text
        return values, stored

    def _user_id(self, values: Mapping[str, Any]) -> str:
        user = values.get(SESSION_KEY)
        if user is None or user == "":
            return self._config.anonymous_user_id
        return user if isinstance(user, str) else str(user)

    def _lifetime(self, values: Mapping[str, Any]) -> _Lifetime | None:
        """The TTLs for ``values``' expiry, or None when that expiry has passed."""
        expiry = values.get(EXPIRY_KEY)
        cap = self._config.absolute_age_ms
        if isinstance(expiry, (datetime, str)):
            left = self.get_expiry_date(expiry=expiry) - timezone.now()
            left_ms = left // timedelta(milliseconds=1)
            if left_ms <= 0:
                return None
            ttl = min(left_ms, cap) if cap else left_ms
            return _Lifetime(ttl, ttl, fixed=True)
        age = self.get_expiry_age(expiry=expiry)
        if age <= 0:
            return None
        return _Lifetime(int(age * 1000), cap, fixed=False)

    def _remember(self, session: Session | None, stored: dict[str, str] | None) -> None:
        self._server = session
        self._stored = stored

    # --- the steps of each operation (see _Rpc) ---------------------------------------------

    def _load_steps(self) -> Steps[dict[str, Any]]:
        key = self.session_key
        session = (yield _Rpc("get", (key,))) if looks_like_token(key) else None
        if session is None:
            self._session_key = None
            self._remember(None, None)
            if key is not None and not looks_like_token(key) and self._config.migrate_from:
                values = yield _TakeOver(key)
                if values:
                    # A session of the engine used before: save() stores it as a new Larder
                    # session, and SessionMiddleware sends the new key.
                    self._taken_over = self.modified = True
                    return dict(values)
            return {}
        values, stored = self._decode(session.data)
        self._remember(session, stored)
        return values

    def _session_steps(self) -> Steps[dict[str, Any]]:
        """``SessionBase._get_session()``, loading through the steps."""
        self.accessed = True
        try:
            return self._session_cache
        except AttributeError:
            pass
        if self.session_key is None:
            self._session_cache = {}
        else:
            self._session_cache = yield from self._load_steps()
        return self._session_cache

    def _exists_steps(self, session_key: str | None) -> Steps[bool]:
        if not looks_like_token(session_key):
            return False
        return (yield _Rpc("get", (session_key,))) is not None

    def _create_steps(self) -> Steps[None]:
        values = self._get_session(no_load=True)
        lifetime = self._lifetime(values)
        self.modified = True
        if lifetime is None:  # expired before it began: nothing to store
            self._session_key = None
            self._remember(None, None)
            return
        encoded = self._encode(values)
        token, session = yield _Rpc(
            "create",
            (self._user_id(values), encoded),
            {
                "idle_ttl_ms": lifetime.idle_ttl_ms,
                "absolute_ttl_ms": lifetime.absolute_ttl_ms,
                **client_fields(self.device_info, self.ip),
            },
        )
        self._session_key = token
        self._remember(session, encoded)
        self._taken_over = False

    def _save_steps(self, must_create: bool) -> Steps[None]:
        if self.session_key is None or must_create:
            # A must_create with a key still makes a new session: the daemon picks the token.
            yield from self._create_steps()
            return
        values = yield from self._session_steps()
        token = self.session_key
        if token is None:
            if self._taken_over:  # the load took the session over from MIGRATE_FROM
                yield from self._create_steps()
                return
            raise UpdateError  # the load found nothing: revoked or expired meanwhile
        if self._server is None or self._stored is None:
            # The dict was set without a load (clear(), say): diff against the daemon's data.
            session = yield _Rpc("get", (token,))
            if session is None:
                raise UpdateError
            self._remember(session, self._decode(session.data)[1])
        server, stored = self._server, self._stored
        assert server is not None and stored is not None
        lifetime = self._lifetime(values)
        if lifetime is None:  # its expiry has passed: the session ends now
            yield _Rpc("revoke", (token,))
            self._remember(None, None)
            return
        encoded = self._encode(values)
        user_id = self._user_id(values)
        replace = (
            server.user_id != user_id
            or stored.get(EXPIRY_KEY) != encoded.get(EXPIRY_KEY)
            or (not lifetime.fixed and server.idle_ttl_ms != lifetime.idle_ttl_ms)
        )
        changed = {k: v for k, v in encoded.items() if stored.get(k) != v}
        removed = [k for k in stored if k not in encoded]
        # Also when nothing changed: it checks that the session is still live (UpdateError
        # otherwise, never a resurrection) and slides its idle expiry.
        session = yield _Rpc("update", (token,), {"set": changed, "remove": removed})
        if session is None:
            raise UpdateError
        if replace:
            new_token, session = yield _Rpc(
                "create",
                (user_id, session.data),
                {
                    "idle_ttl_ms": lifetime.idle_ttl_ms,
                    "absolute_ttl_ms": lifetime.absolute_ttl_ms,
                    **client_fields(self.device_info or session.device_info, self.ip or session.ip),
                },
            )
            yield _Rpc("revoke", (token,))
            self._session_key = new_token
        self._remember(session, encoded)

    def _cycle_steps(self) -> Steps[None]:
        yield from self._session_steps()
        token = self.session_key
        rotated = None if token is None else (yield _Rpc("rotate", (token,)))
        if rotated is None:
            # No session yet, or it ended meanwhile: a new one with the data, as Django does.
            yield from self._create_steps()
            return
        new_token, session = rotated
        self._session_key = new_token
        self._remember(session, self._stored)
        if self._stored is None:
            self._stored = self._decode(session.data)[1]
        self.modified = True

    def _delete_steps(self, session_key: str | None) -> Steps[None]:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        if looks_like_token(session_key):
            yield _Rpc("revoke", (session_key,))
        if session_key == self.session_key:
            self._remember(None, None)

    def _session_id_steps(self) -> Steps[str | None]:
        if self._server is None and looks_like_token(self.session_key):
            session = yield _Rpc("get", (self.session_key,))
            if session is not None:
                self._server = session
        return self.session_id

    # --- SessionBase -------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        return _run(self._config, self._load_steps())

    async def aload(self) -> dict[str, Any]:
        return await _arun(self._config, self._load_steps())

    def exists(self, session_key: str | None) -> bool:
        return _run(self._config, self._exists_steps(session_key))

    async def aexists(self, session_key: str | None) -> bool:
        return await _arun(self._config, self._exists_steps(session_key))

    def create(self) -> None:
        _run(self._config, self._create_steps())

    async def acreate(self) -> None:
        await _arun(self._config, self._create_steps())

    def save(self, must_create: bool = False) -> None:
        _run(self._config, self._save_steps(must_create))

    async def asave(self, must_create: bool = False) -> None:
        await _arun(self._config, self._save_steps(must_create))

    def delete(self, session_key: str | None = None) -> None:
        _run(self._config, self._delete_steps(session_key))

    async def adelete(self, session_key: str | None = None) -> None:
        await _arun(self._config, self._delete_steps(session_key))

    def cycle_key(self) -> None:
        """RotateSession: a new token for the same session; the old token stops working."""
        _run(self._config, self._cycle_steps())

    async def acycle_key(self) -> None:
        """RotateSession: a new token for the same session; the old token stops working."""
        await _arun(self._config, self._cycle_steps())

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing to do: the daemon sweeps expired sessions itself."""

    @classmethod
    async def aclear_expired(cls) -> None:
        """Nothing to do: the daemon sweeps expired sessions itself."""


class SessionMiddleware(DjangoSessionMiddleware):
    """Django's ``SessionMiddleware`` that also records, in each Larder session it creates,
    the client's ``User-Agent`` (as ``device_info``) and address (``REMOTE_ADDR``, as ``ip``),
    which ``larder_sessions list`` and ``Sessions.list`` show. Use it in place of
    ``django.contrib.sessions.middleware.SessionMiddleware``; behind a proxy, put a middleware
    that sets ``REMOTE_ADDR`` to the client's address before it."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        session = request.session
        if isinstance(session, SessionStore):
            session.device_info = request.META.get("HTTP_USER_AGENT", "")
            session.ip = request.META.get("REMOTE_ADDR", "") or ""


def _user_id_of(user: Any) -> str:
    if hasattr(user, "pk"):  # a user object (or AnonymousUser, whose pk is None)
        if user.pk is None:
            raise ValueError("an anonymous or unsaved user has no sessions")
        meta = getattr(user, "_meta", None)
        # The form django.contrib.auth.login() stores in _auth_user_id.
        return meta.pk.value_to_string(user) if meta is not None else str(user.pk)
    user_id = str(user)
    if not user_id:
        raise ValueError("user id must not be empty")
    return user_id


def _revoke_steps(user: Any, except_current: SessionBase | str | None) -> Steps[int]:
    user_id = _user_id_of(user)
    if except_current is None:
        keep = ""
    elif isinstance(except_current, str):
        keep = except_current
    elif isinstance(except_current, SessionStore):
        keep = (yield from except_current._session_id_steps()) or ""
    else:
        raise TypeError(
            "except_current is a session of this engine (request.session) or a session id, "
            f"not {type(except_current).__name__}"
        )
    return (yield _Rpc("revoke_user", (user_id, keep)))


def revoke_user_sessions(user: Any, except_current: SessionBase | str | None = None) -> int:
    """Ends every Larder session of ``user`` (a user object, or its id as stored in
    ``_auth_user_id``) and returns how many ended: "log out everywhere".

    ``except_current`` keeps one session: ``request.session`` ("log out my other devices"), or
    a session id (``ses_...``) from ``Sessions.list``.
    """
    return _run(config(), _revoke_steps(user, except_current))


async def arevoke_user_sessions(user: Any, except_current: SessionBase | str | None = None) -> int:
    """``revoke_user_sessions`` on the asyncio client."""
    return await _arun(config(), _revoke_steps(user, except_current))


__all__ = [
    "SessionMiddleware",
    "SessionStore",
    "arevoke_user_sessions",
    "looks_like_token",
    "revoke_user_sessions",
]
