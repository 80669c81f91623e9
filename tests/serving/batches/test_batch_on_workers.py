"""Batches over HTTP with the official `openai` client, unchanged, against a live server
and real inference worker processes (threads pool, as in production), Postgres and Redis.

alice sells a clause writer (a real LoRA adapter on tiny-causal); bob holds a sandbox
subscription to it and sends batches with his key. A worker SIGKILLed mid-batch leaves
its lease to lapse; the sweep hands the batch to another worker, which resumes at the
first unanswered row: every row is answered, written and billed exactly once.
"""

import json
import time

import openai
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord, UsageStatus
from serving.batches import (
    PREDICT,
    batch_create,
    batch_file_upload,
    batches_resume_stalled,
)
from serving.models import Batch, BatchLine, BatchStatus
from serving.protocol import TEXT_GENERATION
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.specialists import publish_specialist
from tests.serving.batches.conftest import chat_line, jsonl, predict_line
from tests.serving.gateway.conftest import key_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def clauses(alice, carol, bob, shipped_base_models, tiny_causal_built, tmp_path):
    """alice's clause writer; bob's sandbox subscription to it (batch rows at 50%)."""
    listing = publish_specialist(
        alice, carol, task=TEXT_GENERATION, folder=tmp_path, title="Clause writer"
    )
    make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION), sandbox=True)
    return listing


def wait_until_ended(retrieve, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = retrieve()
        if batch.status in ENDED:
            return batch
        time.sleep(0.3)
    raise AssertionError(f"the batch did not end in {seconds} s: {batch}")


def test_the_openai_client_uploads_runs_lists_reads_and_cancels_batches_unchanged(
    live_server, bob, clauses, inference_workers, tasks_through_the_broker
):
    inference_workers(
        BATCH_ROWS_IN_FLIGHT="2"
    )  # few rows at a time, so the long batch is still running
    client = openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=key_for(bob), max_retries=0, timeout=60
    )
    rows = [chat_line(f"clause-{n}", clauses.slug, f"Clause {n}:", max_tokens=6) for n in range(6)]
    rows.insert(3, chat_line("unknown", "no-such-listing"))

    # When bob uploads his requests and runs them as a batch with the official client
    uploaded = client.files.create(file=("requests.jsonl", jsonl(rows)), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes) == (
        "file",
        "batch",
        len(jsonl(rows)),
    )
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    assert created.status == "validating" and created.metadata == {"run": "nightly"}
    batch = wait_until_ended(lambda: client.batches.retrieve(created.id))

    # Then it completes with its progress, and its files read back in input order
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed) == (7, 6)
    assert batch.request_counts.failed == 1
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == [f"clause-{n}" for n in range(6)]
    for line in output:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200
        assert body["object"] == "chat.completion" and body["model"] == f"{clauses.slug}@1"
        assert body["usage"]["completion_tokens"] <= 6
    [refused] = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert refused["custom_id"] == "unknown"
    assert refused["response"]["status_code"] == 404
    assert refused["response"]["body"]["error"]["code"] == "listing_not_found"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert created.id in [b.id for b in client.batches.list(limit=10)]
    # and the ledger holds one row per answered row, at the batch price
    records = UsageRecord.objects.filter(idempotency_key__startswith=f"batch:{batch.id}:")
    assert records.count() == 6
    assert set(records.values_list("price_percent", "status")) == {(50, UsageStatus.OK)}

    # When he starts a longer batch and cancels it at once
    many = [chat_line(f"long-{n}", clauses.slug, max_tokens=48) for n in range(200)]
    long_file = client.files.create(file=("many.jsonl", jsonl(many)), purpose="batch")
    long_batch = client.batches.create(
        input_file_id=long_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while client.batches.retrieve(long_batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline, "the long batch never answered a row"
        time.sleep(0.05)
    cancelling = client.batches.cancel(long_batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = wait_until_ended(lambda: client.batches.retrieve(long_batch.id), 60)

    # Then it stops short, and exactly its answered rows are billed
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    answered = BatchLine.objects.filter(batch_id=long_batch.id, succeeded=True).count()
    assert cancelled.request_counts.completed == answered < 200
    billed = UsageRecord.objects.filter(idempotency_key__startswith=f"batch:{long_batch.id}:")
    assert billed.count() == answered


def test_a_worker_killed_mid_batch_is_resumed_by_another_with_no_row_twice(
    bob, clauses, inference_workers, settings, tasks_through_the_broker
):
    # Given a worker with a short lease that keeps few rows in flight, working on a batch
    lease = {"BATCH_LEASE_SECONDS": "3", "BATCH_ROWS_IN_FLIGHT": "4"}
    settings.BATCH_LEASE_SECONDS = 3  # the sweep's view of a lapsed lease
    doomed = inference_workers(**lease)
    rows = [
        predict_line(f"r{n}", clauses.slug, f"Clause {n}:", parameters={"max_new_tokens": 16})
        for n in range(60)
    ]
    upload = SimpleUploadedFile("rows.jsonl", jsonl(rows))
    source = batch_file_upload(owner=bob, file=upload, purpose="batch")
    batch = batch_create(owner=bob, api_key=None, input_file_id=source.id, endpoint=PREDICT)

    # When it is SIGKILLed once some rows are written (others in flight)
    deadline = time.monotonic() + 120
    while BatchLine.objects.filter(batch=batch).count() < 8:
        assert time.monotonic() < deadline, "the first worker wrote no rows"
        time.sleep(0.05)
    doomed.kill()
    killed_at = timezone.now()
    written_before = set(BatchLine.objects.filter(batch=batch).values_list("line", flat=True))
    assert len(written_before) < 60
    # and another worker starts, and the sweep finds the lapsed lease
    inference_workers(**lease)
    deadline = time.monotonic() + 30
    while not batches_resume_stalled():
        assert time.monotonic() < deadline, "the sweep never resent the batch"
        time.sleep(0.5)
    batch = wait_until_ended(lambda: Batch.objects.get(pk=batch.pk))

    # Then every row is answered once, written once, billed once
    assert batch.status == BatchStatus.COMPLETED
    assert (batch.request_total, batch.request_completed, batch.request_failed) == (60, 60, 0)
    lines = list(BatchLine.objects.filter(batch=batch).values_list("line", flat=True))
    assert sorted(lines) == list(range(1, 61))
    # the second worker answered exactly the rows without an answer
    resumed = BatchLine.objects.filter(batch=batch, created_at__gt=killed_at)
    assert set(resumed.values_list("line", flat=True)) == set(range(1, 61)) - written_before
    with default_storage.open(batch.output_file.storage_path, "rb") as handle:
        output = [json.loads(line) for line in handle.read().decode().splitlines()]
    assert [line["custom_id"] for line in output] == [f"r{n}" for n in range(60)]
    keys = list(
        UsageRecord.objects.filter(idempotency_key__startswith=f"batch:{batch.pk}:").values_list(
            "idempotency_key", flat=True
        )
    )
    assert sorted(keys) == sorted(f"batch:{batch.pk}:{n}" for n in range(1, 61))
    assert LicenceUsagePeriod.objects.get(licence__listing=clauses).calls == 60
    assert batch.stalled_resumes == 0  # rows finished after the takeover
