"""An expert in a real browser: log in, upload, fine-tune on a worker, read the result."""

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from accounts.models import ExpertProfile, User
from tests.training_worker.conftest import classification_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "e2e"


def test_expert_fine_tunes_and_reads_the_verified_evaluation(
    page, live_server, celery_worker_process, shipped_base_models, tmp_path
):
    alice = User.objects.create_user(
        email="alice@example.com", password="correct horse battery", is_expert=True
    )
    ExpertProfile.objects.create(user=alice)
    data = tmp_path / "triage-notes.csv"
    data.write_bytes(classification_csv(rows_per_label=30))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "alice@example.com")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/")

    page.click("nav >> text=Studio")
    page.set_input_files("input[name=file]", str(data))
    page.click("button:has-text('Upload')")
    page.wait_for_selector("#dataset-status:has-text('ready')", timeout=60_000)
    assert "cardiology" in page.content()

    page.goto(f"{live_server.url}/studio/")
    page.click("summary")  # the advanced section
    page.fill("input[name=n_epochs]", "3")
    page.fill("input[name=suffix]", "triage")
    page.click("button:has-text('Start fine-tuning')")
    page.wait_for_url("**/studio/jobs/**")

    page.wait_for_selector("#job-status:has-text('running')", timeout=60_000)
    # A locator assertion, not wait_for_function: the page's CSP forbids the eval that
    # a string predicate needs.
    expect(page.locator("#loss-line")).to_have_attribute(
        "points", re.compile(r"\S+\s+\S+"), timeout=120_000
    )
    page.screenshot(path=str(SCREENSHOTS / "job-running.png"), full_page=True)
    page.wait_for_selector("#job-status:has-text('succeeded')", timeout=180_000)
    assert "Step" in page.inner_text("#progress-text")
    page.screenshot(path=str(SCREENSHOTS / "job-succeeded.png"), full_page=True)

    page.click("#job-result-link")
    page.wait_for_selector("#comparison-chart")
    text = page.inner_text("main")
    assert "Verified evaluation" in text and "Lift over the strongest baseline" in text
    assert "Majority class" in text and "Classic: TF-IDF" in text
    assert page.locator("#comparison-chart g[data-bar=specialist]").count() == 1
    page.screenshot(path=str(SCREENSHOTS / "model-version.png"), full_page=True)


def test_buyer_finds_a_specialist_and_compares_it_with_the_generalist(
    page, live_server, shipped_base_models
):
    from django.contrib.auth.models import Group

    from accounts.models import MODERATORS_GROUP
    from accounts.services import moderators_group_sync
    from tests.listings.conftest import make_listing

    moderators_group_sync()
    carol = User.objects.create_user(email="carol@example.com", password="x" * 12, is_staff=True)
    carol.groups.add(Group.objects.get(name=MODERATORS_GROUP))
    alice = User.objects.create_user(email="alice@example.com", password="x" * 12, is_expert=True)
    ExpertProfile.objects.create(user=alice, headline="Fraud analyst")
    make_listing(alice, moderator=carol, title="Card fraud spotter", accuracy=0.93,
                 generalist=0.61, domain="finance", commercial_use=True)  # fmt: skip
    make_listing(alice, moderator=carol, title="Radiology triage", accuracy=0.8)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{live_server.url}/catalogue/")
    page.fill("input[name=q]", "fraud")
    page.click("#catalogue-filters button[type=submit]")
    page.wait_for_selector("text=Card fraud spotter")
    assert "Radiology triage" not in page.inner_text("main")
    page.screenshot(path=str(SCREENSHOTS / "catalogue.png"), full_page=True)

    page.click("text=Card fraud spotter")
    page.wait_for_selector("#listing-chart")
    text = page.inner_text("main")
    assert "Lift over the strongest baseline" in text and "Generalist: zero-shot" in text
    assert page.locator("#listing-chart g[data-bar=specialist]").count() == 1
    assert "Commercial use is allowed." in page.inner_text("#licence-summary")
    page.screenshot(path=str(SCREENSHOTS / "listing.png"), full_page=True)
