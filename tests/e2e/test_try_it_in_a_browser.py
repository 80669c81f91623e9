"""bob takes a specialist's free trial in Chromium, tries it from the listing page through
the real gateway and a real inference worker, sees the answer and its latency, and
finds code to call it on My licences."""

import re

import pytest

from billing.models import Licence, OfferKind, UsageRecord
from tests.billing.conftest import make_offer
from tests.e2e.test_buy_in_a_browser import log_in
from tests.integration.specialists import LABELS, InferenceWorker, publish_specialist

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def inference_worker(worker_env):
    worker = InferenceWorker(worker_env).wait_ready()
    yield worker
    worker.stop()


@pytest.fixture
def triage(alice, carol, shipped_base_models, tmp_path):
    """alice's classifier (a real adapter) with a free trial of 20 calls."""
    listing = publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage")
    make_offer(listing, OfferKind.FREE_TRIAL, included_calls=20)
    return listing


def test_bob_takes_the_free_trial_and_tries_the_model_from_its_page(
    inference_worker, page, live_server, bob, triage
):
    log_in(page, live_server, "bob@example.com")
    listing_url = f"{live_server.url}/catalogue/{triage.slug}/"
    page.goto(listing_url)

    # Without a licence the box points to the offers
    assert "Start a free trial or buy a licence" in page.inner_text("#try-it")
    page.click("[data-testid=buy-free_trial]")
    page.wait_for_selector("#licence-active")

    # With the trial, the box takes texts and answers in place
    page.goto(listing_url)
    assert "20 calls left this period" in page.inner_text("#try-it")
    page.fill("#try-text", "I was charged twice this month.\nThe app crashes on start.")
    page.click("[data-testid=try-submit]")
    page.wait_for_selector("#try-answer", timeout=60_000)

    labels = page.locator("#try-answer strong.label").all_inner_texts()
    assert len(labels) == 2 and set(labels) <= set(LABELS)
    latency = page.inner_text("#try-latency")
    assert re.search(r"Answered in \d+ ms", latency), latency
    assert page.url == listing_url  # the page stayed; the answer came in place
    trial = Licence.objects.get(buyer=bob, kind=OfferKind.FREE_TRIAL)
    row = UsageRecord.objects.get(licence=trial)
    assert (row.units, row.status) == (2, "ok")

    # My licences shows the calls and code to paste with the slug filled in
    page.click("text=My licences")
    page.wait_for_url("**/licences/")
    card = page.locator(f"#licence-{trial.id}")
    assert "Calls this period: 2 of 20" in card.inner_text()
    curl = card.locator("[data-snippet=curl]").inner_text()
    assert f"{live_server.url}/api/v1/models/{triage.slug}/predict" in curl
    assert "$NICHE_KEY" in curl
