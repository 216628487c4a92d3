"""The values the client returns: cache entries, sessions, rate-limit answers, queue jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entry:
    """A cache entry: its value, version (changes on every write) and remaining TTL.

    ``ttl_ms`` is 0 when the entry has no expiry. ``key`` is the entry's key when it came from
    ``scan`` (``get_entry`` leaves it empty: its caller named the key).
    """

    value: bytes
    version: int
    ttl_ms: int
    key: str = ""


@dataclass(frozen=True)
class Session:
    """A login session as the server holds it (all times are Unix milliseconds)."""

    session_id: str
    user_id: str
    data: dict[str, str]
    device_info: str
    ip: str
    created_at_ms: int
    last_seen_at_ms: int
    idle_expires_at_ms: int
    absolute_expires_at_ms: int
    idle_ttl_ms: int

    @classmethod
    def _from_pb(cls, pb: Any) -> Session:
        return cls(
            session_id=pb.session_id,
            user_id=pb.user_id,
            data=dict(pb.data),
            device_info=pb.device_info,
            ip=pb.ip,
            created_at_ms=pb.created_at_ms,
            last_seen_at_ms=pb.last_seen_at_ms,
            idle_expires_at_ms=pb.idle_expires_at_ms,
            absolute_expires_at_ms=pb.absolute_expires_at_ms,
            idle_ttl_ms=pb.idle_ttl_ms,
        )


@dataclass(frozen=True)
class SessionList:
    """One page of a user's live sessions, newest first.

    ``truncated`` says older sessions follow; pass ``next_page_token`` (empty on the last page)
    as ``page_token`` to ``sessions.list`` to get them.
    """

    sessions: list[Session] = field(default_factory=list)
    truncated: bool = False
    next_page_token: str = ""


@dataclass(frozen=True)
class RateLimitResult:
    """The answer of a rate-limit check (or peek)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int

    def headers(self) -> dict[str, str]:
        """The HTTP response headers for this answer.

        ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (seconds
        until the key is back to its full limit, rounded up) always; ``Retry-After`` (seconds,
        rounded up) only when the request was denied, i.e. with a 429.
        """
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(_ceil_seconds(self.reset_after_ms)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(_ceil_seconds(self.retry_after_ms))
        return headers

    @classmethod
    def _from_pb(cls, pb: Any) -> RateLimitResult:
        return cls(
            allowed=pb.allowed,
            limit=pb.limit,
            remaining=pb.remaining,
            reset_after_ms=pb.reset_after_ms,
            retry_after_ms=pb.retry_after_ms,
        )


def _ceil_seconds(ms: int) -> int:
    """Milliseconds to whole seconds, rounded up (exact integer arithmetic)."""
    return -(-ms // 1000)


# --- QueueService -------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """One job for ``queue.enqueue_many``: the same fields as ``queue.enqueue``'s arguments.

    ``delay_ms`` (from now) and ``run_at_ms`` (Unix milliseconds) say when it is ready (at
    most one of them; both 0 = now); ``max_attempts`` 0 is the daemon's ``queue.max_attempts``;
    an empty ``dedup_key`` deduplicates nothing.
    """

    queue: str
    payload: bytes
    delay_ms: int = 0
    run_at_ms: int = 0
    priority: int = 0
    max_attempts: int = 0
    dedup_key: str = ""


@dataclass(frozen=True)
class Enqueued:
    """Where an enqueued job went: its ``id``, and ``duplicate`` when a job of the queue with
    the same dedup key already existed (``id`` is then that job's, and nothing was added)."""

    id: int
    duplicate: bool


@dataclass(frozen=True)
class Job:
    """A job as the daemon hands it out (or lists it); times are Unix milliseconds.

    ``lease`` proves this delivery to ``ack``, ``nack`` and ``extend`` (empty for a listed
    job, or one dequeued with ``auto_ack``); ``attempt`` is 1 on the first delivery;
    ``last_error`` is the error of the delivery before (a nack's, or "lease expired").
    """

    id: int
    queue: str
    payload: bytes
    attempt: int
    max_attempts: int
    priority: int
    lease: str
    lease_expires_at_ms: int
    enqueued_at_ms: int
    last_error: str
    ready_at_ms: int

    @classmethod
    def _from_pb(cls, pb: Any) -> Job:
        return cls(
            id=int(pb.id),
            queue=pb.queue,
            payload=bytes(pb.payload),
            attempt=int(pb.attempt),
            max_attempts=int(pb.max_attempts),
            priority=int(pb.priority),
            lease=pb.lease,
            lease_expires_at_ms=int(pb.lease_expires_at_ms),
            enqueued_at_ms=int(pb.enqueued_at_ms),
            last_error=pb.last_error,
            ready_at_ms=int(pb.ready_at_ms),
        )


@dataclass(frozen=True)
class Nacked:
    """What a nack did: ``dead`` when the job had used its attempts and moved to the
    dead-letter list, else ``ready_at_ms``, when it is ready again (Unix milliseconds)."""

    dead: bool
    ready_at_ms: int


@dataclass(frozen=True)
class QueueStats:
    """A queue's jobs by state, and how long its oldest ready job has waited (0 when none is
    ready)."""

    ready: int
    delayed: int
    leased: int
    dead: int
    oldest_ready_age_ms: int
