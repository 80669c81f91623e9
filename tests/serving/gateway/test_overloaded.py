"""An engine whose queue is full answers `overloaded` with a retry-after; the gateway turns
it into 503 with Retry-After (whole seconds), in each error shape, and bills nothing.

The lane's own admission (its bound, the retry-after from its drain rate) is tested on
the real engine in tests/serving/test_engine_lanes.py; here a dispatch Consumer answers
every call as that engine answers when full (a stand-in for the engine, named as such).
"""

import pytest
import redis
from django.conf import settings

from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord, UsageStatus
from serving import dispatch, gateway, protocol
from serving.errors import EngineOverloaded
from tests.billing.conftest import make_active_licence
from tests.serving.gateway.conftest import key_for

pytestmark = pytest.mark.integration


def full_engine(request: dict) -> dict:
    """What Engine.infer answers when the lane's waiting queue is at its bound."""
    return protocol.InferenceError(
        request["request_id"], protocol.ErrorCode.OVERLOADED,
        "The classification lane has 256 requests waiting, its limit; retry in 3 s.",
        retry_after=2.2,
    ).to_dict()  # fmt: skip


@pytest.fixture
def overloaded_worker(real_redis, no_inference_worker):
    consumer = dispatch.Consumer(
        redis.Redis.from_url(settings.REDIS_URL), full_engine, name="overloaded-stand-in"
    ).start()
    yield consumer
    consumer.stop()


def test_an_overloaded_answer_is_a_503_that_says_when_to_retry():
    error = gateway._engine_error(protocol.ErrorCode.OVERLOADED, "full", 2.2)
    assert isinstance(error, EngineOverloaded)
    assert (error.status, error.code, error.retry_after) == (503, "overloaded", 3)
    assert gateway._engine_error(protocol.ErrorCode.OVERLOADED, "full", None).retry_after == 1


def test_a_stream_error_event_carries_the_retry_after():
    event = gateway._event(
        {
            k.encode(): v.encode()
            for k, v in protocol.stream_event_error("overloaded", "full", 0.4).items()
        }
    )
    assert (event.code, event.retry_after) == ("overloaded", 0.4)


def test_predict_and_chat_on_a_full_engine_get_503_retry_after_and_cost_nothing(
    api, bob, bob_licence, triage, drafting, overloaded_worker
):
    make_active_licence(bob, drafting.offers.get(kind=OfferKind.SUBSCRIPTION), sandbox=True)
    key = key_for(bob)

    predict = api().post(
        f"/api/v1/models/{triage.slug}/predict", {"inputs": ["My invoice is wrong"]},
        format="json", HTTP_AUTHORIZATION=f"Bearer {key}",
    )  # fmt: skip
    chat = api().post(
        "/v1/chat/completions",
        {"model": drafting.slug, "messages": [{"role": "user", "content": "Hi"}]},
        format="json", HTTP_AUTHORIZATION=f"Bearer {key}",
    )  # fmt: skip

    assert predict.status_code == 503
    assert predict["Retry-After"] == "3"
    assert predict.json()["error"]["code"] == "overloaded"
    assert chat.status_code == 503
    assert chat["Retry-After"] == "3"
    assert chat.json()["error"]["code"] == "overloaded"
    assert set(UsageRecord.objects.values_list("status", flat=True)) == {UsageStatus.ERROR}
    assert all(p.calls == 0 for p in LicenceUsagePeriod.objects.all())
