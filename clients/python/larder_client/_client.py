"""The Larder client: one channel, and the cache, sessions and ratelimit sub-APIs over it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

import grpc
from google.protobuf import wrappers_pb2
from typing_extensions import Self

from ._gen.larder.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    ratelimit_pb2,
    ratelimit_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from ._invoke import Invoker, channel_options
from ._types import Entry, RateLimitResult, Session, SessionList

_ALGORITHMS = {
    "": ratelimit_pb2.ALGORITHM_UNSPECIFIED,
    "gcra": ratelimit_pb2.ALGORITHM_GCRA,
    "sliding_window": ratelimit_pb2.ALGORITHM_SLIDING_WINDOW,
    "fixed_window": ratelimit_pb2.ALGORITHM_FIXED_WINDOW,
}


class Cache:
    """CacheService: namespaced keys with byte values, versions and TTLs (milliseconds)."""

    def __init__(self, channel: grpc.Channel, call: Invoker) -> None:
        self._stub = cache_pb2_grpc.CacheServiceStub(channel)
        self._call = call

    def get(self, key: str, namespace: str = "", *, timeout: float | None = None) -> bytes | None:
        """The value of ``key``, or None when it is absent or expired."""
        entry = self.get_entry(key, namespace, timeout=timeout)
        return None if entry is None else entry.value

    def get_entry(
        self, key: str, namespace: str = "", *, timeout: float | None = None
    ) -> Entry | None:
        """Value, version and remaining TTL of ``key``, or None when it is absent."""
        r = self._call(
            self._stub.Get,
            cache_pb2.GetRequest(namespace=namespace, key=key),
            idempotent=True,
            timeout=timeout,
        )
        return Entry(r.value, r.version, r.ttl_ms) if r.found else None

    def set(
        self,
        key: str,
        value: bytes,
        ttl_ms: int = 0,
        if_absent: bool = False,
        namespace: str = "",
        *,
        if_present: bool = False,
        timeout: float | None = None,
    ) -> bool:
        """Stores ``value``; ``ttl_ms`` replaces any previous TTL (0 = never expires).

        With ``if_absent`` only when the key holds no live value (a lock: SET NX with
        expiry); with ``if_present`` only when it does (SET XX). Returns whether it was stored.
        For compare-and-set, see ``compare_and_set``.
        """
        if if_absent and if_present:
            raise ValueError("set takes at most one of if_absent and if_present")
        condition = cache_pb2.CONDITION_ALWAYS
        if if_absent:
            condition = cache_pb2.CONDITION_IF_ABSENT
        elif if_present:
            condition = cache_pb2.CONDITION_IF_PRESENT
        # Never retried: after an UNAVAILABLE the first try may have been applied, and a
        # second one could overwrite what another worker wrote in between.
        r = self._call(
            self._stub.Set,
            cache_pb2.SetRequest(
                namespace=namespace, key=key, value=value, ttl_ms=ttl_ms, condition=condition
            ),
            idempotent=False,
            timeout=timeout,
        )
        return bool(r.stored)

    def compare_and_set(
        self,
        key: str,
        value: bytes,
        version: int,
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int | None:
        """Stores ``value`` only if the entry's version is still ``version`` (from
        ``get_entry`` or an earlier write): compare-and-set.

        Returns the entry's new version, or None when it was not stored because the entry
        changed, was deleted or expired since (read it again and retry). ``version`` 0 is
        invalid (LarderError naming ``expected_version``).
        """
        # Never retried: a retry of a try that was applied would find the version changed
        # (by itself) and report a failure.
        r = self._call(
            self._stub.Set,
            cache_pb2.SetRequest(
                namespace=namespace,
                key=key,
                value=value,
                ttl_ms=ttl_ms,
                condition=cache_pb2.CONDITION_IF_VERSION,
                expected_version=version,
            ),
            idempotent=False,
            timeout=timeout,
        )
        return int(r.version) if r.stored else None

    def set_many(
        self,
        entries: Mapping[str, bytes],
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> dict[str, int]:
        """Stores every key -> value of ``entries`` in one transaction (all or none), each with
        ``ttl_ms`` (0 = never expires); returns key -> new version.

        If one entry is invalid, nothing is written and LarderError names it
        (``entries[3].key: ...``, counted in the mapping's order).
        """
        keys = list(entries)
        items = [cache_pb2.SetEntry(key=k, value=entries[k], ttl_ms=ttl_ms) for k in keys]
        # Never retried, like set: a second try could overwrite later writes of other workers.
        r = self._call(
            self._stub.SetMany,
            cache_pb2.SetManyRequest(namespace=namespace, entries=items),
            idempotent=False,
            timeout=timeout,
        )
        return dict(zip(keys, (int(v) for v in r.versions)))

    def delete(self, key: str, namespace: str = "", *, timeout: float | None = None) -> bool:
        """Removes ``key``; returns whether it held a live value."""
        r = self._call(
            self._stub.Delete,
            cache_pb2.DeleteRequest(namespace=namespace, key=key),
            idempotent=True,
            timeout=timeout,
        )
        return bool(r.deleted)

    def delete_many(
        self, keys: Iterable[str], namespace: str = "", *, timeout: float | None = None
    ) -> int:
        """Removes ``keys`` in one transaction; returns how many held a live value."""
        # Retried on UNAVAILABLE, like delete: deleting the same named keys again leaves the
        # same state. Only the count can be low, when a first try that was applied is followed
        # by a second that finds nothing left.
        r = self._call(
            self._stub.DeleteMany,
            cache_pb2.DeleteManyRequest(namespace=namespace, keys=list(keys)),
            idempotent=True,
            timeout=timeout,
        )
        return int(r.deleted)

    def increment(
        self,
        key: str,
        delta: int = 1,
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int:
        """Adds ``delta`` to the counter at ``key`` (absent = 0) and returns the new value."""
        r = self._call(
            self._stub.Increment,
            cache_pb2.IncrementRequest(namespace=namespace, key=key, delta=delta, ttl_ms=ttl_ms),
            idempotent=False,
            timeout=timeout,
        )
        return int(r.value)

    def get_many(
        self, keys: Iterable[str], namespace: str = "", *, timeout: float | None = None
    ) -> dict[str, bytes | None]:
        """The values of ``keys`` in one round trip: key -> value, or None when absent."""
        r = self._call(
            self._stub.GetMany,
            cache_pb2.GetManyRequest(namespace=namespace, keys=list(keys)),
            idempotent=True,
            timeout=timeout,
        )
        return {e.key: (e.value if e.found else None) for e in r.entries}

    def touch(
        self, key: str, ttl_ms: int, namespace: str = "", *, timeout: float | None = None
    ) -> bool:
        """Sets a new TTL on ``key`` without changing its value; returns whether it exists."""
        r = self._call(
            self._stub.Touch,
            cache_pb2.TouchRequest(namespace=namespace, key=key, ttl_ms=ttl_ms),
            idempotent=True,
            timeout=timeout,
        )
        return bool(r.found)

    def delete_prefix(
        self, prefix: str, namespace: str = "", *, timeout: float | None = None
    ) -> int:
        """Removes every key of ``namespace`` that starts with ``prefix``; returns how many."""
        r = self._call(
            self._stub.DeletePrefix,
            cache_pb2.DeletePrefixRequest(namespace=namespace, prefix=prefix),
            idempotent=False,
            timeout=timeout,
        )
        return int(r.deleted)

    def clear(self, namespace: str = "", *, timeout: float | None = None) -> int:
        """Removes every entry of ``namespace`` ("" = "default"); returns how many."""
        # Never retried, like delete_prefix: it removes whatever the namespace holds when it
        # runs, so a second try after one that was applied would also remove entries other
        # workers wrote in between, which this caller never named.
        r = self._call(
            self._stub.Clear,
            cache_pb2.ClearRequest(namespace=namespace),
            idempotent=False,
            timeout=timeout,
        )
        return int(r.deleted)

    def stats(self, namespace: str = "", *, timeout: float | None = None) -> dict[str, int]:
        """The server's counters (entries, bytes, hits, misses, ...) as a dict."""
        r = self._call(
            self._stub.Stats,
            cache_pb2.StatsRequest(namespace=namespace),
            idempotent=True,
            timeout=timeout,
        )
        return {f.name: int(getattr(r, f.name)) for f in r.DESCRIPTOR.fields}


class Sessions:
    """SessionService: opaque login-session tokens and the data they carry."""

    def __init__(self, channel: grpc.Channel, call: Invoker) -> None:
        self._stub = session_pb2_grpc.SessionServiceStub(channel)
        self._call = call

    def create(
        self,
        user_id: str,
        data: Mapping[str, str] | None = None,
        idle_ttl_ms: int = 0,
        absolute_ttl_ms: int = 0,
        device_info: str = "",
        ip: str = "",
        *,
        timeout: float | None = None,
    ) -> tuple[str, Session]:
        """Starts a session for ``user_id``; returns (token, session). TTL 0 = server default."""
        r = self._call(
            self._stub.CreateSession,
            session_pb2.CreateSessionRequest(
                user_id=user_id,
                data=dict(data or {}),
                idle_ttl_ms=idle_ttl_ms,
                absolute_ttl_ms=absolute_ttl_ms,
                device_info=device_info,
                ip=ip,
            ),
            idempotent=False,
            timeout=timeout,
        )
        return r.token, Session._from_pb(r.session)

    def get(self, token: str, *, timeout: float | None = None) -> Session | None:
        """The session of ``token`` (and it counts as activity), or None when it is gone."""
        r = self._call(
            self._stub.GetSession,
            session_pb2.GetSessionRequest(token=token),
            idempotent=True,
            timeout=timeout,
        )
        return Session._from_pb(r.session) if r.found else None

    def update(
        self,
        token: str,
        set: Mapping[str, str] | None = None,
        remove: Sequence[str] = (),
        *,
        timeout: float | None = None,
    ) -> Session | None:
        """Sets and removes data keys; returns the updated session, or None when it is gone."""
        r = self._call(
            self._stub.UpdateSession,
            session_pb2.UpdateSessionRequest(token=token, set=dict(set or {}), remove=list(remove)),
            idempotent=False,
            timeout=timeout,
        )
        return Session._from_pb(r.session) if r.found else None

    def rotate(self, token: str, *, timeout: float | None = None) -> tuple[str, Session] | None:
        """Replaces ``token`` by a new one (the old one stops working); None when it is gone."""
        r = self._call(
            self._stub.RotateSession,
            session_pb2.RotateSessionRequest(token=token),
            idempotent=False,
            timeout=timeout,
        )
        return (r.token, Session._from_pb(r.session)) if r.found else None

    def revoke(
        self,
        token: str | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Ends one session, named by its token or its session_id; returns whether it existed."""
        if (token is None) == (session_id is None):
            raise ValueError("revoke takes exactly one of token and session_id")
        request = (
            session_pb2.RevokeSessionRequest(token=token)
            if token is not None
            else session_pb2.RevokeSessionRequest(session_id=session_id)
        )
        r = self._call(self._stub.RevokeSession, request, idempotent=False, timeout=timeout)
        return bool(r.revoked)

    def revoke_user(
        self, user_id: str, except_session_id: str = "", *, timeout: float | None = None
    ) -> int:
        """Ends every session of ``user_id`` (but ``except_session_id``); returns how many."""
        r = self._call(
            self._stub.RevokeUserSessions,
            session_pb2.RevokeUserSessionsRequest(
                user_id=user_id, except_session_id=except_session_id
            ),
            idempotent=False,
            timeout=timeout,
        )
        return int(r.revoked)

    def list(self, user_id: str, *, timeout: float | None = None) -> SessionList:
        """The live sessions of ``user_id``."""
        r = self._call(
            self._stub.ListSessions,
            session_pb2.ListSessionsRequest(user_id=user_id),
            idempotent=True,
            timeout=timeout,
        )
        return SessionList([Session._from_pb(s) for s in r.sessions], bool(r.truncated))


class RateLimit:
    """RateLimitService: named policies (config file) or inline limits per key."""

    def __init__(self, channel: grpc.Channel, call: Invoker) -> None:
        self._stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        self._call = call

    def check(
        self,
        key: str,
        policy: str = "",
        limit: int = 0,
        period_ms: int = 0,
        cost: int = 1,
        burst: int = 0,
        algorithm: str = "",
        *,
        timeout: float | None = None,
    ) -> RateLimitResult:
        """Consumes ``cost`` units of ``key`` if allowed. ``result.headers()`` gives the HTTP
        headers. Either name a ``policy`` or give ``limit`` and ``period_ms`` inline;
        ``algorithm`` is "gcra" (default), "sliding_window" or "fixed_window"."""
        r = self._call(
            self._stub.Check,
            ratelimit_pb2.CheckRequest(
                **_limit_fields(key, policy, limit, period_ms, cost, burst, algorithm)
            ),
            idempotent=False,
            timeout=timeout,
        )
        return RateLimitResult._from_pb(r)

    def peek(
        self,
        key: str,
        policy: str = "",
        limit: int = 0,
        period_ms: int = 0,
        cost: int = 1,
        burst: int = 0,
        algorithm: str = "",
        *,
        timeout: float | None = None,
    ) -> RateLimitResult:
        """What ``check`` would answer, without consuming anything."""
        r = self._call(
            self._stub.Peek,
            ratelimit_pb2.PeekRequest(
                **_limit_fields(key, policy, limit, period_ms, cost, burst, algorithm)
            ),
            idempotent=True,
            timeout=timeout,
        )
        return RateLimitResult._from_pb(r)

    def reset(self, key: str, policy: str = "", *, timeout: float | None = None) -> bool:
        """Forgets what ``key`` consumed; returns whether it had any state."""
        r = self._call(
            self._stub.Reset,
            ratelimit_pb2.ResetRequest(policy=policy, key=key),
            idempotent=False,
            timeout=timeout,
        )
        return bool(r.existed)


def _limit_fields(
    key: str, policy: str, limit: int, period_ms: int, cost: int, burst: int, algorithm: str
) -> dict:
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; one of {sorted(_ALGORITHMS)[1:]}")
    return {
        "key": key,
        "policy": policy,
        "limit": limit,
        "period_ms": period_ms,
        "cost": cost,
        "burst": burst,
        "algorithm": _ALGORITHMS[algorithm],
    }


class Larder:
    """A connection to a Larder daemon.

    ``target`` is ``host:port`` or ``unix:/path/to/socket``. ``token`` is sent as
    ``authorization: Bearer <token>`` on every call. ``timeout`` (seconds) is the deadline of
    every call unless the call passes its own ``timeout=``. Idempotent calls are retried
    ``retries`` times on UNAVAILABLE; others never are (see ``Invoker``).

    Errors: INVALID_ARGUMENT raises ``LarderError`` (a ValueError); every other failure
    raises the ``grpc.RpcError`` (``.code()``, ``.details()``). Use it as a context manager,
    or call ``close()``, to close the channel. Create one per process and share it.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:7379",
        token: str | None = None,
        timeout: float = 1.0,
        *,
        retries: int = 2,
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(target, options=channel_options(target, options))
        self._call = Invoker(token, timeout, retries)
        self.cache = Cache(self._channel, self._call)
        self.sessions = Sessions(self._channel, self._call)
        self.ratelimit = RateLimit(self._channel, self._call)
        # grpc.health.v1 HealthCheckRequest {string service = 1} and HealthCheckResponse
        # {ServingStatus status = 1} have the wire form of protobuf's StringValue and
        # Int32Value, so the well-known wrappers stand in for the health stubs.
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int32Value.FromString,
        )

    def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """Whether the daemon (or one ``larder.v1`` service) reports SERVING."""
        r = self._call(
            self._health,
            wrappers_pb2.StringValue(value=service),
            idempotent=True,
            timeout=timeout,
        )
        return r.value == 1  # ServingStatus.SERVING

    def close(self) -> None:
        """Closes the channel; calls after this fail."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__: list[str] = ["Cache", "Larder", "RateLimit", "Sessions"]
