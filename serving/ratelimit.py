"""The rate limit: fixed one-minute windows per user and per key, counted atomically in Redis.

Every call counts against its user's window (SERVING_RATE_LIMIT_PER_MINUTE, whichever key
or the portal it came through, so more keys buy no more calls) and, when its key carries
its own lower limit, against the key's window too. DRF's throttles read, decide and write
in three steps, so concurrent requests all pass the read; here one Lua script checks both
windows and then counts the call in both, in a single step on the Redis server, and a
refused call counts in neither.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
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
        raise _refusal(windows, used, now, window)
    return RateDecision(used=used, limit=windows[0].limit if windows else 0)


# --- the async twins (the gateway's async views) and concurrency limits ---------------------

_aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def serving_aredis():
    """An asyncio Redis client for the running event loop (one pool per loop: a uvicorn
    worker has one; a synchronous caller's async_to_sync may make several, each freed
    with its loop)."""
    import asyncio

    import redis.asyncio as aredis

    loop = asyncio.get_running_loop()
    client = _aclients.get(loop)
    if client is None:
        client = aredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        _aclients[loop] = client
    return client


def _refusal(windows: Sequence[RateWindow], used: int, now: float, window: int) -> RateLimited:
    full = windows[-used - 1]
    retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
    return RateLimited(
        f"More than {full.limit} calls this minute for {full.holder}; retry in {retry_after} s.",
        retry_after=retry_after,
        fields={
            "limit_per_minute": [str(full.limit)],
            "limited_by": ["user" if full.subject.startswith("user:") else "api_key"],
        },
    )


@dataclass(frozen=True)
class InFlight:
    """At most `limit` calls of `subject` ("key:<id>", "user:<id>", "listing:<slug>") at once."""

    subject: str
    limit: int

    @property
    def key(self) -> str:
        return f"{settings.RATE_LIMIT_KEY_PREFIX}:serving:inflight:{self.subject}"


def _too_many(slots: Sequence[InFlight], full: int) -> RateLimited:
    slot = slots[full - 1]
    what = "this listing" if slot.subject.startswith("listing:") else "this API key"
    return RateLimited(
        f"{slot.limit} calls to {what} are already running; retry in a second.",
        code="too_many_concurrent_calls",
        retry_after=1,
        fields={"concurrent_limit": [str(slot.limit)]},
    )


async def ainflight_release(slots: Sequence[InFlight]) -> None:
    with contextlib.suppress(redis.RedisError):  # else the slot's TTL frees it
        pipe = serving_aredis().pipeline(transaction=False)
        for slot in slots:
            pipe.decr(slot.key)
        await pipe.execute()


# The rate windows and the in-flight counters of one call in one step (one round trip):
# KEYS: the n window counters, then the m in-flight counters; ARGV: n, the n window limits,
# the window's length, the m in-flight limits, the in-flight TTL. Returns the first
# window's count after this call; -i when window i is full; -(1000 + j) when in-flight
# counter j is full (nothing changed either way).
_ADMIT_AND_ACQUIRE = """
local n = tonumber(ARGV[1])
local m = #KEYS - n
for i = 1, n do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[1 + i]) then return -i end
end
for j = 1, m do
  if tonumber(redis.call('GET', KEYS[n + j]) or '0') >= tonumber(ARGV[2 + n + j]) then
    return -(1000 + j)
  end
end
local first = 0
for i = n, 1, -1 do
  first = redis.call('INCR', KEYS[i])
  if first == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 + n] + 1) end
end
for j = 1, m do
  redis.call('INCR', KEYS[n + j])
  redis.call('EXPIRE', KEYS[n + j], ARGV[#ARGV])
end
return first
"""
_ascripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def aadmit(
    *, windows: Sequence[RateWindow], slots: Sequence[InFlight], ttl: int
) -> RateDecision:
    """rate_limit_admit and the concurrency limits in one atomic step on the event loop:
    the call is counted in every rate window and takes a slot in every in-flight counter
    (each expiring after `ttl` seconds, should its web process die mid-call), or changes
    nothing and raises RateLimited (rate_limited, or too_many_concurrent_calls with
    Retry-After 1); EngineUnavailable (503) when Redis cannot be reached."""
    client = serving_aredis()
    script = _ascripts.get(client)
    if script is None:
        script = _ascripts[client] = client.register_script(_ADMIT_AND_ACQUIRE)
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    keys = [rate_window_key(w.subject, window) for w in windows] + [s.key for s in slots]
    args = [len(windows), *(w.limit for w in windows), WINDOW_SECONDS, *(s.limit for s in slots)]
    try:
        used = int(await script(keys=keys, args=[*args, ttl]))
    except redis.RedisError as exc:
        raise EngineUnavailable("The rate limiter's store is unreachable; try again.") from exc
    if used <= -1000:
        raise _too_many(slots, -used - 1000)
    if used < 0:
        raise _refusal(windows, used, now, window)
    return RateDecision(used=used, limit=windows[0].limit if windows else 0)
