"""Gateway fixtures: alice's published listings, bob's licences and keys, real Redis.

alice (expert) sells, bob buys, carol moderates, mallory has no licence.
"""

import pytest
import redis
from django.conf import settings

from accounts.services import api_key_create
from billing.models import OfferKind
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.conftest import require
from tests.listings.conftest import make_listing


def key_for(user, scopes=("read", "infer")) -> str:
    """A fresh API key's plaintext."""
    _, plaintext = api_key_create(user=user, name="serving test", scopes=list(scopes))
    return plaintext


@pytest.fixture
def real_redis():
    """The Redis the rate limiter and token streams use (this test run's database)."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        require(False, f"Redis at {settings.REDIS_URL} is unreachable ({exc})")
    return client


@pytest.fixture
def triage(alice, carol):
    """alice's published classification listing (minilm-l6), sold by subscription."""
    listing = make_listing(alice, moderator=carol, title="Support ticket triage")
    make_offer(listing, OfferKind.SUBSCRIPTION)
    return listing


@pytest.fixture
def bob_licence(bob, triage):
    """bob's sandbox subscription to triage (10,000 calls a month)."""
    offer = triage.offers.get(kind=OfferKind.SUBSCRIPTION)
    return make_active_licence(bob, offer, sandbox=True)
