"""Serving in the portal: bob finds code to call what he licensed and his calls per day
on My licences; on a listing page he tries a specialist through the real gateway.

alice (expert) sells, bob buys, carol moderates, mallory has no licence.
"""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing import services as billing_services
from billing.models import OfferKind, UsageRecord
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.conftest import redis_url, worker_env  # noqa: F401  fixtures
from tests.integration.specialists import LABELS as SPECIALIST_LABELS
from tests.integration.specialists import InferenceWorker, publish_specialist
from tests.listings.conftest import make_listing
from tests.training_worker.conftest import tiny_causal_built  # noqa: F401  fixture
from training_worker.models import BaseModel, ModelVersion


def portal(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def page_of(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def snippet(page: str, name: str) -> str:
    """The text of one snippet on My licences (HTML entities decoded)."""
    import html

    found = re.search(rf'data-snippet="{name}"><code[^>]*>(.*?)</code>', page, re.S)
    assert found, f"no {name} snippet"
    return html.unescape(found.group(1))


def make_generation_listing(owner, moderator, **fields):
    """A published listing whose live version generates text (tiny-causal)."""
    listing = make_listing(owner, title="Support replies", **fields)
    version = listing.proposed_version
    ModelVersion.objects.filter(pk=version.pk).update(
        task="text-generation", base_model=BaseModel.objects.get(slug="tiny-causal")
    )
    listing.task = "text-generation"
    listing.save(update_fields=["task"])
    from listings import services

    services.listing_submit(owner=owner, listing_id=listing.id)
    return services.listing_approve(moderator=moderator, listing_id=listing.id)


@pytest.fixture
def triage(alice, carol):
    """alice's classification listing."""
    return make_listing(alice, moderator=carol, commercial_use=True, on_prem_download=True)


@pytest.fixture
def replies(alice, carol):
    """alice's generation listing."""
    return make_generation_listing(alice, carol, commercial_use=True)


# --- My licences: code to paste


def test_bob_gets_curl_and_requests_snippets_that_call_predict_on_his_classifier(bob, triage):
    make_active_licence(bob, make_offer(triage, OfferKind.SUBSCRIPTION))

    page = page_of(portal(bob).get("/licences/"))

    curl = snippet(page, "curl")
    assert f"curl -sS -X POST http://testserver/api/v1/models/{triage.slug}/predict" in curl
    assert "Authorization: Bearer $NICHE_KEY" in curl
    assert '"inputs": ["' in curl
    requests_code = snippet(page, "python-requests")
    assert f'"http://testserver/api/v1/models/{triage.slug}/predict"' in requests_code
    assert "os.environ['NICHE_KEY']" in requests_code
    compile(requests_code, "snippet", "exec")  # pastes as valid Python
    assert "export NICHE_KEY=" in page


def test_bob_gets_chat_completions_and_openai_client_snippets_for_a_generator(bob, replies):
    make_active_licence(bob, make_offer(replies, OfferKind.PER_CALL))

    page = page_of(portal(bob).get("/licences/"))

    curl = snippet(page, "curl")
    assert "http://testserver/v1/chat/completions" in curl
    assert f'"model": "{replies.slug}"' in curl
    plain = snippet(page, "curl-completions")
    assert "http://testserver/v1/completions" in plain and '"prompt": "' in plain
    openai_code = snippet(page, "openai")
    assert 'OpenAI(base_url="http://testserver/v1", api_key=os.environ["NICHE_KEY"])' in (
        openai_code
    )
    assert f'model="{replies.slug}"' in openai_code
    compile(openai_code, "snippet", "exec")
    compile(snippet(page, "python-requests"), "snippet", "exec")
    assert "/predict" not in page


def test_snippets_and_the_try_it_box_start_from_the_experts_example_input(bob, alice, replies):
    """The expert's example (with a quote, which the shell snippet must survive) is what
    the snippets send and what the try-it box holds before the first Run."""
    import shlex

    from listings.models import Listing

    Listing.objects.filter(pk=replies.pk).update(example_input="Ahab's leg")
    make_active_licence(bob, make_offer(replies, OfferKind.PER_CALL))

    page = page_of(portal(bob).get("/licences/"))

    plain = snippet(page, "curl-completions")
    # The shell reads the -d argument back as the JSON body with the quote intact.
    argument = shlex.split(plain.replace("\\\n", " "))[-1]
    assert json.loads(argument)["prompt"] == "Ahab's leg"
    assert '"content": "Ahab\'s leg"' in snippet(page, "openai")
    compile(snippet(page, "openai"), "snippet", "exec")
    box = page_of(portal(alice).get(f"/catalogue/{replies.slug}/"))
    assert re.search(r'<textarea id="try-text"[^>]*>Ahab&#x27;s leg</textarea>', box)


def test_without_an_example_input_the_snippets_hold_a_placeholder(bob, triage):
    make_active_licence(bob, make_offer(triage, OfferKind.SUBSCRIPTION))

    page = page_of(portal(bob).get("/licences/"))

    assert '"inputs": ["Paste the text to classify here."]' in snippet(page, "curl")


def test_a_download_licence_and_a_revoked_one_get_no_code_to_call(bob, carol, triage, replies):
    make_active_licence(bob, make_offer(triage, OfferKind.DOWNLOAD))
    revoked = make_active_licence(bob, make_offer(replies, OfferKind.PER_CALL))
    billing_services.licence_revoke(licence_id=revoked.id, reason="abuse", actor=carol)

    page = page_of(portal(bob).get("/licences/"))

    assert 'data-testid="snippets"' not in page
    assert "Download the export bundle" in page


def test_mallory_sees_no_snippets_of_bobs_licences(bob, mallory, triage):
    make_active_licence(bob, make_offer(triage, OfferKind.SUBSCRIPTION))

    page = page_of(portal(mallory).get("/licences/"))

    assert triage.slug not in page
    assert "No licences yet" in page


# --- My licences: calls per day


def test_bobs_calls_per_day_are_drawn_from_the_ledger(bob, triage):
    licence = make_active_licence(
        bob, make_offer(triage, OfferKind.SUBSCRIPTION),
        period_start=timezone.now() - timedelta(days=10),
    )  # fmt: skip
    today = timezone.now().astimezone(UTC)
    three_days_ago = today - timedelta(days=3)
    for n, at in enumerate([three_days_ago, three_days_ago, today, today, today]):
        billing_services.usage_record(licence_id=licence.id, idempotency_key=f"k{n}", at=at)
    billing_services.usage_record(
        licence_id=licence.id, idempotency_key="failed", at=today, status="error"
    )

    page = page_of(portal(bob).get("/licences/"))

    chart = re.search(r'<svg[^>]*class="usage-chart"[^>]*>(.*?)</svg>', page, re.S).group(1)
    values = dict(re.findall(r'data-day="([\d-]+)" data-value="(\d+)"', chart))
    assert len(values) == 30
    assert values[f"{three_days_ago:%Y-%m-%d}"] == "2"
    assert values[f"{today:%Y-%m-%d}"] == "3"  # the failed call is not billed, not drawn
    assert sum(map(int, values.values())) == 5
    assert "5 in all" in page
    ticks = re.findall(r'text-anchor="middle">([^<]+)</text>', chart)
    assert len(ticks) == 5 and ticks[-1] == f"{today:%d %b}"  # weekly, counted back from today


def test_a_day_outside_the_chart_does_not_count(bob, triage):
    licence = make_active_licence(
        bob, make_offer(triage, OfferKind.SUBSCRIPTION),
        period_start=datetime.now(UTC) - timedelta(days=60),
    )  # fmt: skip
    billing_services.usage_record(
        licence_id=licence.id, idempotency_key="old", at=timezone.now() - timedelta(days=45)
    )

    page = page_of(portal(bob).get("/licences/"))

    assert "0 in all" in page
    assert 'data-value="1"' not in page


# --- the listing page's try-it box: who sees it


def test_bob_without_a_licence_sees_the_offers_instead_of_the_try_it_box(bob, triage):
    make_offer(triage, OfferKind.FREE_TRIAL)

    page = page_of(portal(bob).get(f"/catalogue/{triage.slug}/"))

    assert 'id="try-it-needs-licence"' in page
    assert 'id="try-it-form"' not in page
    assert 'data-testid="buy-free_trial"' in page


def test_a_visitor_is_asked_to_log_in_before_trying(triage):
    page = page_of(portal().get(f"/catalogue/{triage.slug}/"))

    assert 'id="try-it-form"' not in page
    assert f"/login/?next=/catalogue/{triage.slug}/" in page


def test_bob_on_a_free_trial_gets_the_try_it_box_with_his_calls_left(bob, triage):
    billing_services.licence_start_free_trial(
        buyer=bob, offer=make_offer(triage, OfferKind.FREE_TRIAL, included_calls=25)
    )

    page = page_of(portal(bob).get(f"/catalogue/{triage.slug}/"))

    assert 'id="try-it-form"' in page
    assert f'action="/catalogue/{triage.slug}/try/"' in page
    assert "Texts to classify, one per line" in page
    assert "under your free trial licence" in page
    assert "(25 calls left this period)" in page


def test_bob_trying_a_generator_gets_a_message_box_and_a_length_limit(bob, replies):
    make_active_licence(bob, make_offer(replies, OfferKind.PER_CALL))

    page = page_of(portal(bob).get(f"/catalogue/{replies.slug}/"))

    assert 'id="try-it-form"' in page
    assert 'name="max_new_tokens"' in page


def test_alice_may_try_her_own_model_without_a_licence(alice, triage):
    page = page_of(portal(alice).get(f"/catalogue/{triage.slug}/"))

    assert 'id="try-it-form"' in page
    assert "Your own model: your tries are not billed." in page


def test_a_revoked_licence_takes_the_try_it_box_away_at_once(bob, carol, triage):
    licence = make_active_licence(bob, make_offer(triage, OfferKind.SUBSCRIPTION))
    billing_services.licence_revoke(licence_id=licence.id, reason="abuse", actor=carol)

    page = page_of(portal(bob).get(f"/catalogue/{triage.slug}/"))

    assert 'id="try-it-form"' not in page
    assert 'id="try-it-needs-licence"' in page


# --- the try-it box: calls the gateway refuses (no engine needed)


def test_mallory_trying_without_a_licence_gets_403_and_nothing_is_written(mallory, triage):
    response = portal(mallory).post(
        f"/catalogue/{triage.slug}/try/", {"text": "hello"}, HTTP_X_REQUESTED_WITH="fetch"
    )

    assert response.status_code == 403
    assert 'data-code="licence_required"' in response.content.decode()
    assert f"You need a licence to call {triage.slug}." in response.content.decode()
    assert not UsageRecord.objects.exists()


def test_a_try_past_the_quota_is_429_and_writes_no_row(bob, triage):
    trial = billing_services.licence_start_free_trial(
        buyer=bob, offer=make_offer(triage, OfferKind.FREE_TRIAL, included_calls=1)
    )

    response = portal(bob).post(
        f"/catalogue/{triage.slug}/try/", {"text": "one\ntwo"}, HTTP_X_REQUESTED_WITH="fetch"
    )

    assert response.status_code == 429
    assert 'data-code="quota_exceeded"' in response.content.decode()
    assert not UsageRecord.objects.filter(licence=trial).exists()


def test_too_many_lines_are_422_in_the_box(bob, triage, settings):
    settings.SERVING_MAX_INPUTS = 2
    make_active_licence(bob, make_offer(triage, OfferKind.SUBSCRIPTION))

    response = portal(bob).post(
        f"/catalogue/{triage.slug}/try/", {"text": "a\nb\nc"}, HTTP_X_REQUESTED_WITH="fetch"
    )

    assert response.status_code == 422
    assert "At most 2 inputs per call; this call has 3." in response.content.decode()
    assert not UsageRecord.objects.exists()


def test_without_scripts_the_answer_comes_on_a_page_of_its_own(mallory, triage):
    response = portal(mallory).post(f"/catalogue/{triage.slug}/try/", {"text": "hello"})

    assert response.status_code == 403
    page = response.content.decode()
    assert "<h1>Try Radiology report triage</h1>" in page
    assert 'id="try-error"' in page


# --- the try-it box through the real gateway and a real inference worker


@pytest.fixture(scope="module")
def inference_worker(worker_env):  # noqa: F811
    worker = InferenceWorker(worker_env).wait_ready()
    yield worker
    worker.stop()


@pytest.fixture
def answers_from_workers(inference_worker):
    """The gateway reads answers from the result backend, which eager mode bypasses."""
    from marketplace.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    yield inference_worker
    app.conf.task_always_eager = previous


def try_it(user, listing, **form):
    return portal(user).post(f"/catalogue/{listing.slug}/try/", form, HTTP_X_REQUESTED_WITH="fetch")


@pytest.mark.integration
def test_bob_tries_a_classifier_and_the_call_is_one_row_in_the_ledger(
    answers_from_workers, alice, bob, carol, tmp_path
):
    specialist = publish_specialist(alice, carol, folder=tmp_path)
    licence = make_active_licence(bob, make_offer(specialist, OfferKind.SUBSCRIPTION))

    response = try_it(bob, specialist, text="My card was charged twice.\nThe app crashes.")

    fragment = page_of(response)
    labels = re.findall(r'<strong class="label">(\w+)</strong>', fragment)
    assert len(labels) == 2 and set(labels) <= set(SPECIALIST_LABELS)
    latency = re.search(r'data-latency-ms="(\d+)"', fragment)
    assert latency and f"Answered in <strong>{latency.group(1)} ms</strong>" in fragment
    version = specialist.live_version
    assert f"<code>{version.adapter_sha256[:12]}…</code>" in fragment
    row = UsageRecord.objects.get()  # exactly one row for the call, two inputs as two units
    assert (row.licence_id, row.units, row.status) == (licence.id, 2, "ok")
    assert row.api_key_id is None  # the portal calls as bob, with no key
    assert row.listing_version.model_version_id == version.id


@pytest.mark.integration
@pytest.mark.usefixtures("tiny_causal_built")
def test_bob_tries_a_generator_and_sees_the_text(answers_from_workers, alice, bob, carol, tmp_path):
    specialist = publish_specialist(alice, carol, task="text-generation", folder=tmp_path)
    make_active_licence(bob, make_offer(specialist, OfferKind.PER_CALL))

    response = try_it(bob, specialist, text="Hello there", max_new_tokens="8")

    fragment = page_of(response)
    assert 'id="try-text-answer"' in fragment
    assert re.search(r"Stopped: (length|stop)", fragment)
    assert UsageRecord.objects.get().units == 1


@pytest.mark.integration
def test_alice_tries_her_own_model_and_nothing_is_billed(
    answers_from_workers, alice, carol, tmp_path
):
    specialist = publish_specialist(alice, carol, folder=tmp_path)

    response = try_it(alice, specialist, text="Great support, thanks!")

    assert 'class="label"' in page_of(response)
    assert not UsageRecord.objects.exists()
