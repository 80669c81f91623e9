"""A dead engine is a 503 in seconds and a stalled one a 504 within the timeout, never a
hung request; the call's ledger row is settled as an error (not billed)."""

import os
import signal
import time

import pytest
from django.conf import settings
from django.test import override_settings

from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord, UsageStatus
from tests.billing.conftest import make_active_licence
from tests.integration.conftest import INFERENCE_POOL_ARGS
from tests.serving.gateway.conftest import key_for

pytestmark = pytest.mark.integration


def test_predict_without_a_worker_is_503_and_the_row_is_an_unbilled_error(
    api, bob, bob_licence, triage, no_inference_worker
):
    started = time.monotonic()
    response = api().post(
        f"/api/v1/models/{triage.slug}/predict",
        {"inputs": ["My invoice is wrong"]},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {key_for(bob)}",
    )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert time.monotonic() - started < settings.SERVING_TIMEOUT_SECONDS
    record = UsageRecord.objects.get(licence=bob_licence)
    assert record.status == UsageStatus.ERROR
    assert LicenceUsagePeriod.objects.get(licence=bob_licence).calls == 0


def test_a_stream_without_a_worker_is_503_in_openai_shape(api, bob, drafting, no_inference_worker):
    licence = make_active_licence(bob, drafting.offers.get(kind=OfferKind.SUBSCRIPTION))

    response = api().post(
        "/v1/chat/completions",
        {"model": drafting.slug, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {key_for(bob)}",
    )

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "api_error"
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert UsageRecord.objects.get(licence=licence).status == UsageStatus.ERROR


@override_settings(SERVING_TIMEOUT_SECONDS=3)
def test_a_stalled_engine_is_504_within_the_timeout_and_not_billed(
    api, bob, bob_licence, triage, spawn_worker, tasks_through_the_broker
):
    # Given an inference worker that was beating a moment ago and is now frozen (a
    # stalled engine, not a dead one: its last heartbeat is younger than ALIVE_SECONDS)
    worker = spawn_worker("inference", INFERENCE_POOL_ARGS)
    children = [worker.process.pid]
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = api().post(
            f"/api/v1/models/{triage.slug}/predict",
            {"inputs": ["My invoice is wrong"]},
            format="json",
            HTTP_AUTHORIZATION=f"Bearer {key_for(bob)}",
        )
        waited = time.monotonic() - started
    finally:
        for pid in children:
            os.kill(pid, signal.SIGCONT)

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "engine_timeout"
    assert waited < 3 + 2  # the timeout, plus one liveness probe
    record = UsageRecord.objects.get(licence=bob_licence)
    assert record.status == UsageStatus.ERROR
    assert LicenceUsagePeriod.objects.get(licence=bob_licence).calls == 0
