"""Per-route rate limits and injected server faults, both applied before a route runs."""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import dataclass

from aiohttp import web

from sandbox.clock import EmulatorClock
from sandbox.errors import json_response


@dataclass
class _Window:
    started: float
    used: int


class RateLimiter:
    """A fixed window of ``limit`` requests per ``per`` seconds for each bucket.

    A bucket is the route template plus its major parameter (channel, guild or webhook), like
    Discord's. Answers carry the X-RateLimit-* headers discord.py reads.
    """

    def __init__(self, clock: EmulatorClock, limit: int | None, per: float) -> None:
        self._clock = clock
        self.limit = limit
        self.per = per
        self._windows: dict[str, _Window] = {}
        self.rejected = 0

    def configure(self, limit: int | None, per: float = 1.0) -> None:
        self.limit, self.per = limit, per
        self._windows.clear()

    def check(self, bucket: str) -> tuple[dict[str, str], web.Response | None]:
        """Headers to attach, and a 429 response when the bucket is spent."""
        if self.limit is None:
            return {}, None
        now = self._clock.monotonic()
        window = self._windows.get(bucket)
        if window is None or now - window.started >= self.per:
            window = self._windows[bucket] = _Window(now, 0)
        reset_after = max(window.started + self.per - now, 0.001)
        bucket_hash = hashlib.sha1(bucket.encode()).hexdigest()[:16]
        headers = {"X-RateLimit-Limit": str(self.limit),
                   "X-RateLimit-Reset": f"{self._clock.time() + reset_after:.3f}",
                   "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                   "X-RateLimit-Bucket": bucket_hash}
        if window.used >= self.limit:
            self.rejected += 1
            headers |= {"X-RateLimit-Remaining": "0", "X-RateLimit-Scope": "user",
                        "Retry-After": str(math.ceil(reset_after))}
            body = {"message": "You are being rate limited.", "retry_after": round(reset_after, 3),
                    "global": False, "code": 0}
            return headers, json_response(body, 429, headers)
        window.used += 1
        headers["X-RateLimit-Remaining"] = str(self.limit - window.used)
        return headers, None


@dataclass
class Fault:
    """One kind of injected failure; ``after``: the request takes effect first and only its
    answer is lost (a front end that times out after the API acted)."""

    method: str
    pattern: str
    remaining: int
    status: int
    after: bool = False

    def response(self) -> web.Response:
        if self.status == 429:
            # Discord's shape for a 429, so clients retry instead of failing.
            body = {"message": "You are being rate limited.", "retry_after": 0.05,
                    "global": False}
            return json_response(body, 429, {"Retry-After": "0.05"})
        body = {"code": 0, "message": f"{self.status}: Injected server error"}
        return json_response(body, self.status)


class FaultInjector:
    """Makes the next N requests matching a method and an fnmatch path pattern fail."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self.injected = 0

    def add(self, method: str, pattern: str, count: int, status: int,
            after: bool = False) -> None:
        self._faults.append(Fault(method.upper(), pattern, count, status, after))

    def take(self, method: str, path: str, *, after: bool) -> Fault | None:
        """The fault for this request, counted: those that answer in place of the API, or
        (``after``) those that replace the answer of a request that took effect."""
        for fault in self._faults:
            if fault.remaining > 0 and fault.after == after and fault.method in (
                    method, "*") and fnmatch.fnmatchcase(path, fault.pattern):
                fault.remaining -= 1
                self.injected += 1
                return fault
        return None
