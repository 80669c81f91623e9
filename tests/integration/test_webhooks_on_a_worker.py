"""Stripe's webhook answers at once and a real Celery worker process does the work.

The worker re-reads each object from the local Stripe server (tests/billing/
stripe_server.py) the test runs, with the same keys, through the same gateway.
"""

import uuid

import pytest

from billing.models import ConnectAccount, Licence, LicenceStatus, OfferKind, Payment, StripeEvent
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import (  # noqa: F401 (fixtures)
    SECRET_KEY,
    WEBHOOK_SECRET,
    local_stripe_server,
    post_webhook,
)
from tests.billing.stripe_server import stripe_server as stripe_server
from tests.integration.conftest import WorkerProcess
from tests.integration.test_training_on_workers import wait_for
from tests.listings.conftest import make_listing

pytestmark = [pytest.mark.integration]


@pytest.fixture
def billing_worker(worker_env, stripe_server):
    env = worker_env | {
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_API_BASE": stripe_server.base_url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    worker = WorkerProcess(env, "default", f"billing-{uuid.uuid4().hex[:6]}")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def test_a_webhook_is_stored_at_once_and_processed_once_on_a_worker(
    shipped_base_models, alice, bob, carol, api, client, stripe_server, billing_worker
):
    # alice finishes Connect onboarding; account.updated is processed on the worker.
    assert api(alice).post("/api/v1/billing/connect/onboard", {}, format="json").status_code == 201
    account = ConnectAccount.objects.get(expert=alice)
    onboarded = stripe_server.complete_onboarding(account.stripe_account_id)
    assert post_webhook(client, onboarded).status_code == 200
    wait_for(
        lambda: ConnectAccount.objects.get(pk=account.pk).payouts_enabled, 60, "account.updated"
    )

    # bob buys alice's download and pays; Stripe delivers the event four times.
    listing = make_listing(alice, moderator=carol, on_prem_download=True)
    offer = make_offer(listing, OfferKind.DOWNLOAD)
    response = api(bob).post("/api/v1/billing/checkout", {"offer_id": str(offer.id)}, format="json")
    assert response.status_code == 201, response.content
    licence = Licence.objects.get(pk=response.json()["licence_id"])
    completed = stripe_server.complete_checkout(licence.stripe_checkout_session_id)
    answers = [post_webhook(client, completed)]
    answers += [
        post_webhook(client, stripe_server.redeliver(completed["event"]["id"])) for _ in range(3)
    ]

    assert [r.status_code for r in answers] == [200] * 4
    event = wait_for(
        lambda: StripeEvent.objects.filter(
            pk=completed["event"]["id"], processed_at__isnull=False
        ).first(),
        60,
        "checkout.session.completed on the worker",
    )
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE
    assert Payment.objects.filter(licence=licence).count() == 1
    assert event.last_error == ""
    assert "Task billing.process_stripe_event[" in billing_worker.log_path.read_text()
