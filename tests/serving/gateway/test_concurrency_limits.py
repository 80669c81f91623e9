"""One key's burst cannot take every slot: calls in flight are capped per key and per
listing (429 too_many_concurrent_calls, Retry-After), and every end of a call frees its
slot."""

import uuid

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

from billing.models import OfferKind, UsageRecord
from serving.errors import RateLimited
from serving.ratelimit import (
    WINDOW_SECONDS,
    InFlight,
    RateWindow,
    aadmit,
    ainflight_release,
    rate_window_key,
    serving_aredis,
)
from tests.billing.conftest import make_active_licence
from tests.serving.gateway.conftest import key_for

pytestmark = pytest.mark.integration

ONE_INPUT = {"inputs": ["My invoice is wrong"]}


def predict(client, key, slug):
    return client.post(
        f"/api/v1/models/{slug}/predict", ONE_INPUT, format="json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )  # fmt: skip


def _in_flight(slot: InFlight) -> int:
    async def read():
        return int(await serving_aredis().get(slot.key) or 0)

    return async_to_sync(read)()


def _hold(slot: InFlight) -> None:
    async_to_sync(aadmit)(windows=[], slots=[slot], ttl=60)


def _window_count(window: RateWindow) -> int:
    import time

    async def read():
        key = rate_window_key(window.subject, int(time.time() // WINDOW_SECONDS))
        return int(await serving_aredis().get(key) or 0)

    return async_to_sync(read)()


def _release(slot: InFlight) -> None:
    async_to_sync(ainflight_release)([slot])


@override_settings(SERVING_MAX_CONCURRENT_PER_KEY=1)
def test_a_key_at_its_limit_is_429_and_its_slot_comes_back_when_its_call_ends(
    api, bob, bob_licence, triage, no_inference_worker
):
    key = key_for(bob)
    key_id = bob.api_keys.get().pk
    slot = InFlight(subject=f"key:{key_id}", limit=1)
    _hold(slot)  # one call of this key is running

    refused = predict(api(), key, triage.slug)

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_concurrent_calls"
    assert refused["Retry-After"] == "1"
    assert UsageRecord.objects.count() == 0  # refused before the ledger

    _release(slot)
    answered = predict(api(), key, triage.slug)  # admitted: no worker, so 503
    assert answered.status_code == 503
    assert _in_flight(slot) == 0  # the failed call gave its slot back


@override_settings(SERVING_MAX_CONCURRENT_PER_LISTING=2)
def test_a_listing_at_its_limit_refuses_every_key_in_each_error_shape(
    api, bob, bob_licence, triage, drafting, no_inference_worker
):
    make_active_licence(bob, drafting.offers.get(kind=OfferKind.SUBSCRIPTION), sandbox=True)
    for listing in (triage, drafting):
        _hold(InFlight(subject=f"listing:{listing.slug}", limit=2))
        _hold(InFlight(subject=f"listing:{listing.slug}", limit=2))

    refused = predict(api(), key_for(bob), triage.slug)
    openai = api().post(
        "/v1/completions", {"model": drafting.slug, "prompt": "x"}, format="json",
        HTTP_AUTHORIZATION=f"Bearer {key_for(bob)}",
    )  # fmt: skip

    assert refused.status_code == 429
    assert refused.json()["error"]["fields"] == {"concurrent_limit": ["2"]}
    assert openai.status_code == 429
    assert openai.json()["error"]["code"] == "too_many_concurrent_calls"
    assert openai.json()["error"]["type"] == "rate_limit_error"
    assert openai["Retry-After"] == "1"
    assert _in_flight(InFlight(subject=f"listing:{triage.slug}", limit=2)) == 2  # took nothing


def test_a_call_refused_for_concurrency_counts_in_no_rate_window(real_redis):
    window = RateWindow(subject=f"user:{uuid.uuid4()}", limit=100)
    full = InFlight(subject=f"key:{uuid.uuid4()}", limit=1)
    _hold(full)

    with pytest.raises(RateLimited) as refused:
        async_to_sync(aadmit)(windows=[window], slots=[full], ttl=60)

    assert refused.value.code == "too_many_concurrent_calls"
    assert _window_count(window) == 0
    assert _in_flight(full) == 1


def test_a_call_refused_by_its_rate_window_takes_no_slot(real_redis):
    window = RateWindow(subject=f"user:{uuid.uuid4()}", limit=1)
    slot = InFlight(subject=f"key:{uuid.uuid4()}", limit=5)
    async_to_sync(aadmit)(windows=[window], slots=[slot], ttl=60)

    with pytest.raises(RateLimited) as refused:
        async_to_sync(aadmit)(windows=[window], slots=[slot], ttl=60)

    assert refused.value.code == "rate_limited"
    assert (_window_count(window), _in_flight(slot)) == (1, 1)


def test_sixty_four_concurrent_admissions_take_exactly_the_limit(real_redis):
    import asyncio

    slot = InFlight(subject=f"listing:{uuid.uuid4()}", limit=10)
    window = RateWindow(subject=f"user:{uuid.uuid4()}", limit=10_000)

    async def race():
        async def one():
            try:
                await aadmit(windows=[window], slots=[slot], ttl=60)
                return True
            except RateLimited:
                return False

        return await asyncio.gather(*(one() for _ in range(64)))

    admitted = async_to_sync(race)()

    assert sum(admitted) == 10
    assert (_in_flight(slot), _window_count(window)) == (10, 10)
