"""Server-side Flask sessions on Larder's SessionService: ``LarderSessionInterface``.

    from larder_client.flask import LarderSessionInterface

    app.config["LARDER_SESSION_TARGET"] = "unix:/run/larder/larder.sock"
    LarderSessionInterface().init_app(app)  # app.session_interface = ...

``flask.session`` keeps working as with Flask's signed cookie, but the cookie holds only the
session's token (``lds_`` and 43 url-safe characters) and the data lives in the daemon.

Settings (``app.config``; a constructor argument of the same name, lower case, wins):

- ``LARDER_SESSION_TARGET``: ``host:port`` or ``unix:/path``, default ``127.0.0.1:7379``;
- ``LARDER_SESSION_`` + a connection option of ``larder_client._options`` (``TOKEN``,
  ``TOKEN_FILE``, ``TLS``, ``TLS_CA_FILE``, ``TLS_CERT_FILE``, ``TLS_KEY_FILE``,
  ``ALLOW_INSECURE_TOKEN``, ``SOCKET_TIMEOUT``, ``RETRIES``), or ``options={...}``;
- ``LARDER_SESSION_ABSOLUTE_LIFETIME``: seconds (or a timedelta) a session lives at most,
  however much it is used; None: the daemon's default (30 days);
- ``LARDER_SESSION_ANONYMOUS_USER_ID``: the user id of sessions nobody is logged in to,
  default ``anonymous`` (the daemon needs a user id for every session);
- ``LARDER_SESSION_USER_KEY``: the session key holding the logged-in user's id, default
  ``_user_id`` (Flask-Login's), so that ``login_user``/``logout_user`` move the session too.

Flask's own settings keep their meaning: ``SESSION_COOKIE_NAME``, ``_DOMAIN``, ``_PATH``,
``_SECURE``, ``_HTTPONLY``, ``_SAMESITE`` and ``_PARTITIONED`` make the cookie;
``PERMANENT_SESSION_LIFETIME`` is the session's idle TTL on the daemon (sliding with each
request that reads it) and, for a ``session.permanent`` session, the cookie's expiry, sent
again on every request that used the session while ``SESSION_REFRESH_EACH_REQUEST`` is on.

How a Flask session maps onto a Larder session (as ``larder_client.django.sessions``)
-----------------------------------------------------------------------------------------

Data. Each key of ``flask.session`` is one key of the Larder session's data, holding the JSON
of its value as Flask's ``TaggedJSONSerializer`` writes it (so tuples, bytes, datetimes, UUIDs
and ``Markup`` round-trip as with Flask's cookie; plain values are plain JSON that other
clients read). A data key another program wrote that is not JSON is left out, and left alone.
The session is looked up (GetSession) only when the app first touches it, so requests that
never do cost no call. At the response only the keys whose JSON changed are sent
(UpdateSession ``set``/``remove``; a value changed in place counts), so two requests changing
different keys at once both keep their change.

Life cycle. Nothing is stored until the first write, which creates the session (under the
anonymous user id, or the id in ``USER_KEY``). The daemon fixes a session's user id at
creation, so when ``USER_KEY`` changes (a login, a logout that pops it) the changes are
written to the old session, a new one is created with the merged data and the old one is
revoked: the token always changes at login. ``session.clear()`` (how Flask apps log out)
ends the session (RevokeSession) and deletes the cookie. A session revoked elsewhere (a log
out everywhere) is never brought back: the request's changes are dropped and the cookie
deleted. ``login_session``, ``logout_session`` and ``revoke_user_sessions`` do the same
explicitly, at once.

Errors. When the daemon cannot be reached, touching the session raises ``SessionUnavailable``
(werkzeug's ``ServiceUnavailable``, so a 503 unless the app handles it) and the cookie is left
alone: an outage never logs anyone out. A failure while saving at the response propagates
(Flask answers 500), also without touching the cookie.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from flask import Flask, current_app, has_request_context
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SessionInterface, SessionMixin
from flask.wrappers import Request, Response
from werkzeug.exceptions import ServiceUnavailable

from .._calls import client_fields
from .._client import Sessions
from .._invoke import describe, unreachable
from .._options import CONNECTION_OPTIONS, ConfigError, sync_client
from .._types import Session
from .cache import _check_connection

logger = logging.getLogger("larder_client.flask")

CONFIG_PREFIX = "LARDER_SESSION_"
DEFAULT_TARGET = "127.0.0.1:7379"
DEFAULT_ANONYMOUS_USER_ID = "anonymous"
DEFAULT_USER_KEY = "_user_id"  # Flask-Login's
_OWN_CONFIG = {"TARGET", "ABSOLUTE_LIFETIME", "ANONYMOUS_USER_ID", "USER_KEY"}
_EXTENSION = "larder_client.flask.sessions"
# What a token looks like, loosely (``lds_`` + 43 characters today).
_TOKEN = re.compile(r"lds_[A-Za-z0-9_-]{1,256}")
_MAX_TTL_S = 365 * 24 * 3600  # the daemon's default bound on a session's TTLs (--session-max-ttl)

_serializer = TaggedJSONSerializer()


class SessionUnavailable(ServiceUnavailable):
    """The session store could not be reached (a 503); the ``grpc.RpcError`` is
    ``__cause__``. Register ``app.errorhandler(SessionUnavailable)`` for another answer."""

    description = "The session store is unavailable; try again shortly."


def looks_like_token(value: object) -> bool:
    """Whether ``value`` has the form of a Larder session token."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def _encode(key: Any, value: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"session keys are strings; {key!r} is not")
    return _serializer.dumps(value)


def _ttl_ms(value: Any, name: str) -> int:
    """Milliseconds of a positive duration (seconds or timedelta) up to 365 days; 0 for None."""
    if value is None:
        return 0
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    return max(1, int(min(seconds, _MAX_TTL_S) * 1000))


def _user_id_arg(user_id: Any, anonymous: str) -> str:
    if not isinstance(user_id, str):
        user_id = str(user_id)
    if not 1 <= len(user_id.encode()) <= 256:
        raise ValueError(f"user id must be 1 to 256 bytes, not {user_id!r}")
    if user_id == anonymous:
        raise ValueError(f"user id {user_id!r} is the anonymous user id")
    return user_id


@dataclass(frozen=True)
class _Settings:
    target: str
    options: Mapping[str, Any]
    absolute_ttl_ms: int
    anonymous_user_id: str
    user_key: str


class LarderSession(SessionMixin):
    """``flask.session``: a mutable mapping of JSON values, loaded from the daemon when first
    touched. ``modified``, ``permanent``, ``new`` and ``accessed`` are Flask's;
    ``session_id`` (``ses_...``, not secret) and ``user_id`` (None while anonymous) are the
    Larder session's."""

    def __init__(self, token: str | None, cookie_sent: bool, device_info: str, ip: str) -> None:
        self.token = token  # the live session's token; None: there is none
        self.cookie_sent = cookie_sent
        self.device_info = device_info
        self.ip = ip
        self.server: Session | None = None
        self.values: dict[str, Any] = {}
        self.stored: dict[str, str] = {}  # JSON of each key as on the daemon (readable keys)
        self.loaded = False
        self.error: BaseException | None = None  # the daemon was unreachable
        self.token_changed = False  # send the new token
        self.ended = False  # logged out or revoked: delete the cookie
        self.gone = False  # revoked by someone else: never recreated by this request
        self.modified = False
        self.new = token is None
        self._anonymous = DEFAULT_ANONYMOUS_USER_ID

    # --- the state --------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self.error is not None:
            raise SessionUnavailable() from self.error
        if not self.loaded:
            server = None
            if self.token is not None:
                interface = current_app.session_interface
                assert isinstance(interface, LarderSessionInterface)
                try:
                    server = interface.sessions(current_app).get(self.token)
                except grpc.RpcError as err:
                    if not unreachable(err):
                        raise
                    logger.warning("session lookup failed: %s", describe(err))
                    self.error = err
                    raise SessionUnavailable() from err
            self.take(self.token if server is not None else None, server)
            self.new = server is None
            self.loaded = True
        return self.values

    def take(self, token: str | None, server: Session | None) -> None:
        """The daemon's session (or none) becomes this request's."""
        self.token, self.server = token, server
        self.values, self.stored = {}, {}
        self.loaded = True
        if server is None:
            return
        for key, text in server.data.items():
            try:
                self.values[key] = _serializer.loads(text)
            except (ValueError, TypeError, KeyError):
                continue  # another program's format: left out, and left alone
            self.stored[key] = text

    def end(self, gone: bool = False) -> None:
        self.take(None, None)
        self.ended, self.gone, self.token_changed = True, self.gone or gone, False
        self.modified = True

    def changes(self) -> tuple[dict[str, str], list[str], dict[str, str]]:
        """(keys to set, keys to remove, every key's JSON)."""
        current = {key: _encode(key, value) for key, value in self.values.items()}
        changed = {k: v for k, v in current.items() if self.stored.get(k) != v}
        removed = [k for k in self.stored if k not in current]
        return changed, removed, current

    # --- the mapping --------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        _encode(key, value)  # a value JSON cannot hold fails here, not at the response
        self._load()[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._load()[key]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._load()))

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: object) -> bool:
        return key in self._load()

    def clear(self) -> None:
        self._load().clear()
        self.modified = True

    def __repr__(self) -> str:
        return f"LarderSession({self.values!r})"

    @property
    def session_id(self) -> str | None:
        """The Larder session id (``ses_...``, not secret), None without a session."""
        self._load()
        return None if self.server is None else self.server.session_id

    @property
    def user_id(self) -> str | None:
        """The Larder session's user id, None without a session or while anonymous."""
        self._load()
        if self.server is None or self.server.user_id == self._anonymous:
            return None
        return self.server.user_id


class LarderSessionInterface(SessionInterface):
    """Flask's ``SessionInterface`` on Larder's SessionService (see the module's description).

    Give it to an app with ``init_app(app)`` (or ``LarderSessionInterface(app)``), which
    checks the settings now (``ConfigError`` naming the key), or set
    ``app.session_interface`` yourself (checked at the first request).
    """

    session_class = LarderSession

    def __init__(
        self,
        app: Flask | None = None,
        *,
        target: str | None = None,
        options: Mapping[str, Any] | None = None,
        absolute_lifetime: float | timedelta | None = None,
        anonymous_user_id: str | None = None,
        user_key: str | None = None,
    ) -> None:
        self._given: dict[str, Any] = {
            "TARGET": target,
            "ABSOLUTE_LIFETIME": absolute_lifetime,
            "ANONYMOUS_USER_ID": anonymous_user_id,
            "USER_KEY": user_key,
        }
        self._options = None if options is None else dict(options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Checks the settings and makes this the app's session interface."""
        app.extensions[_EXTENSION] = self._read_settings(app)
        app.session_interface = self

    # --- settings -----------------------------------------------------------------------------

    def _read_settings(self, app: Flask) -> _Settings:
        config = app.config
        unknown = sorted(
            key
            for key in config
            if key.startswith(CONFIG_PREFIX)
            and key[len(CONFIG_PREFIX) :] not in _OWN_CONFIG | CONNECTION_OPTIONS
        )
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}")

        def setting(name: str, default: Any) -> Any:
            given = self._given[name]
            if given is not None:
                return given
            return config.get(CONFIG_PREFIX + name, default)

        target = setting("TARGET", DEFAULT_TARGET)
        if self._options is not None:
            options = self._options
            where, name = "LarderSessionInterface", lambda o: "target" if o == "LOCATION" else o
        else:
            options = {
                option: config[CONFIG_PREFIX + option]
                for option in CONNECTION_OPTIONS
                if config.get(CONFIG_PREFIX + option) is not None
            }
            where = "Flask config"
            name = lambda o: CONFIG_PREFIX + ("TARGET" if o == "LOCATION" else o)
        _check_connection(target, options, where, name)
        absolute = _ttl_ms(setting("ABSOLUTE_LIFETIME", None), CONFIG_PREFIX + "ABSOLUTE_LIFETIME")
        anonymous = setting("ANONYMOUS_USER_ID", DEFAULT_ANONYMOUS_USER_ID)
        user_key = setting("USER_KEY", DEFAULT_USER_KEY)
        for key, value in (("ANONYMOUS_USER_ID", anonymous), ("USER_KEY", user_key)):
            if not isinstance(value, str) or not 1 <= len(value.encode()) <= 256:
                raise ConfigError(f"{CONFIG_PREFIX}{key} must be a string of 1 to 256 bytes")
        return _Settings(target, options, absolute, anonymous, user_key)

    def settings(self, app: Flask) -> _Settings:
        found = app.extensions.get(_EXTENSION)
        if found is None:
            found = app.extensions[_EXTENSION] = self._read_settings(app)
        return found

    def sessions(self, app: Flask) -> Sessions:
        """The process's shared client's SessionService for ``app``."""
        s = self.settings(app)
        return sync_client(s.target, s.options, "Flask config").sessions

    def idle_ttl_ms(self, app: Flask) -> int:
        return _ttl_ms(app.permanent_session_lifetime, "PERMANENT_SESSION_LIFETIME")

    def _create(
        self, app: Flask, session: LarderSession, user_id: str, data: Mapping[str, str]
    ) -> tuple[str, Session]:
        return self.sessions(app).create(
            user_id,
            data,
            idle_ttl_ms=self.idle_ttl_ms(app),
            absolute_ttl_ms=self.settings(app).absolute_ttl_ms,
            **client_fields(session.device_info, session.ip),
        )

    def user_id_of(self, app: Flask, values: Mapping[str, Any]) -> str:
        s = self.settings(app)
        user = values.get(s.user_key)
        if user is None or user == "":
            return s.anonymous_user_id
        return user if isinstance(user, str) else str(user)

    # --- SessionInterface -------------------------------------------------------------------

    def open_session(self, app: Flask, request: Request) -> LarderSession:
        s = self.settings(app)
        cookie = request.cookies.get(self.get_cookie_name(app))
        token = cookie if looks_like_token(cookie) else None
        session = self.session_class(
            token,
            cookie is not None,
            request.headers.get("User-Agent", ""),
            request.remote_addr or "",
        )
        session._anonymous = s.anonymous_user_id
        return session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, LarderSession):
            return
        if session.accessed:
            response.vary.add("Cookie")
        if session.error is not None:
            return  # the daemon was unreachable: the cookie stays as it was
        if session.loaded:
            try:
                self._write(app, session)
            except grpc.RpcError as err:
                # Flask saves again after answering the error: this session is done.
                session.error = err
                if unreachable(err):
                    raise SessionUnavailable() from err
                raise
        self._set_cookie(app, session, response)

    def _write(self, app: Flask, session: LarderSession) -> None:
        changed, removed, current = session.changes()
        user_id = self.user_id_of(app, session.values)
        token = session.token
        if token is None:
            if current and not session.gone:
                new_token, server = self._create(app, session, user_id, current)
                session.take(new_token, server)
                session.token_changed = True
            return
        server = session.server
        assert server is not None
        sessions = self.sessions(app)
        if not current and removed:  # emptied (session.clear(), a logout): it ends
            sessions.revoke(token)
            session.end()
            return
        replace = server.user_id != user_id or server.idle_ttl_ms != self.idle_ttl_ms(app)
        if not (changed or removed or replace):
            return  # the lookup already slid the idle expiry
        updated = sessions.update(token, changed, removed)
        if updated is None:
            logger.info("session revoked during the request; its changes are dropped")
            session.end(gone=True)
            return
        if replace:
            new_token, new = self._create(app, session, user_id, updated.data)
            sessions.revoke(token)
            session.take(new_token, new)
            session.token_changed = True
        else:
            session.server = updated
            session.stored = dict(current)

    def _set_cookie(self, app: Flask, session: LarderSession, response: Response) -> None:
        name = self.get_cookie_name(app)
        flags: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "partitioned": self.get_cookie_partitioned(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if session.token is not None:
            if session.token_changed or (session.loaded and self.should_set_cookie(app, session)):
                expires = self.get_expiration_time(app, session)
                response.set_cookie(name, session.token, expires=expires, **flags)
                response.vary.add("Cookie")
        elif session.ended or (session.loaded and session.cookie_sent):
            # Logged out, or the cookie named no live session (unknown, expired, revoked).
            response.delete_cookie(name, **flags)
            response.vary.add("Cookie")


# --- helpers for views ------------------------------------------------------------------------


def _current() -> tuple[Flask, LarderSessionInterface, LarderSession]:
    if not has_request_context():
        raise RuntimeError("this needs a request context (call it from a view)")
    from flask import session

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    interface = app.session_interface
    real = session._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(interface, LarderSessionInterface) or not isinstance(real, LarderSession):
        raise RuntimeError(  # noqa: TRY004  (a setup mistake, not a bad argument)
            "the app's session interface is not LarderSessionInterface"
        )
    return app, interface, real


def _call(action: Any) -> Any:
    try:
        return action()
    except grpc.RpcError as err:
        if unreachable(err):
            raise SessionUnavailable() from err
        raise


def login_session(user_id: Any) -> None:
    """Logs ``user_id`` in on the current session, now: writes pending changes to the old
    session, creates one under ``user_id`` with the merged data (and ``USER_KEY`` set), and
    revokes the old one. The token always changes (the session-fixation defence); the new one
    goes out in the cookie."""
    app, interface, session = _current()
    s = interface.settings(app)
    user_id = _user_id_arg(user_id, s.anonymous_user_id)
    session[s.user_key] = user_id  # loads the session first

    def login() -> None:
        changed, removed, current = session.changes()
        data: Mapping[str, str] = current
        old = session.token
        sessions = interface.sessions(app)
        if old is not None:
            merged = sessions.update(old, changed, removed)
            if merged is not None:
                data = {**merged.data, **current}
        token, new = interface._create(app, session, user_id, data)
        if old is not None:
            sessions.revoke(old)
        session.take(token, new)
        session.token_changed, session.ended, session.gone = True, False, False

    _call(login)


def rotate_session() -> None:
    """Gives the current session a new token (after a change of privilege); the old one stops
    working at once. Does nothing without a session."""
    app, interface, session = _current()
    session._load()
    if session.token is None:
        return
    rotated = _call(lambda: interface.sessions(app).rotate(session.token))
    if rotated is None:  # revoked meanwhile
        session.end(gone=True)
        return
    session.token, session.server = rotated
    session.token_changed = True


def logout_session() -> None:
    """Ends the current session (RevokeSession), empties ``flask.session`` and deletes the
    cookie. Data written afterwards goes to a new anonymous session."""
    app, interface, session = _current()
    session._load()
    if session.token is not None:
        token = session.token
        _call(lambda: interface.sessions(app).revoke(token))
    session.end()
    session.gone = False


def revoke_user_sessions(
    user_id: Any, *, except_current: bool = False, app: Flask | None = None
) -> int:
    """Ends every Larder session of ``user_id`` ("log out everywhere") and returns how many
    ended. In a request, ``except_current=True`` keeps the current session (“log out my other
    devices”); otherwise the current session, when it is the user's, ends too and its cookie
    is deleted. Outside a request give ``app``."""
    if app is None or has_request_context():
        app, interface, session = _current()
    else:
        interface = app.session_interface  # type: ignore[assignment]
        if not isinstance(interface, LarderSessionInterface):
            raise RuntimeError("the app's session interface is not LarderSessionInterface")
        session = None
    user = str(user_id)
    keep = ""
    if session is not None:
        session._load()
        if except_current:
            keep = session.session_id or ""
    count: int = _call(lambda: interface.sessions(app).revoke_user(user, keep))
    server = None if session is None or except_current else session.server
    if session is not None and server is not None and server.user_id == user:
        session.end()
    return count


__all__ = [
    "LarderSession",
    "LarderSessionInterface",
    "SessionUnavailable",
    "login_session",
    "logout_session",
    "looks_like_token",
    "revoke_user_sessions",
    "rotate_session",
]
