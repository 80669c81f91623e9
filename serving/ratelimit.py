"""The per-key rate limit: a fixed one-minute window counted atomically in Redis.

DRF's throttles read, decide and write in three steps, so concurrent requests all pass
the read; here one Lua script reads and increments in a single step on the Redis server,
and a refused call does not count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings

from serving.errors import EngineUnavailable, RateLimited

WINDOW_SECONDS = 60

# KEYS[1]: the window's counter. ARGV: limit, window seconds.
# Returns the count after this call, or -1 when the window is full (nothing changed).
_ADMIT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return -1 end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2] + 1) end
return used
"""


@cache
def serving_redis() -> redis.Redis:
    """One connection pool per process (rate limits, token streams, cancel keys)."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)


@cache
def _admit_script():
    return serving_redis().register_script(_ADMIT)


@dataclass(frozen=True)
class RateDecision:
    used: int
    limit: int


def rate_limit_admit(*, subject: str, limit: int | None = None, now: float | None = None):
    """Count one call for `subject` (an API key or a user) in the current minute.

    Raises RateLimited (429) with the seconds until the window turns when `limit` calls
    were already admitted in it, EngineUnavailable (503) when Redis cannot be reached.
    """
    limit = limit if limit is not None else settings.SERVING_RATE_LIMIT_PER_MINUTE
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    key = f"serving:rate:{subject}:{window}"
    try:
        used = int(_admit_script()(keys=[key], args=[limit, WINDOW_SECONDS]))
    except redis.RedisError as exc:
        raise EngineUnavailable("The rate limiter's store is unreachable; try again.") from exc
    if used < 0:
        retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        raise RateLimited(
            f"More than {limit} calls this minute with this key; retry in {retry_after} s.",
            retry_after=retry_after,
            fields={"limit_per_minute": [str(limit)]},
        )
    return RateDecision(used=used, limit=limit)
