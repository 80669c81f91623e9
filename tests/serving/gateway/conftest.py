"""Gateway fixtures: alice's published listings, bob's licences and keys, real Redis.

alice (expert) sells, bob buys, carol moderates, mallory has no licence.
"""

import time

import pytest
import redis
from django.conf import settings

from accounts.services import api_key_create
from billing.models import OfferKind
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.conftest import (  # noqa: F401  (fixtures: real worker processes)
    redis_url,
    require,
    shipped_base_models,
    spawn_worker,
    worker_env,
)
from tests.listings.conftest import make_listing, make_version
from training_worker.models import BaseModel, ModelVersion


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
def no_inference_worker(real_redis):
    """No inference worker beats: a call that reaches the queue is 503 within seconds."""
    from serving import dispatch

    # A worker of an earlier test module may still be beating for a few seconds.
    deadline = time.monotonic() + dispatch.ALIVE_SECONDS + 2
    while dispatch.workers_alive(real_redis) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not dispatch.workers_alive(real_redis), "this test needs no inference worker"


@pytest.fixture
def tasks_through_the_broker():
    """The unit-test settings run tasks inline; the gateway's go through Redis (as in
    production) and its answers come back through the result backend."""
    from marketplace.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    yield
    app.conf.task_always_eager = previous


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


def make_served_listing(owner, *, moderator, title: str, task: str, adapter=None):
    """A published listing whose live version runs `task`: on tiny-causal for generation,
    on minilm-l6 for classification. `adapter` (serving.engine.synthetic.BuiltAdapter,
    its files already in storage) makes the version point at real files."""
    from listings import services

    version = make_version(owner)
    fields = {"task": task}
    if task == "text-generation":
        fields |= {"base_model": BaseModel.objects.get(slug="tiny-causal"), "labels": []}
    if adapter is not None:
        fields |= {
            "adapter_path": adapter.ref.adapter_path,
            "adapter_sha256": adapter.ref.sha256,
            "config_path": adapter.ref.config_path,
            "config_sha256": adapter.ref.config_sha256,
            "labels": list(adapter.ref.labels),
        }
    ModelVersion.objects.filter(pk=version.pk).update(**fields)
    listing = services.listing_create(
        owner=owner, model_version_id=version.id, title=title,
        summary="Answers in the house style.", domain="legal",
    )  # fmt: skip
    services.listing_submit(owner=owner, listing_id=listing.id)
    return services.listing_approve(moderator=moderator, listing_id=listing.id)


@pytest.fixture
def drafting(alice, carol):
    """alice's published generation listing (tiny-causal; no adapter files: for calls
    that never reach a worker), sold by subscription."""
    listing = make_served_listing(
        alice, moderator=carol, title="Clause drafting", task="text-generation"
    )
    make_offer(listing, OfferKind.SUBSCRIPTION)
    return listing
