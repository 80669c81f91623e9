"""Batches run for real through this process's engine: the batch task runs inline (the
unit-test settings run Celery tasks eagerly) on the engine an inference worker builds
(serving.engine.service.engine_get), against real LoRA adapters in storage, Postgres and
Redis. Over a live server and a worker process: test_batch_on_workers.py.

alice sells a ticket classifier and a clause writer; bob sends batches of requests.
"""

import json

import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.test import override_settings
from django.utils import timezone

from accounts.services import api_key_revoke
from billing.metering import period_served_calls
from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord, UsageStatus
from billing.services import licence_set_spend_cap
from serving.batch_runner import batch_work
from serving.models import Batch, BatchLine, BatchStatus
from serving.protocol import TEXT_GENERATION
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.specialists import LABELS, publish_specialist
from tests.serving.batches.conftest import chat_line, create_batch, jsonl, predict_line, upload
from tests.serving.gateway.conftest import key_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def tickets(alice, carol, tmp_path):
    """alice's published classifier (a real adapter on minilm-l6)."""
    return publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage")


@pytest.fixture
def clauses(alice, carol, tmp_path, tiny_causal_built):
    """alice's published clause writer (a real adapter on tiny-causal)."""
    return publish_specialist(
        alice, carol, task=TEXT_GENERATION, folder=tmp_path, title="Clause writer"
    )


def run_batch(api, key, rows, endpoint, capture) -> Batch:
    """Upload, create, and let the batch task run inline to its end."""
    file_id = upload(api(), key, jsonl(rows)).json()["id"]
    with capture(execute=True):
        response = create_batch(api(), key, file_id, endpoint)
    assert response.status_code == 200, response.content
    return Batch.objects.get(pk=response.json()["id"])


def file_lines(file_id: str | None) -> list[dict]:
    from serving.models import BatchFile

    if file_id is None:
        return []
    with default_storage.open(BatchFile.objects.get(pk=file_id).storage_path, "rb") as handle:
        return [json.loads(line) for line in handle.read().decode().splitlines()]


def test_a_predict_batch_is_answered_in_order_and_billed_once_per_row_at_half_price(
    api, bob, tickets, clauses, django_capture_on_commit_callbacks
):
    # Given bob's per-call licence on the classifier (2.00 per 1,000 calls, batch at 50%)
    licence = make_active_licence(bob, make_offer(tickets, OfferKind.PER_CALL))
    key = key_for(bob, scopes=("infer",))
    rows = [
        predict_line("one", tickets.slug, ["I was charged twice"]),
        predict_line("two", tickets.slug, ["The app crashes", "Lovely support"]),
        predict_line("unlicensed", clauses.slug, "The tenant shall"),
        predict_line("bad-inputs", tickets.slug, 5),
        predict_line("three", f"{tickets.slug}@1", ["Refund please"]),
    ]

    # When he runs them as a batch
    batch = run_batch(
        api, key, rows, "/api/v1/models/{listing}/predict", django_capture_on_commit_callbacks
    )

    # Then it completes: three rows answered as /predict answers, two refused as it refuses
    assert batch.status == BatchStatus.COMPLETED
    assert (batch.request_total, batch.request_completed, batch.request_failed) == (5, 3, 2)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = file_lines(batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["one", "two", "three"]
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["model"] == f"{tickets.slug}@1"
        assert all(p["label"] in LABELS for p in body["predictions"])
    assert len(output[1]["response"]["body"]["predictions"]) == 2
    errors = {line["custom_id"]: line["response"] for line in file_lines(batch.error_file_id)}
    assert errors["unlicensed"]["status_code"] == 403
    assert errors["unlicensed"]["body"]["error"]["code"] == "licence_required"
    assert set(errors["unlicensed"]["body"]["error"]) == {"code", "message", "fields"}
    assert errors["bad-inputs"]["status_code"] == 422
    assert errors["bad-inputs"]["body"]["error"]["code"] == "invalid_input"
    # and the ledger holds one settled row per answered row, keyed by its line, at 50%
    records = UsageRecord.objects.filter(licence=licence).order_by("idempotency_key")
    assert [(r.idempotency_key, r.units, r.price_percent, r.status) for r in records] == [
        (f"batch:{batch.id}:1", 1, 50, UsageStatus.OK),
        (f"batch:{batch.id}:2", 2, 50, UsageStatus.OK),
        (f"batch:{batch.id}:5", 1, 50, UsageStatus.OK),
    ]
    assert all(r.settled_at is not None and r.api_key is not None for r in records)
    period = LicenceUsagePeriod.objects.get(licence=licence)
    assert period.calls == 4  # the quota counts whole calls
    assert period_served_calls(period) == 2  # billing counts them at the batch price
    # and a second run of its task finds nothing to do
    assert batch_work(batch_id=batch.id) == "skipped"
    assert UsageRecord.objects.count() == 3 and BatchLine.objects.count() == 5


def test_chat_rows_answer_as_chat_completions_and_refuse_as_they_do(
    api, bob, tickets, clauses, django_capture_on_commit_callbacks
):
    for listing in (tickets, clauses):
        make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    key = key_for(bob, scopes=("infer",))
    rows = [
        chat_line("ok", clauses.slug, max_tokens=4),
        chat_line("classifier", tickets.slug),
        chat_line("streamed", clauses.slug, stream=True),
        chat_line("unknown", "no-such-listing"),
        chat_line("too-many-tokens", clauses.slug, max_tokens=10**6),
    ]

    batch = run_batch(api, key, rows, "/v1/chat/completions", django_capture_on_commit_callbacks)

    assert batch.status == BatchStatus.COMPLETED
    [answer] = file_lines(batch.output_file_id)
    body = answer["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == f"{clauses.slug}@1"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 4
    errors = {line["custom_id"]: line["response"] for line in file_lines(batch.error_file_id)}
    assert [errors[c]["status_code"] for c in ("classifier", "streamed", "unknown")] == [
        422, 422, 404,
    ]  # fmt: skip
    assert errors["classifier"]["body"]["error"]["code"] == "wrong_task"
    assert errors["classifier"]["body"]["error"]["type"] == "invalid_request_error"
    assert errors["unknown"]["body"]["error"]["code"] == "listing_not_found"
    assert errors["too-many-tokens"]["body"]["error"]["param"] == "max_new_tokens"
    assert list(errors) == ["classifier", "streamed", "unknown", "too-many-tokens"]


def test_the_spend_cap_and_the_quota_are_checked_per_row(
    api, bob, tickets, django_capture_on_commit_callbacks
):
    # Given bob's per-call licence capped at 0.01 USD a month: 5 calls at 2.00 per 1,000
    licence = make_active_licence(bob, make_offer(tickets, OfferKind.PER_CALL))
    licence_set_spend_cap(buyer=bob, licence_id=licence.id, amount=1)
    key = key_for(bob, scopes=("infer",))
    rows = [predict_line(f"r{n}", tickets.slug, [f"ticket {n}"]) for n in range(7)]

    batch = run_batch(
        api, key, rows, "/api/v1/models/{listing}/predict", django_capture_on_commit_callbacks
    )

    assert (batch.request_completed, batch.request_failed) == (5, 2)
    refused = file_lines(batch.error_file_id)
    assert [line["custom_id"] for line in refused] == ["r5", "r6"]
    assert {line["response"]["status_code"] for line in refused} == {429}
    assert {line["response"]["body"]["error"]["code"] for line in refused} == {"spend_cap_reached"}
    assert UsageRecord.objects.filter(licence=licence, status=UsageStatus.OK).count() == 5
    assert LicenceUsagePeriod.objects.get(licence=licence).calls == 5


@override_settings(BATCH_SLICE_SECONDS=0, BATCH_ROWS_IN_FLIGHT=2)
def test_a_batch_worked_in_slices_resumes_at_its_first_unanswered_row(
    api, bob, tickets, django_capture_on_commit_callbacks
):
    """Each slice ends at once and sends the batch on: every next slice must start at
    the first row without an answer, as a worker that takes over a crashed one does."""
    licence = make_active_licence(bob, make_offer(tickets, OfferKind.SUBSCRIPTION))
    key = key_for(bob, scopes=("infer",))
    rows = [predict_line(f"r{n}", tickets.slug, [f"ticket {n}"]) for n in range(9)]

    batch = run_batch(
        api, key, rows, "/api/v1/models/{listing}/predict", django_capture_on_commit_callbacks
    )

    assert batch.status == BatchStatus.COMPLETED
    assert [line["custom_id"] for line in file_lines(batch.output_file_id)] == [
        f"r{n}" for n in range(9)
    ]
    keys = list(UsageRecord.objects.filter(licence=licence).values_list("idempotency_key"))
    assert sorted(k for (k,) in keys) == sorted(f"batch:{batch.id}:{n}" for n in range(1, 10))
    assert LicenceUsagePeriod.objects.get(licence=licence).calls == 9
    assert (batch.lease_owner, batch.lease_expires_at, batch.stalled_resumes) == ("", None, 0)


def test_one_worker_at_a_time_and_a_batch_whose_workers_keep_dying_fails(
    api, bob, tickets, django_capture_on_commit_callbacks
):
    make_active_licence(bob, make_offer(tickets, OfferKind.SUBSCRIPTION))
    key = key_for(bob, scopes=("infer",))
    file_id = upload(api(), key, jsonl([predict_line("a", tickets.slug, ["x"])])).json()["id"]
    batch_id = create_batch(api(), key, file_id, "/api/v1/models/{listing}/predict").json()["id"]
    later = timezone.now() + timezone.timedelta(minutes=1)
    Batch.objects.filter(pk=batch_id).update(lease_owner="alive", lease_expires_at=later)

    assert batch_work(batch_id=batch_id) == "skipped"  # another worker holds its lease

    lapsed = timezone.now() - timezone.timedelta(seconds=1)
    Batch.objects.filter(pk=batch_id).update(
        lease_owner="dead", lease_expires_at=lapsed, stalled_resumes=3
    )
    assert batch_work(batch_id=batch_id) == "done"
    batch = Batch.objects.get(pk=batch_id)
    assert batch.status == BatchStatus.FAILED
    assert batch.errors[0]["code"] == "worker_lost"
    assert batch.failed_at is not None and BatchLine.objects.count() == 0


def test_rows_stop_when_the_batch_key_is_revoked_and_an_expired_batch_ends_expired(
    api, bob, tickets, django_capture_on_commit_callbacks
):
    licence = make_active_licence(bob, make_offer(tickets, OfferKind.SUBSCRIPTION))
    key = key_for(bob, scopes=("infer",))
    rows = [predict_line(f"r{n}", tickets.slug, ["x"]) for n in range(3)]
    file_id = upload(api(), key, jsonl(rows)).json()["id"]
    revoked_id = create_batch(api(), key, file_id, "/api/v1/models/{listing}/predict").json()["id"]
    expired_id = create_batch(api(), key, file_id, "/api/v1/models/{listing}/predict").json()["id"]

    api_key_revoke(user=bob, key_id=Batch.objects.get(pk=revoked_id).api_key_id)
    assert batch_work(batch_id=revoked_id) == "done"
    revoked = Batch.objects.get(pk=revoked_id)
    assert (revoked.status, revoked.request_failed) == (BatchStatus.COMPLETED, 3)
    codes = {
        line["response"]["body"]["error"]["code"] for line in file_lines(revoked.error_file_id)
    }
    assert codes == {"authentication_failed"}

    Batch.objects.filter(pk=expired_id).update(expires_at=timezone.now())
    assert batch_work(batch_id=expired_id) == "done"
    expired = Batch.objects.get(pk=expired_id)
    assert (expired.status, expired.request_failed) == (BatchStatus.EXPIRED, 3)
    assert expired.expired_at is not None and expired.output_file_id is None
    lines = file_lines(expired.error_file_id)
    assert [(line["custom_id"], line["error"]["code"]) for line in lines] == [
        ("r0", "batch_expired"), ("r1", "batch_expired"), ("r2", "batch_expired"),
    ]  # fmt: skip
    assert not UsageRecord.objects.filter(licence=licence).exists()


def test_alice_batches_her_own_listing_without_a_licence_or_a_ledger_row(
    api, alice, tickets, django_capture_on_commit_callbacks
):
    key = key_for(alice, scopes=("infer",))
    rows = [predict_line("mine", tickets.slug, ["x"])]

    batch = run_batch(
        api, key, rows, "/api/v1/models/{listing}/predict", django_capture_on_commit_callbacks
    )

    assert (batch.status, batch.request_completed) == (BatchStatus.COMPLETED, 1)
    assert batch.error_file_id is None
    assert not UsageRecord.objects.exists()


def test_rows_reach_the_engine_at_batch_priority(alice, tickets):
    from serving import gateway
    from serving.batch_runner import _inference_request
    from serving.protocol import PRIORITY_BATCH, InferenceRequest

    target = gateway.target_resolve(user=alice, model=gateway.ModelRef.parse(tickets.slug))
    raw = _inference_request("row-1", target, {"inputs": ["x"]})

    request = InferenceRequest.from_dict(raw)
    assert request.priority == PRIORITY_BATCH
    assert request.deadline > timezone.now().timestamp() + settings.BATCH_ROW_TIMEOUT_SECONDS - 5


class AnswerCodes:
    """The engine, noting the error code of each answer it gives (None: an answer)."""

    def __init__(self, engine):
        self.engine, self.codes = engine, []

    def infer(self, raw: dict) -> dict:
        answer = self.engine.infer(raw)
        self.codes.append((answer.get("error") or {}).get("code"))
        return answer


@override_settings(SERVING_QUEUE_MAX_WAITING=2, BATCH_ROWS_IN_FLIGHT=8)
def test_rows_the_engine_sends_back_overloaded_go_again_and_are_never_error_lines(
    api, bob, tickets
):
    """An engine whose batch queue holds 2 requests answers the rest `overloaded`: the
    batch sends them again after retry_after, and every row ends answered once."""
    from serving.engine.service import _engine_from_settings

    licence = make_active_licence(bob, make_offer(tickets, OfferKind.SUBSCRIPTION))
    key = key_for(bob, scopes=("infer",))
    rows = [predict_line(f"r{n}", tickets.slug, [f"ticket {n}"]) for n in range(12)]
    file_id = upload(api(), key, jsonl(rows)).json()["id"]
    batch_id = create_batch(api(), key, file_id, "/api/v1/models/{listing}/predict").json()["id"]
    small_engine = _engine_from_settings()
    answers = AnswerCodes(small_engine)
    try:
        assert batch_work(batch_id=batch_id, engine=answers) == "done"
    finally:
        small_engine.stop()

    assert "overloaded" in answers.codes  # the engine did send rows back

    batch = Batch.objects.get(pk=batch_id)
    assert (batch.status, batch.request_completed, batch.request_failed) == (
        BatchStatus.COMPLETED, 12, 0,
    )  # fmt: skip
    assert batch.error_file_id is None
    assert UsageRecord.objects.filter(licence=licence, status=UsageStatus.OK).count() == 12


def test_a_row_another_worker_answered_meanwhile_is_neither_billed_nor_written_twice(
    api, bob, tickets
):
    """The worker that lost its lease finds the row's line written when it writes its
    own answers: the whole write rolls back (its ledger rows too) and it stops."""
    from serving import gateway
    from serving.batch_runner import Answer, BatchSlice, LeaseLost, Prepared, _claim
    from serving.batches import parse_request_line

    licence = make_active_licence(bob, make_offer(tickets, OfferKind.PER_CALL))
    key = key_for(bob, scopes=("infer",))
    rows = [predict_line(f"r{n}", tickets.slug, ["x"]) for n in range(2)]
    file_id = upload(api(), key, jsonl(rows)).json()["id"]
    batch_id = create_batch(api(), key, file_id, "/api/v1/models/{listing}/predict").json()["id"]
    batch = _claim(batch_id, "late-worker")
    BatchLine.objects.create(
        batch=batch, line=2, custom_id="r1", request_id="first", succeeded=True,
        status_code=200, body={"by": "the worker that took over"},
    )  # fmt: skip
    target = gateway.target_resolve(user=bob, model=gateway.ModelRef.parse(tickets.slug))
    answers, prepared = [], {}
    for line in (1, 2):
        row = parse_request_line(line, jsonl([rows[line - 1]]).strip())
        prepared[line] = Prepared(
            row=row, request_id=f"late-{line}", target=target, units=1, request={}, started=0
        )
        answers.append(Answer(row=row, request_id=f"late-{line}", status_code=200, body={}))

    with pytest.raises(LeaseLost):
        BatchSlice(batch, "late-worker", engine=None)._commit(answers, prepared_by_line=prepared)

    assert not UsageRecord.objects.filter(licence=licence).exists()
    assert list(BatchLine.objects.values_list("line", "request_id")) == [(2, "first")]
    assert Batch.objects.get(pk=batch_id).request_completed == 0
