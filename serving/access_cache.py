"""Who may call what, cached per web process and exact through access epochs.

A call used to read its API key, its user and its licence from the database before
anything else: three queries on every call. Here each web process keeps what a key
resolved to and what a caller's licence check answered, each with the epochs
(marketplace.access_epochs) it was read under; one Redis read per call fetches the
current epochs, and an entry is used only while they are unchanged. Every change that
could take access away (a key revoked, a licence ended or capped, a listing suspended,
a user suspended) bumps an epoch, so the very next call reads the database again.

Every entry also expires ENTRY_TTL_SECONDS after it was read: a bump lost while Redis
was unreachable (the change itself committed) cannot keep an entry alive beyond that.

What is cached never decides money: the quota and the spend cap are taken atomically by
the ledger write (billing.services.usage_record), which reads the licence row itself.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace

import redis
from asgiref.sync import sync_to_async

from accounts.services import hash_api_key
from billing.selectors import LicenceCheck
from marketplace import access_epochs

MAX_ENTRIES = 20_000
# The backstop for a lost bump: no entry outlives this, whatever the epochs say.
ENTRY_TTL_SECONDS = 30.0
# Marking a key's last use writes at most once a minute per key (accounts' own rule).
MARK_USED_EVERY_SECONDS = 60


class _Lru:
    def __init__(self, size: int = MAX_ENTRIES) -> None:
        self.size = size
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.data.clear()


@dataclass(frozen=True)
class KeyEntry:
    """What a live API key resolves to (a revoked key or a suspended user never is one)."""

    key_id: uuid.UUID
    user_id: int
    scopes: tuple[str, ...]
    rate_limit_per_minute: int | None
    key_hash: str
    epochs: tuple[int, int]
    last_marked: float = 0.0
    read_at: float = 0.0

    def fresh(self) -> bool:
        return time.monotonic() - self.read_at < ENTRY_TTL_SECONDS


_keys = _Lru()
_checks = _Lru()


def clear() -> None:
    """Forget everything (tests; a process never needs it: epochs keep it exact)."""
    _keys.clear()
    _checks.clear()


async def current_epochs(client, user_id) -> tuple[int, int] | None:
    """(global, user) now; None when Redis cannot say (then nothing cached is trusted)."""
    try:
        values = await client.mget(access_epochs.GLOBAL, access_epochs.user_key(user_id))
    except redis.RedisError:
        return None
    return tuple(int(v or 0) for v in values)  # type: ignore[return-value]


def _resolve_key(plaintext: str):
    from accounts.selectors import api_key_resolve

    return api_key_resolve(plaintext=plaintext)


def _mark_used(key_id) -> None:
    from accounts.models import ApiKey
    from accounts.services import api_key_mark_used

    key = ApiKey.objects.filter(pk=key_id).first()
    if key is not None:
        api_key_mark_used(key=key)


async def key_entry(client, plaintext: str) -> KeyEntry | None:
    """The live key behind `plaintext`, from the cache while its epochs hold, or read
    (twice on a miss: once to learn its user, once under that user's current epochs)."""
    digest = hash_api_key(plaintext)
    cached = _keys.get(digest)
    if cached is not None and cached.fresh() and hmac.compare_digest(cached.key_hash, digest):
        epochs = await current_epochs(client, cached.user_id)
        if epochs is not None and epochs == cached.epochs:
            if time.monotonic() - cached.last_marked > MARK_USED_EVERY_SECONDS:
                _keys.put(digest, replace(cached, last_marked=time.monotonic()))
                await sync_to_async(_mark_used)(cached.key_id)
            return cached
    key = await sync_to_async(_resolve_key)(plaintext)
    if key is None:
        return None
    epochs = await current_epochs(client, key.user_id)
    if epochs is None:
        return _entry(key, digest, (-1, -1))  # not cached: Redis cannot vouch for it
    key = await sync_to_async(_resolve_key)(plaintext)  # read again under these epochs
    if key is None:
        return None
    entry = _entry(key, digest, epochs)
    _keys.put(digest, entry)
    await sync_to_async(_mark_used)(entry.key_id)
    return entry


def _entry(key, digest: str, epochs: tuple[int, int]) -> KeyEntry:
    return KeyEntry(
        key_id=key.pk,
        user_id=key.user_id,
        scopes=tuple(key.scopes),
        rate_limit_per_minute=key.rate_limit_per_minute,
        key_hash=digest,
        epochs=epochs,
        last_marked=time.monotonic(),
        read_at=time.monotonic(),
    )


def licence_check_cached(user_id, slug: str, number: int | None, epochs) -> LicenceCheck | None:
    entry = _checks.get((user_id, slug, number))
    if entry is None or epochs is None or entry[0] != epochs:
        return None
    if time.monotonic() - entry[2] >= ENTRY_TTL_SECONDS:
        return None
    return entry[1]


def licence_check_store(user_id, slug: str, number: int | None, epochs, check: LicenceCheck):
    """Keep a check read under `epochs` (read before the check itself was). Its count of
    calls is not kept: the ledger write takes the quota atomically."""
    if epochs is not None and epochs[0] >= 0:
        _checks.put(
            (user_id, slug, number), (epochs, replace(check, calls_used=0), time.monotonic())
        )
