"""Issue 20, defect 4: streamed generations are billed by what was delivered, settled on
the server when the stream ends, and every end of a call stops the worker.

The token stream is the real Redis stream the engine writes (its protocol, written here
by the test in the worker's place), the ledger is the real database, and the engine's
stop rule is run on the tiny causal model.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest

from billing.models import OfferKind, UsageRecord, UsageStatus
from serving import gateway, protocol
from serving.engine.runner import GenerationRow, generate_rows
from serving.engine.service import Engine
from serving.protocol import GenerationParameters, Usage
from tests.billing.conftest import make_active_licence, make_offer
from tests.listings.conftest import make_listing

pytestmark = pytest.mark.django_db


@pytest.fixture
def opened(alice, bob, carol, real_redis):
    """bob's streamed call, recorded in the ledger as the gateway records it, with the
    worker's side of the stream in the test's hands."""
    listing = make_listing(alice, moderator=carol, title="Clause writer")
    make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    target = gateway.target_resolve(user=bob, model=gateway.ModelRef.parse(listing.slug))
    request_id = str(uuid.uuid4())
    gateway._record(target=target, api_key=None, request_id=request_id, units=1)
    stream = gateway.GatewayStream(request_id=request_id, target=target, started=time.monotonic())

    def worker_sends(*events: dict) -> None:
        for event in events:
            real_redis.xadd(protocol.stream_key(request_id), event)

    yield SimpleNamespace(stream=stream, request_id=request_id, send=worker_sends)
    real_redis.delete(protocol.stream_key(request_id), protocol.cancel_key(request_id))


def row(request_id: str) -> UsageRecord:
    return UsageRecord.objects.get(idempotency_key=request_id)


def test_a_stream_that_fails_after_delivering_tokens_is_billed_and_stops_the_worker(
    opened, real_redis
):
    opened.send(
        protocol.stream_event_token("Whereas"),
        protocol.stream_event_token(" the parties"),
        protocol.stream_event_error("engine_error", "The worker crashed."),
    )

    events = [e for e in opened.stream.events() if e.type != "idle"]

    assert [e.type for e in events] == ["token", "token", "error"]
    record = row(opened.request_id)
    assert (record.status, record.settled_at is not None) == (UsageStatus.OK, True)
    assert real_redis.exists(protocol.cancel_key(opened.request_id))


def test_a_stream_that_fails_before_any_token_is_free(opened):
    opened.send(protocol.stream_event_error("engine_error", "The worker crashed."))

    list(opened.stream.events())

    assert row(opened.request_id).status == UsageStatus.ERROR


def test_closing_a_finished_stream_still_sets_the_cancel(opened, real_redis):
    opened.send(protocol.stream_event_token("Hi"))
    opened.send(protocol.stream_event_done("stop", Usage(3, 1, 4)))
    list(opened.stream.events())
    real_redis.delete(protocol.cancel_key(opened.request_id))

    opened.stream.close()  # the view closes every response, finished or not

    assert real_redis.exists(protocol.cancel_key(opened.request_id))
    assert row(opened.request_id).status == UsageStatus.OK  # settled once, not changed


def test_the_server_settles_a_stream_its_client_never_read_to_the_end(opened, real_redis):
    """The worker settles when the stream ends; the client has not read a single event."""
    opened.send(protocol.stream_event_token("Whereas"))
    opened.send(protocol.stream_event_done("length", Usage(2, 1, 3)))
    from serving.tasks import settle_stream  # what the worker runs when its stream ends

    settle_stream(opened.request_id, real_redis)

    record = row(opened.request_id)
    assert (record.status, record.settled_at is not None) == (UsageStatus.OK, True)
    list(opened.stream.events())  # the client reads it later: nothing changes
    assert row(opened.request_id).settled_at == record.settled_at


def test_a_non_streamed_call_that_times_out_cancels_its_work(
    opened, bob, real_redis, settings, monkeypatch
):
    settings.SERVING_TIMEOUT_SECONDS = 1
    monkeypatch.setattr(gateway, "_send", lambda request: None)  # the queue takes it...
    monkeypatch.setattr(gateway, "_inference_workers_alive", lambda: True)  # ...nobody answers
    target = opened.stream.target
    request = gateway._new_request(
        target, str(uuid.uuid4()), prompt="Whereas", parameters=GenerationParameters()
    )

    with pytest.raises(gateway.EngineTimeout):
        gateway._run(user=bob, api_key=None, target=target, request=request, units=1)

    assert real_redis.exists(protocol.cancel_key(request.request_id))
    assert row(request.request_id).status == UsageStatus.ERROR  # not billed
    real_redis.delete(protocol.cancel_key(request.request_id))


def test_the_worker_stops_a_row_whose_deadline_passed_within_one_step(base_sources):
    """The engine's stop rule: a row past its deadline leaves the batch at the next
    decoding step, as a cancelled one does (nobody waits for it any more)."""
    from tests.serving.conftest import new_registry

    engine = Engine(registry=new_registry(base_sources), redis=None, max_size=4, max_wait_ms=1)
    try:
        base = engine.registry.base("tiny-causal", protocol.TEXT_GENERATION, "")
        late = SimpleNamespace(request=SimpleNamespace(request_id="late", deadline=time.time() - 1))
        on_time = SimpleNamespace(
            request=SimpleNamespace(request_id="fine", deadline=time.time() + 600)
        )
        rows = [
            GenerationRow("Hello", None, GenerationParameters(max_new_tokens=40)),
            GenerationRow("Hello", None, GenerationParameters(max_new_tokens=40)),
        ]
        results = generate_rows(base, rows, cancelled=engine._cancelled_checker([late, on_time]))
    finally:
        engine.stop()

    assert (results[0].finish_reason, results[0].completion_tokens) == ("cancelled", 1)
    assert results[1].finish_reason != "cancelled"
