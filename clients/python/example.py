"""The quick start of README.md, runnable against a daemon: python example.py [TARGET].

TARGET is ``host:port`` or ``unix:/path`` (default: $LARDER_TARGET, else 127.0.0.1:7379);
$LARDER_TOKEN is sent as the bearer token when set.
"""

from __future__ import annotations

import os
import sys

from larder_client import Larder


def main() -> int:
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LARDER_TARGET", "127.0.0.1:7379")
    token = os.environ.get("LARDER_TOKEN")
    with Larder(target, token=token, timeout=1.0) as larder:  # or "unix:/run/larder/larder.sock"
        larder.cache.set("user:42:profile", b'{"name": "Ada"}', ttl_ms=300_000, namespace="myapp")
        profile = larder.cache.get("user:42:profile", namespace="myapp")  # bytes, or None
        print("profile:", profile)

        token, session = larder.sessions.create("42", {"csrf": "abc"}, device_info="example")
        print("session:", session.session_id, "of user", session.user_id)

        r = larder.ratelimit.check("ip:203.0.113.9", limit=60, period_ms=60_000)
        print("allowed:", r.allowed, r.headers())  # X-RateLimit-*, and Retry-After when denied
    return 0


if __name__ == "__main__":
    sys.exit(main())
