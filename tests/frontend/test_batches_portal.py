"""Batches in the portal: bob sees his batches with their progress and files on My
batches (linked from My licences) and cancels one; nobody else sees them.

alice (expert) sells, bob buys and sends batches, mallory is a stranger.
"""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from billing.models import OfferKind
from serving.batches import PREDICT, batch_create, batch_file_upload
from serving.models import Batch, BatchFile, BatchStatus, FilePurpose
from tests.billing.conftest import make_active_licence, make_offer
from tests.listings.conftest import make_listing
from tests.serving.batches.conftest import jsonl, predict_line

pytestmark = pytest.mark.django_db


def portal(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def bobs_batch(alice, bob, carol):
    listing = make_listing(alice, moderator=carol, title="Ticket triage")
    make_active_licence(bob, make_offer(listing, OfferKind.SUBSCRIPTION))
    rows = [predict_line(f"r{n}", listing.slug, ["x"]) for n in range(8)]
    source = batch_file_upload(
        owner=bob, file=SimpleUploadedFile("tickets.jsonl", jsonl(rows)), purpose="batch"
    )
    return batch_create(owner=bob, api_key=None, input_file_id=source.id, endpoint=PREDICT)


def test_bob_sees_his_batch_with_its_progress_and_its_files(bob, bobs_batch):
    output = BatchFile.objects.create(
        owner=bob, purpose=FilePurpose.BATCH_OUTPUT, filename="output.jsonl",
        storage_path="batches/x/output.jsonl", size_bytes=1, sha256="0" * 64,
    )  # fmt: skip
    Batch.objects.filter(pk=bobs_batch.pk).update(
        status=BatchStatus.IN_PROGRESS, request_completed=5, request_failed=1, output_file=output
    )

    licences = portal(bob).get("/licences/").content.decode()
    page = portal(bob).get("/licences/batches/")

    assert 'href="/licences/batches/"' in licences
    assert page.status_code == 200
    html = page.content.decode()
    assert bobs_batch.id in html
    assert "tickets.jsonl" in html
    assert "Rows answered: <strong>6</strong> of 8" in html
    assert "(5 completed, 1 failed)" in html
    assert 'aria-valuenow="6"' in html and "width:75%" in html
    assert f'href="/v1/files/{output.id}/content"' in html
    assert 'http-equiv="refresh"' in html  # it refreshes itself while the batch runs
    assert 'data-testid="batch-cancel"' in html


def test_nobody_else_sees_bobs_batches_or_may_cancel_them(mallory, bobs_batch):
    page = portal(mallory).get("/licences/batches/").content.decode()
    assert bobs_batch.id not in page and "No batches yet" in page

    response = portal(mallory).post(f"/licences/batches/{bobs_batch.id}/cancel/")

    assert response.status_code == 404
    assert Batch.objects.get(pk=bobs_batch.pk).status == BatchStatus.VALIDATING
    assert portal().get("/licences/batches/").status_code == 302  # to log in


def test_bob_cancels_a_batch_from_the_portal(bob, bobs_batch):
    response = portal(bob).post(f"/licences/batches/{bobs_batch.id}/cancel/", follow=True)

    assert response.status_code == 200
    assert f"Batch {bobs_batch.id} is cancelled." in response.content.decode()
    assert Batch.objects.get(pk=bobs_batch.pk).status == BatchStatus.CANCELLED
    again = portal(bob).post(f"/licences/batches/{bobs_batch.id}/cancel/", follow=True)
    assert "it cannot be cancelled" in again.content.decode()
