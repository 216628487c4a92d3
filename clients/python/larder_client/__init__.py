"""larder_client: a typed Python client for Larder (cache, login sessions, rate limiting, job
queue).

    from larder_client import Larder

    with Larder("127.0.0.1:7379", token=None, timeout=1.0) as larder:
        larder.cache.set("greeting", b"hello", ttl_ms=60_000)
        larder.cache.get("greeting")                 # b"hello"
        v = larder.cache.get_entry("greeting").version
        larder.cache.compare_and_set("greeting", b"hi", v)   # new version, or None if changed
        larder.cache.set_many({"a": b"1", "b": b"2"})        # one transaction
        token, session = larder.sessions.create("42", {"csrf": "abc"})
        r = larder.ratelimit.check("ip:203.0.113.9", limit=10, period_ms=60_000)
        r.allowed, r.headers()                       # X-RateLimit-*, Retry-After when denied
        larder.queue.enqueue("email", b"to=ada@example.com")
        for job in larder.queue.jobs("email"):       # a worker: lease, extend, ack or nack
            with job:
                send(job.payload)

INVALID_ARGUMENT raises ``LarderError`` (a ValueError); any other failure raises
``grpc.RpcError``. ``larder_client.aio.Larder`` is the same client for asyncio. The gRPC stubs
are in ``larder_client._gen`` (generated at build time).
"""

from ._channel import InsecureTokenError
from ._client import Cache, Larder, Queue, RateLimit, Sessions
from ._invoke import LarderError
from ._queue import LeasedJob
from ._types import (
    Enqueued,
    Entry,
    Job,
    Nacked,
    NewJob,
    QueueStats,
    RateLimitResult,
    Session,
    SessionList,
)

__all__ = [
    "Cache",
    "Enqueued",
    "Entry",
    "InsecureTokenError",
    "Job",
    "Larder",
    "LarderError",
    "LeasedJob",
    "Nacked",
    "NewJob",
    "Queue",
    "QueueStats",
    "RateLimit",
    "RateLimitResult",
    "Session",
    "SessionList",
    "Sessions",
]
