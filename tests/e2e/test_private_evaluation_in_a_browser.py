"""bob, in Chromium, tries two of alice's classifiers on his own rows before buying: from a
listing's page to the upload form, then the live progress, then the comparison with its
intervals and costs. The scoring task travels through Redis to a real inference worker
(its own process, its own engine). The pages must not overflow at 390 px."""

import json

import pytest

from billing.models import OfferKind
from tests.billing.conftest import make_offer
from tests.e2e.test_buy_in_a_browser import log_in
from tests.integration.specialists import LABELS, InferenceWorker, publish_specialist

pytestmark = [pytest.mark.integration]

NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def inference_worker(worker_env):
    worker = InferenceWorker(worker_env).wait_ready()
    yield worker
    worker.stop()


@pytest.fixture
def two_classifiers(alice, carol, shipped_base_models, tmp_path):
    first = publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage")
    make_offer(first, OfferKind.PER_CALL, unit_amount=300)
    second = publish_specialist(alice, carol, folder=tmp_path, title="Ticket sorter")
    make_offer(second, OfferKind.SUBSCRIPTION, unit_amount=4900, included_calls=10_000)
    return first, second


def rows() -> bytes:
    lines = [
        {"text": f"Customer message number {i} about {LABELS[i % 3]}", "label": LABELS[i % 3]}
        for i in range(90)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_bob_scores_two_listings_on_his_rows_in_a_browser(
    inference_worker, send_tasks_to_the_broker, page, live_server, bob, two_classifiers
):
    first, second = two_classifiers
    log_in(page, live_server, "bob@example.com")
    page.goto(f"{live_server.url}/catalogue/{first.slug}/")
    page.click("[data-testid=try-on-my-rows]")
    page.wait_for_selector("[data-testid=evaluation-form]")
    assert page.is_checked(f"input[name=listings][value={first.slug}]")
    assert "Your rows stay yours" in page.inner_text("#privacy")

    page.check(f"input[name=listings][value={second.slug}]")
    page.set_input_files(
        "#id_file", {"name": "my-tickets.jsonl", "mimeType": "application/jsonl", "buffer": rows()}
    )
    page.click("[data-testid=evaluation-start]")
    page.wait_for_url("**/evaluations/peval_*/")
    first_look = page.inner_text("main")
    # The page either shows the live progress, or (a fast worker) the finished figures.
    assert "answers" in first_look or "Who did best" in first_look

    page.wait_for_selector("[data-testid=evaluation-chart]", timeout=120_000)
    table = page.inner_text("[data-testid=evaluation-table]")
    for name in ("Ticket triage", "Ticket sorter", "Generalist", "Classic"):
        assert name in table
    assert "3.00 USD" in table  # 1,000 calls at the per-call offer
    assert "49.00 USD" in table  # a month of the subscription covers 1,000 calls
    assert " to " in table  # each score with its 95% interval
    pair = page.inner_text("[data-testid=evaluation-pair]")
    assert "Ticket triage" in pair and "Ticket sorter" in pair
    assert "Your rows are deleted" in page.inner_text("[data-testid=evaluation-rows-gone]")

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate(NO_OVERFLOW), "the evaluation page overflows at 390 px"
    page.goto(f"{live_server.url}/evaluations/")
    assert page.evaluate(NO_OVERFLOW), "the evaluations page overflows at 390 px"
