"""Epochs that make a cache of who may call what exact, not merely fresh.

The serving gateway keeps, per web process, what an API key resolves to and what a
caller's licence allows (serving.access_cache), so a call reads no database row to be
authorized. Every change that could take access away bumps an epoch in the shared Redis:

- `bump(user_id=...)`: one user's keys, licences or account changed (a key revoked, a
  licence ended, cancelled, capped or resumed, the user suspended);
- `bump(everyone=True)`: a listing changed for all its buyers (suspended, delisted,
  reinstated, a new version live), or an expert's account was suspended.

A cached entry remembers the epochs it was read under and is used only while both are
still current, so the very next call after a change reads the database again. The bump
happens at once (a call racing the change at worst reads the database for nothing) and
again when the transaction commits (no call can cache the state from before the commit
under the new epoch). If Redis cannot be reached the cache is not trusted at all.
"""

from __future__ import annotations

import functools
import logging

import redis
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

GLOBAL = "niche:epoch:global"


def user_key(user_id) -> str:
    return f"niche:epoch:user:{user_id}"


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)


def _incr(keys: list[str]) -> None:
    try:
        pipe = _client().pipeline(transaction=False)
        for key in keys:
            pipe.incr(key)
        pipe.execute()
    except redis.RedisError:
        # The cache then misses (its epochs cannot be read either): never stale.
        logger.warning("access epochs: Redis unreachable; caches will not be trusted")


def bump(*, user_id=None, everyone: bool = False) -> None:
    """Invalidate cached access for one user, or for everyone, now and on commit."""
    keys = ([GLOBAL] if everyone else []) + ([user_key(user_id)] if user_id is not None else [])
    if not keys:
        return
    _incr(keys)
    transaction.on_commit(lambda: _incr(keys))
