"""Fixed windows counted atomically in Redis: the sign-up and verification-email throttles.

One Lua script checks every window of a request and then counts it in all of them, in a
single step on the Redis server: concurrent requests from any number of web processes
cannot slip past a limit, and a refused request counts in none (so one address hammering
its own limit does not use up the global one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings

# KEYS[i]: window i's counter; ARGV[2i-1]: its limit, ARGV[2i]: its time to live.
# Returns 0 when counted in every window, else the index of the first full one.
_ADMIT = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[2 * i - 1]) then
    return i
  end
end
for i = 1, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i]) end
end
return 0
"""


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)


@cache
def _admit_script():
    return _redis().register_script(_ADMIT)


@dataclass(frozen=True)
class Window:
    """At most `limit` events per `seconds` (clock-aligned) for `subject`."""

    subject: str  # e.g. "signup:address:203.0.113.7"
    limit: int
    seconds: int


class WindowFull(Exception):
    """`window` is full until it turns, in `retry_after` seconds."""

    def __init__(self, *, window: Window, retry_after: int):
        super().__init__(f"{window.subject}: full for {retry_after} s")
        self.window, self.retry_after = window, retry_after


class ThrottleStoreUnavailable(Exception):
    """Redis could not be reached."""


def windows_admit(windows: Sequence[Window], *, now: float | None = None) -> None:
    """Count one event in every window, or in none: raises WindowFull naming the first full
    window, ThrottleStoreUnavailable when Redis cannot be reached."""
    now = time.time() if now is None else now
    keys, args = [], []
    for window in windows:
        keys.append(f"{settings.RATE_LIMIT_KEY_PREFIX}:throttle:{window.subject}:"
                    f"{window.seconds}:{int(now // window.seconds)}")  # fmt: skip
        args += [window.limit, window.seconds + 1]
    try:
        full = int(_admit_script()(keys=keys, args=args))
    except redis.RedisError as exc:
        raise ThrottleStoreUnavailable(str(exc)) from exc
    if full:
        window = windows[full - 1]
        turns_at = (int(now // window.seconds) + 1) * window.seconds
        raise WindowFull(window=window, retry_after=max(1, math.ceil(turns_at - now)))
