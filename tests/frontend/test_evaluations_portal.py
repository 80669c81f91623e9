"""Private evaluations in the portal: bob starts one from a listing's page, watches its
progress, reads the comparison; alice (the expert) sees a count and nothing else.

The scoring task runs inline on this process's engine when the transaction's callbacks
run (django_capture_on_commit_callbacks(execute=True)); without them it stays queued."""

import io
import json
import re

import pytest

from evidence.models import EvaluationStatus, PrivateEvaluation
from tests.billing.conftest import make_offer
from tests.integration.specialists import LABELS, publish_specialist

pytestmark = pytest.mark.django_db

MARKER = "zq-portal-row-marker"


@pytest.fixture
def triage(alice, carol, tmp_path):
    listing = publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage")
    make_offer(listing, "per_call", unit_amount=250)
    return listing


@pytest.fixture
def triage_two(alice, carol, tmp_path):
    return publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage two")


def upload(count: int = 60) -> io.BytesIO:
    lines = [
        {"text": f"{MARKER} {i} {LABELS[i % 3]}", "label": LABELS[i % 3]} for i in range(count)
    ]
    handle = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    handle.name = "mine.jsonl"
    return handle


def test_bob_starts_an_evaluation_and_reads_the_comparison(
    client, bob, alice, triage, triage_two, django_capture_on_commit_callbacks
):
    client.force_login(bob)
    listing_page = client.get(f"/catalogue/{triage.slug}/").content.decode()
    assert f"/evaluations/?listings={triage.slug}" in listing_page

    form = client.get(f"/evaluations/?listings={triage.slug}").content.decode()
    assert re.search(rf'value="{triage.slug}"\s+checked', form)
    assert "Your rows stay yours" in form

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/evaluations/",
            {"file": upload(), "listings": [triage.slug, triage_two.slug]},
        )
    evaluation = PrivateEvaluation.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/evaluations/{evaluation.pk}/"
    assert evaluation.status == EvaluationStatus.SUCCEEDED

    page = client.get(response["Location"]).content.decode()
    assert 'data-testid="evaluation-chart"' in page
    for name in ("Ticket triage", "Ticket triage two", "Generalist", "Classic"):
        assert name in page
    assert "2.50 USD" in page  # 1,000 calls at the per-call offer
    assert re.search(r"cannot be told apart|did better than", page)
    assert "95% interval" in page
    assert "Your rows are deleted" in page
    assert MARKER not in page

    # alice sees a count on her listing, and cannot open bob's evaluation
    client.force_login(alice)
    assert client.get(f"/evaluations/{evaluation.pk}/").status_code == 404
    own = client.get(f"/catalogue/{triage.slug}/").content.decode()
    assert re.search(r"Buyers scored this model on their own rows 1 time in \d{4}-\d{2}", own)
    assert "evaluation-chart" not in own and MARKER not in own


def test_a_queued_evaluation_shows_its_progress_bar(client, bob, triage):
    client.force_login(bob)
    response = client.post("/evaluations/", {"file": upload(), "listings": [triage.slug]})
    page = client.get(response["Location"]).content.decode()
    assert 'role="progressbar"' in page and 'data-testid="evaluation-progress"' in page
    assert "0 of 180 answers" in page  # 60 rows x (the listing, the generalist, the classic)
    assert "evaluation.js" in page


def test_a_bad_upload_shows_the_reason_and_keeps_the_choice(client, bob, triage):
    client.force_login(bob)
    lines = [{"text": f"row {i}", "label": ["weird", "odd"][i % 2]} for i in range(12)]
    handle = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    handle.name = "rows.jsonl"
    response = client.post("/evaluations/", {"file": handle, "listings": [triage.slug]})
    assert response.status_code == 422
    page = response.content.decode()
    assert "cannot answer your label" in page
    assert re.search(rf'value="{triage.slug}"\s+checked', page)
    assert not PrivateEvaluation.objects.exists()


def test_bob_deletes_his_evaluation(client, bob, triage, django_capture_on_commit_callbacks):
    client.force_login(bob)
    with django_capture_on_commit_callbacks(execute=True):
        location = client.post("/evaluations/", {"file": upload(), "listings": [triage.slug]})[
            "Location"
        ]
    evaluation_id = location.strip("/").split("/")[-1]
    assert client.post(f"/evaluations/{evaluation_id}/delete/").status_code == 302
    assert not PrivateEvaluation.objects.filter(pk=evaluation_id).exists()
    assert client.get(location).status_code == 404


def test_the_expert_turns_free_evaluation_off(client, alice, triage):
    client.force_login(alice)
    response = client.post(f"/catalogue/{triage.slug}/private-evaluations/", {})
    assert response.status_code == 302
    triage.refresh_from_db()
    assert triage.free_private_evaluation is False
