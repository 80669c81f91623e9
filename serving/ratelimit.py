"""The rate limit: fixed one-minute windows per user and per key, counted atomically in Redis.

Every call counts against its user's window (SERVING_RATE_LIMIT_PER_MINUTE, whichever key
or the portal it came through, so more keys buy no more calls) and, when its key carries
its own lower limit, against the key's window too. DRF's throttles read, decide and write
in three steps, so concurrent requests all pass the read; here one Lua script checks both
windows and then counts the call in both, in a single step on the Redis server, and a
refused call counts in neither.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings

from serving.errors import EngineUnavailable, RateLimited

WINDOW_SECONDS = 60

# KEYS[i]: window i's counter this minute; ARGV[i]: its limit; ARGV[#KEYS + 1]: the window's
# length. Returns the first window's count after this call, or -i when window i is full
# (nothing changed).
_ADMIT = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[i]) then return -i end
end
local first = 0
for i = #KEYS, 1, -1 do
  first = redis.call('INCR', KEYS[i])
  if first == 1 then redis.call('EXPIRE', KEYS[i], ARGV[#KEYS + 1] + 1) end
end
return first
"""


@cache
def serving_redis() -> redis.Redis:
    """One connection pool per process (rate limits, token streams, cancel keys)."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)


@cache
def _admit_script():
    return serving_redis().register_script(_ADMIT)


@dataclass(frozen=True)
class RateWindow:
    """At most `limit` calls a minute for `subject` ("user:<id>" or "key:<uuid>")."""

    subject: str
    limit: int

    @property
    def holder(self) -> str:
        return "your account" if self.subject.startswith("user:") else "this API key"


@dataclass(frozen=True)
class RateDecision:
    used: int  # the first window's count, this call included
    limit: int


def rate_window_key(subject: str, window: int) -> str:
    """The Redis key of `subject`'s counter in minute number `window` (epoch minutes)."""
    return f"{settings.RATE_LIMIT_KEY_PREFIX}:serving:rate:{subject}:{window}"


def rate_limit_admit(*, windows: Sequence[RateWindow], now: float | None = None) -> RateDecision:
    """Count one call in every window of the current minute, or in none.

    Raises RateLimited (429) with the seconds until the minute turns when a window already
    admitted its limit (the first full one is named), EngineUnavailable (503) when Redis
    cannot be reached.
    """
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    keys = [rate_window_key(w.subject, window) for w in windows]
    try:
        used = int(_admit_script()(keys=keys, args=[*(w.limit for w in windows), WINDOW_SECONDS]))
    except redis.RedisError as exc:
        raise EngineUnavailable("The rate limiter's store is unreachable; try again.") from exc
    if used < 0:
        full = windows[-used - 1]
        retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        raise RateLimited(
            f"More than {full.limit} calls this minute for {full.holder}; "
            f"retry in {retry_after} s.",
            retry_after=retry_after,
            fields={
                "limit_per_minute": [str(full.limit)],
                "limited_by": ["user" if full.subject.startswith("user:") else "api_key"],
            },
        )
    return RateDecision(used=used, limit=windows[0].limit)
