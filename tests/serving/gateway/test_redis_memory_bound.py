"""Redis memory is bounded by design: every key serving writes belongs to a family with a
bound on its count, its length and its life (docs/reliability.md, "Redis memory").

bob makes calls of every kind through a live server and a real inference worker:
classifications, whole generations, streams, and streams he leaves after the first
event. Afterwards each key the calls left is in a known family, expires within its
family's TTL, holds at most its family's entries, and all of them together hold a few
KiB per call. A key of a new family fails the test until it is given a bound here and
in the docs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import redis
import requests
from django.conf import settings

from serving import dispatch, protocol
from serving.ratelimit import WINDOW_SECONDS
from tests.serving.gateway.test_gateway_on_workers import (  # noqa: F401  (fixtures)
    client_for,
    inference_worker,
    served_adapters,
    shop,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CALLS = 12  # of each kind
MAX_TOKENS = 8
BYTES_PER_CALL = 4096  # MEMORY USAGE of what one call leaves, all families together


@dataclass(frozen=True)
class Family:
    """Keys serving writes: which, how long they live, how many entries each holds."""

    name: str
    prefix: str
    max_ttl: float  # seconds; every key of the family must expire within it
    max_entries: int  # a stream's XLEN, a list's LLEN, a zset's ZCARD; 1 for a string


def families() -> list[Family]:
    rate_prefix = f"{settings.RATE_LIMIT_KEY_PREFIX}:serving:"
    return [
        Family("token stream", "serving:stream:", protocol.STREAM_TTL_SECONDS, MAX_TOKENS + 1),
        Family("cancel flag", "serving:cancel:", protocol.CANCEL_TTL_SECONDS, 1),
        Family("answer list", "serving:answer:", dispatch.ANSWER_TTL_SECONDS, 1),
        Family("rate window", rate_prefix + "rate:", WINDOW_SECONDS + 1, 1),
        # a web process that dies mid-call frees its slots at this TTL
        Family(
            "in-flight counter",
            rate_prefix + "inflight:",
            2 * settings.SERVING_TIMEOUT_SECONDS + 30,
            1,
        ),
    ]


SINGLETONS = {
    # one key each, whatever the traffic: capped by length, not by time
    dispatch.REQUESTS: dispatch.REQUESTS_MAXLEN + 100,  # XADD MAXLEN ~ trims per node
    dispatch.WORKERS: 64,  # one member per live worker; members older than 50 s are cut
}


def entries(client: redis.Redis, key: bytes) -> int:
    kind = client.type(key)
    return {b"stream": client.xlen, b"list": client.llen, b"zset": client.zcard}.get(
        kind, lambda _key: 1
    )(key)


def wait_until_streams_end(client: redis.Redis, timeout: float = 60) -> None:
    """The worker writes a stream's end (and settles it) after the client may have gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        open_streams = [
            key
            for key in client.scan_iter(match="serving:stream:*", count=1000)
            if client.xrevrange(key, count=1)[0][1][b"type"] == b"token"
        ]
        if not open_streams:
            return
        time.sleep(0.2)
    raise AssertionError(f"streams never ended: {open_streams}")


def test_what_calls_leave_in_redis_is_bounded_in_keys_entries_bytes_and_time(
    live_server,
    shop,  # noqa: F811  (the fixture imported above)
    real_redis,
):
    # Given the keys Redis holds before bob calls
    before = set(real_redis.scan_iter(count=1000))
    requests_before = real_redis.xlen(dispatch.REQUESTS)
    client = client_for(live_server, shop.bob_key)
    headers = {"Authorization": f"Bearer {shop.bob_key}"}

    # When he calls CALLS times in each way
    for n in range(CALLS):
        response = requests.post(
            f"{live_server.url}/api/v1/models/{shop.tickets.slug}/predict",
            json={"inputs": [f"charged twice, ticket {n}", "the app crashes"]},
            headers=headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        whole = client.completions.create(
            model=shop.clauses.slug, prompt=f"Clause {n}:", max_tokens=MAX_TOKENS
        )
        assert whole.usage.completion_tokens <= MAX_TOKENS
        streamed = list(
            client.completions.create(
                model=shop.clauses.slug, prompt=f"Whereas {n}", max_tokens=MAX_TOKENS, stream=True
            )
        )
        assert streamed[-1].usage.completion_tokens <= MAX_TOKENS
        with requests.post(  # a client that leaves after the first event
            f"{live_server.url}/v1/completions",
            json={"model": shop.clauses.slug, "prompt": "Hi", "max_tokens": MAX_TOKENS,
                  "stream": True},
            headers=headers, stream=True, timeout=60,
        ) as left:  # fmt: skip
            assert left.status_code == 200
            next(left.iter_lines())
    wait_until_streams_end(real_redis)

    # Then every key the calls left belongs to a family with a bound
    left_behind = set(real_redis.scan_iter(count=1000)) - before
    by_family: dict[str, list[bytes]] = {}
    for key in left_behind:
        name = key.decode()
        if name in SINGLETONS:
            continue
        family = next((f for f in families() if name.startswith(f.prefix)), None)
        assert family is not None, f"{name}: a Redis key of no known family (give it a bound)"
        by_family.setdefault(family.name, []).append(key)

        # it expires within its family's TTL, and holds at most its entries
        ttl = real_redis.pttl(key) / 1000
        assert 0 < ttl <= family.max_ttl, (name, ttl)
        assert entries(real_redis, key) <= family.max_entries, name

    streams = CALLS * 2
    assert len(by_family.get("token stream", [])) <= streams
    assert len(by_family.get("cancel flag", [])) <= CALLS * 4  # every end of every call
    # an answer is read (and so removed) unless nobody waits for it: the streams'
    assert len(by_family.get("answer list", [])) <= streams
    for key, bound in SINGLETONS.items():
        if real_redis.exists(key):
            assert entries(real_redis, key) <= bound, key

    # And all of it together holds a few KiB per call
    per_call_keys = [key for keys in by_family.values() for key in keys]
    held = sum(real_redis.memory_usage(key) or 0 for key in per_call_keys)
    assert held <= CALLS * 4 * BYTES_PER_CALL, held
    # and the request stream, the one key that lives on, grew by one entry per call
    assert real_redis.xlen(dispatch.REQUESTS) - requests_before <= CALLS * 4
    print(
        f"{CALLS * 4} calls left {len(per_call_keys)} expiring keys, {held} bytes; "
        + ", ".join(f"{name}: {len(keys)}" for name, keys in sorted(by_family.items()))
    )
