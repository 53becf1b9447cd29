"""Per-key rate limiting of the ``/v1`` API: a token bucket per API key, 429 with ``Retry-After``.

Each key may make ``MONITOR_API_RATE_LIMIT_PER_MINUTE`` requests a minute at a steady pace, and that
many at once after a quiet minute (the bucket holds one minute's budget). ``/healthz``, ``/readyz``,
``/metrics`` and the pages are not limited: probes and scrapes must never be refused for load.

Whose budget a request spends:

* a key this process has seen authenticate: its own bucket, and nothing else;
* anything else (no key, a malformed one, one not yet seen to authenticate, an unknown or revoked
  one): the bucket of the client's address. A flood of made-up keys is bounded like a flood
  without one: each new key costs its address a token before the store is asked about it.

A key is trusted only once the route's own auth check accepted it (``request.state.principal``,
set by :func:`monitor.api.auth.require`, or a 403: a valid key of another role), not because a
request of it got some other answer, so a made-up key cannot earn a budget of its own on a path
that answers 404. A trusted key that gets a 401 (revoked) goes back to its address's budget.

Limits are per process, in memory: N API replicas allow N times the budget, and a restart refills
every bucket. The address is the TCP peer's (``scope["client"]``): behind a proxy it is the proxy's,
unless uvicorn is told to trust its ``X-Forwarded-For`` (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor.http_errors import error_response
from monitor.lru import BoundedLru

#: Clients (keys plus addresses) remembered; the least recently seen beyond it start afresh.
MAX_CLIENTS = 65_536
_PREFIX = "/v1"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by client identity; thread-safe.

    >>> now = [0.0]
    >>> limiter = RateLimiter(2, clock=lambda: now[0])
    >>> [limiter.acquire("k") for _ in range(3)]
    [0.0, 0.0, 30.0]
    >>> now[0] = 30.0; limiter.acquire("k")
    0.0
    """

    def __init__(self, per_minute: int, *, burst: int | None = None, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1 (0 means no limiter at all), got {per_minute}")
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.per_minute = per_minute
        self.burst = per_minute if burst is None else burst
        self.clock = clock
        self._rate = per_minute / 60.0  # tokens per second
        self._buckets: BoundedLru[str, _Bucket] = BoundedLru(max_clients)
        self._trusted: BoundedLru[str, bool] = BoundedLru(max_clients)
        self._lock = threading.Lock()

    def acquire(self, identity: str) -> float:
        """Spend one token of ``identity``: 0.0 when there was one, else the seconds until there is."""
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(identity)
            if bucket is None:
                bucket = _Bucket(float(self.burst), now)
                self._buckets.put(identity, bucket)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self._rate

    def trusted(self, key_digest: str) -> bool:
        """Whether the key (by its SHA-256 digest) was seen to authenticate and not to fail since."""
        with self._lock:
            return bool(self._trusted.get(key_digest))

    def trust(self, key_digest: str, trusted: bool) -> None:
        """Remember that the key authenticated (its own budget from now on), or that it was refused."""
        with self._lock:
            if trusted:
                self._trusted.put(key_digest, True)
            elif self._trusted.get(key_digest) is not None:
                self._trusted.put(key_digest, False)  # BoundedLru has no delete; False reads as not trusted


def _bearer_digest(scope: Scope) -> str | None:
    scheme, _, credentials = Headers(scope=scope).get("authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return hashlib.sha256(credentials.encode()).hexdigest()


class RateLimit:
    """Plain ASGI middleware: a ``/v1`` request over its budget is a 429 before the app runs."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == _PREFIX or path.startswith(_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        digest = _bearer_digest(scope)
        trusted = digest is not None and self.limiter.trusted(digest)
        identity = f"key:{digest}" if trusted else f"address:{_address(scope)}"
        wait = self.limiter.acquire(identity)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            whose = "API key" if trusted else "client address (requests without a known API key)"
            response = error_response(
                429, "RateLimited",
                f"over the rate limit of {self.limiter.per_minute} requests per minute per {whose}; "
                f"retry in {retry_after} s", headers={"Retry-After": str(retry_after)})
            await response(scope, receive, send)
            return
        if digest is None:
            await self.app(scope, receive, send)
            return
        key_digest = digest

        # The route's auth check leaves the caller in the request state; shared by reference, so
        # we see it even though the app's Request objects are made further in.
        state: dict[str, Any] = scope.setdefault("state", {})

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Trusted once the auth check let it in (or refused only its role: 403); no longer
                # once refused as unknown or revoked (401). Anything else (a 404 of a route without
                # an auth check) says nothing about the key.
                if not trusted and (state.get("principal") is not None or message["status"] == 403):
                    self.limiter.trust(key_digest, True)
                    self.limiter.acquire(f"key:{key_digest}")  # this request counts against the key too
                elif trusted and message["status"] == 401:
                    self.limiter.trust(key_digest, False)
            await send(message)

        await self.app(scope, receive, observing_send)


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
