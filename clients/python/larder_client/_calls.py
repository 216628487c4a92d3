"""Every call of the client, once: its request, whether it may be retried, and its answer.

A ``Call`` names the stub method, carries the built request, says whether the call is
idempotent (see ``_invoke``: only those are retried after an UNAVAILABLE that may have reached
the daemon) and maps the response to what the client returns. The sync client
(``larder_client.Larder``) and the asyncio client (``larder_client.aio.Larder``) both run these,
so validation and mapping exist only here; the two clients differ only in how they wait for
the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._gen.larder.v1 import cache_pb2, ratelimit_pb2, session_pb2
from ._types import Entry, RateLimitResult, Session, SessionList

T = TypeVar("T")

_ALGORITHMS = {
    "": ratelimit_pb2.ALGORITHM_UNSPECIFIED,
    "gcra": ratelimit_pb2.ALGORITHM_GCRA,
    "sliding_window": ratelimit_pb2.ALGORITHM_SLIDING_WINDOW,
    "fixed_window": ratelimit_pb2.ALGORITHM_FIXED_WINDOW,
}


# Every counter of StatsResponse, by name (what ``stats`` answers).
_STATS_FIELDS = tuple(f.name for f in cache_pb2.StatsResponse.DESCRIPTOR.fields)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC to make: ``method`` of the sub-API's service, with a ``request`` message
    (its protobuf class) of these ``fields`` (name -> value, as the class takes them as
    keyword arguments); ``parse`` maps the answer, read by attribute, to the client's
    return value. grpcio's path builds ``request(**fields)``; the native core encodes
    ``fields`` itself (see ``_channel``)."""

    method: str
    request: type
    fields: dict[str, Any]
    idempotent: bool
    parse: Callable[[Any], T]


def _entry(r: Any) -> Entry | None:
    return Entry(r.value, r.version, r.ttl_ms) if r.found else None


def _session(r: Any) -> Session | None:
    return Session._from_pb(r.session) if r.found else None


# --- CacheService -------------------------------------------------------------------------


def cache_get_entry(key: str, namespace: str) -> Call[Entry | None]:
    return Call("Get", cache_pb2.GetRequest, {"namespace": namespace, "key": key}, True, _entry)


def cache_get(key: str, namespace: str) -> Call[bytes | None]:
    return Call(
        "Get",
        cache_pb2.GetRequest,
        {"namespace": namespace, "key": key},
        True,
        lambda r: r.value if r.found else None,
    )


def _stored_version(r: Any) -> int | None:
    return int(r.version) if r.stored else None


def _set(
    namespace: str,
    key: str,
    value: bytes,
    ttl_ms: int,
    condition: int,
    parse: Callable[[Any], T],
    expected_version: int = 0,
) -> Call[T]:
    """A Set of ``condition``. Never retried: after an UNAVAILABLE the first try may have
    been applied, and a second one could overwrite what another worker wrote in between."""
    fields = {
        "namespace": namespace,
        "key": key,
        "value": value,
        "ttl_ms": ttl_ms,
        "condition": condition,
        "expected_version": expected_version,
    }
    return Call("Set", cache_pb2.SetRequest, fields, False, parse)


def cache_set(
    key: str, value: bytes, ttl_ms: int, if_absent: bool, if_present: bool, namespace: str
) -> Call[bool]:
    if if_absent and if_present:
        raise ValueError("set takes at most one of if_absent and if_present")
    condition = cache_pb2.CONDITION_ALWAYS
    if if_absent:
        condition = cache_pb2.CONDITION_IF_ABSENT
    elif if_present:
        condition = cache_pb2.CONDITION_IF_PRESENT
    return _set(namespace, key, value, ttl_ms, condition, lambda r: bool(r.stored))


def cache_set_versioned(
    key: str, value: bytes, ttl_ms: int, if_absent: bool, namespace: str
) -> Call[int | None]:
    """Set (always, or only when absent) answering the new version, or None if not stored."""
    condition = cache_pb2.CONDITION_IF_ABSENT if if_absent else cache_pb2.CONDITION_ALWAYS
    return _set(namespace, key, value, ttl_ms, condition, _stored_version)


def cache_compare_and_set(
    key: str, value: bytes, version: int, ttl_ms: int, namespace: str
) -> Call[int | None]:
    # Never retried: a retry of a try that was applied would find the version changed (by
    # itself) and report a failure.
    condition = cache_pb2.CONDITION_IF_VERSION
    return _set(namespace, key, value, ttl_ms, condition, _stored_version, version)


def cache_set_many(
    entries: Mapping[str, bytes], ttl_ms: int, namespace: str
) -> Call[dict[str, int]]:
    keys = list(entries)
    items = [{"key": k, "value": entries[k], "ttl_ms": ttl_ms} for k in keys]
    # Never retried, like set: a second try could overwrite later writes of other workers.
    return Call(
        "SetMany",
        cache_pb2.SetManyRequest,
        {"namespace": namespace, "entries": items},
        False,
        lambda r: dict(zip(keys, (int(v) for v in r.versions))),
    )


def cache_delete(key: str, namespace: str, version: int | None = None) -> Call[bool]:
    if version is not None and version <= 0:
        raise ValueError("delete's version must be a version a write answered (1 or more)")
    # Retried on UNAVAILABLE, with or without a version: deleting again leaves the same state
    # (a version is never reused), only the answer can come out False.
    return Call(
        "Delete",
        cache_pb2.DeleteRequest,
        {"namespace": namespace, "key": key, "expected_version": version or 0},
        True,
        lambda r: bool(r.deleted),
    )


def cache_delete_many(keys: Iterable[str], namespace: str) -> Call[int]:
    # Retried on UNAVAILABLE, like delete: deleting the same named keys again leaves the same
    # state. Only the count can be low, when a first try that was applied is followed by a
    # second that finds nothing left.
    return Call(
        "DeleteMany",
        cache_pb2.DeleteManyRequest,
        {"namespace": namespace, "keys": list(keys)},
        True,
        lambda r: int(r.deleted),
    )


def cache_increment(key: str, delta: int, ttl_ms: int, namespace: str) -> Call[int]:
    return Call(
        "Increment",
        cache_pb2.IncrementRequest,
        {"namespace": namespace, "key": key, "delta": delta, "ttl_ms": ttl_ms},
        False,
        lambda r: int(r.value),
    )


def cache_increment_if_present(key: str, delta: int, namespace: str) -> Call[int | None]:
    return Call(
        "Increment",
        cache_pb2.IncrementRequest,
        {"namespace": namespace, "key": key, "delta": delta, "if_present": True},
        False,
        lambda r: int(r.value) if r.found else None,
    )


def cache_get_many(keys: Iterable[str], namespace: str) -> Call[dict[str, bytes | None]]:
    return Call(
        "GetMany",
        cache_pb2.GetManyRequest,
        {"namespace": namespace, "keys": list(keys)},
        True,
        lambda r: {e.key: (e.value if e.found else None) for e in r.entries},
    )


def cache_touch(key: str, ttl_ms: int, namespace: str) -> Call[bool]:
    return Call(
        "Touch",
        cache_pb2.TouchRequest,
        {"namespace": namespace, "key": key, "ttl_ms": ttl_ms},
        True,
        lambda r: bool(r.found),
    )


def cache_delete_prefix(prefix: str, namespace: str) -> Call[int]:
    return Call(
        "DeletePrefix",
        cache_pb2.DeletePrefixRequest,
        {"namespace": namespace, "prefix": prefix},
        False,
        lambda r: int(r.deleted),
    )


def cache_clear(namespace: str) -> Call[int]:
    # Never retried, like delete_prefix: it removes whatever the namespace holds when it runs,
    # so a second try after one that was applied would also remove entries other workers wrote
    # in between, which this caller never named.
    return Call(
        "Clear", cache_pb2.ClearRequest, {"namespace": namespace}, False, lambda r: int(r.deleted)
    )


def cache_scan(
    namespace: str, prefix: str, page_size: int, page_token: str
) -> Call[tuple[list[Entry], str]]:
    """One page of Scan: the entries (with their keys) and the next page's token ("" after
    the last page)."""
    return Call(
        "Scan",
        cache_pb2.ScanRequest,
        {
            "namespace": namespace,
            "prefix": prefix,
            "page_size": page_size,
            "page_token": page_token,
        },
        True,
        lambda r: (
            [Entry(e.value, e.version, e.ttl_ms, e.key) for e in r.entries],
            str(r.next_page_token),
        ),
    )


def cache_stats(namespace: str) -> Call[dict[str, int]]:
    return Call(
        "Stats",
        cache_pb2.StatsRequest,
        {"namespace": namespace},
        True,
        lambda r: {name: int(getattr(r, name)) for name in _STATS_FIELDS},
    )


# --- SessionService -----------------------------------------------------------------------


def session_create(
    user_id: str,
    data: Mapping[str, str] | None,
    idle_ttl_ms: int,
    absolute_ttl_ms: int,
    device_info: str,
    ip: str,
) -> Call[tuple[str, Session]]:
    return Call(
        "CreateSession",
        session_pb2.CreateSessionRequest,
        {
            "user_id": user_id,
            "data": dict(data or {}),
            "idle_ttl_ms": idle_ttl_ms,
            "absolute_ttl_ms": absolute_ttl_ms,
            "device_info": device_info,
            "ip": ip,
        },
        False,
        lambda r: (r.token, Session._from_pb(r.session)),
    )


# The daemon's default bounds on what a session records about its client, in bytes.
MAX_DEVICE_INFO_BYTES = 512
MAX_IP_BYTES = 64


def client_fields(device_info: str, ip: str) -> dict[str, str]:
    """``device_info`` and ``ip`` for CreateSession, each cut to the daemon's default bound
    (at a UTF-8 character boundary): what a framework adapter records from a request (its
    User-Agent, its peer's address) must never make a session fail."""

    def prefix(text: str, limit: int) -> str:
        return text.encode()[:limit].decode("utf-8", "ignore")

    return {
        "device_info": prefix(device_info, MAX_DEVICE_INFO_BYTES),
        "ip": prefix(ip, MAX_IP_BYTES),
    }


def session_get(token: str) -> Call[Session | None]:
    return Call("GetSession", session_pb2.GetSessionRequest, {"token": token}, True, _session)


def session_update(
    token: str, set_: Mapping[str, str] | None, remove: Sequence[str]
) -> Call[Session | None]:
    return Call(
        "UpdateSession",
        session_pb2.UpdateSessionRequest,
        {"token": token, "set": dict(set_ or {}), "remove": list(remove)},
        False,
        _session,
    )


def session_rotate(token: str) -> Call[tuple[str, Session] | None]:
    return Call(
        "RotateSession",
        session_pb2.RotateSessionRequest,
        {"token": token},
        False,
        lambda r: (r.token, Session._from_pb(r.session)) if r.found else None,
    )


def session_revoke(token: str | None, session_id: str | None) -> Call[bool]:
    if (token is None) == (session_id is None):
        raise ValueError("revoke takes exactly one of token and session_id")
    fields = {"token": token} if token is not None else {"session_id": session_id}
    return Call(
        "RevokeSession",
        session_pb2.RevokeSessionRequest,
        fields,
        False,
        lambda r: bool(r.revoked),
    )


def session_revoke_user(user_id: str, except_session_id: str) -> Call[int]:
    return Call(
        "RevokeUserSessions",
        session_pb2.RevokeUserSessionsRequest,
        {"user_id": user_id, "except_session_id": except_session_id},
        False,
        lambda r: int(r.revoked),
    )


def session_list(user_id: str, page_size: int = 0, page_token: str = "") -> Call[SessionList]:
    return Call(
        "ListSessions",
        session_pb2.ListSessionsRequest,
        {"user_id": user_id, "page_size": page_size, "page_token": page_token},
        True,
        lambda r: SessionList(
            [Session._from_pb(s) for s in r.sessions],
            bool(r.truncated),
            str(r.next_page_token),
        ),
    )


# --- RateLimitService ---------------------------------------------------------------------


def _limit_fields(
    key: str, policy: str, limit: int, period_ms: int, cost: int, burst: int, algorithm: str
) -> dict[str, Any]:
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


def ratelimit_check(
    key: str, policy: str, limit: int, period_ms: int, cost: int, burst: int, algorithm: str
) -> Call[RateLimitResult]:
    fields = _limit_fields(key, policy, limit, period_ms, cost, burst, algorithm)
    return Call("Check", ratelimit_pb2.CheckRequest, fields, False, RateLimitResult._from_pb)


def ratelimit_peek(
    key: str, policy: str, limit: int, period_ms: int, cost: int, burst: int, algorithm: str
) -> Call[RateLimitResult]:
    fields = _limit_fields(key, policy, limit, period_ms, cost, burst, algorithm)
    return Call("Peek", ratelimit_pb2.PeekRequest, fields, True, RateLimitResult._from_pb)


def ratelimit_reset(key: str, policy: str) -> Call[bool]:
    return Call(
        "Reset",
        ratelimit_pb2.ResetRequest,
        {"policy": policy, "key": key},
        False,
        lambda r: bool(r.existed),
    )
