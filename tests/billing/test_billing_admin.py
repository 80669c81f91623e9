"""Commerce in the console: carol searches licences, payments and webhook events,
refunds and revokes with a reason the audit log keeps; nobody edits money by hand."""

from datetime import date

import pytest
from django.test import Client

from billing.models import (
    BillingAuditEntry,
    Licence,
    LicenceStatus,
    Payment,
    PaymentKind,
    StripeEvent,
)
from tests.billing.conftest import make_active_licence, make_offer
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
LICENCES_URL = "/admin/billing/licence/"
PAYMENTS_URL = "/admin/billing/payment/"
EVENTS_URL = "/admin/billing/stripeevent/"


def console(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def run_action(client, url, action, rows, reason=""):
    return client.post(
        url,
        {"action": action, "_selected_action": [str(r.pk) for r in rows], "reason": reason,
         "index": 0},
        follow=True,
    )  # fmt: skip


def messages_of(response) -> list[tuple[str, str]]:
    assert response.redirect_chain and response.redirect_chain[0][1] == 302
    return [(m.level_tag, m.message) for m in response.context["messages"]]


@pytest.fixture
def bobs_purchase(bob, listing):
    licence = make_active_licence(bob, make_offer(listing, "download", unit_amount=25_000))
    payment = Payment.objects.create(
        licence=licence, kind=PaymentKind.CHARGE, amount=25_000, currency="usd",
        platform_fee=5000, stripe_fee=755, period=date(2026, 11, 1), sandbox=True,
        stripe_charge_id="ch_sandbox_1",
    )  # fmt: skip
    return licence, payment


def test_carol_finds_bobs_licence_and_payment_by_his_email(carol, bobs_purchase):
    licence, payment = bobs_purchase
    client = console(carol)

    licences = client.get(LICENCES_URL, {"q": "bob@example.com"})
    payments = client.get(PAYMENTS_URL, {"q": "ch_sandbox_1"})
    elsewhere = client.get(LICENCES_URL, {"q": "nobody@example.com"})

    assert licences.status_code == payments.status_code == 200
    assert list(licences.context["cl"].result_list) == [licence]
    assert list(payments.context["cl"].result_list) == [payment]
    assert list(elsewhere.context["cl"].result_list) == []


def test_carol_refunds_a_payment_with_a_reason_and_the_licence_ends(carol, bobs_purchase):
    licence, payment = bobs_purchase

    response = run_action(
        console(carol), PAYMENTS_URL, "refund", [payment], reason="Model did not load."
    )

    assert messages_of(response) == [("success", f"“{payment}”: refunded.")]
    refund = Payment.objects.get(kind=PaymentKind.REFUND)
    assert (refund.amount, refund.platform_fee, refund.refunds) == (-25_000, -5000, payment)
    entry = BillingAuditEntry.objects.get(action="refund")
    assert (entry.actor, entry.target_id, entry.reason) == (
        carol, str(payment.pk), "Model did not load.",
    )  # fmt: skip
    assert Licence.objects.get(pk=licence.pk).status == LicenceStatus.REVOKED


def test_a_refund_without_a_reason_changes_nothing(carol, bobs_purchase):
    _, payment = bobs_purchase

    response = run_action(console(carol), PAYMENTS_URL, "refund", [payment], reason=" ")

    ((level, _),) = messages_of(response)
    assert level == "error"
    assert not Payment.objects.filter(kind=PaymentKind.REFUND).exists()
    assert not BillingAuditEntry.objects.exists()


def test_carol_revokes_a_licence_with_a_reason(carol, bobs_purchase):
    licence, _ = bobs_purchase

    response = run_action(
        console(carol), LICENCES_URL, "revoke", [licence], reason="Shared the bundle publicly."
    )

    assert messages_of(response) == [("success", f"“{licence}”: revoked.")]
    stored = Licence.objects.get(pk=licence.pk)
    assert (stored.status, stored.end_reason) == (
        LicenceStatus.REVOKED, "Shared the bundle publicly.",
    )  # fmt: skip
    assert BillingAuditEntry.objects.get().action == "licence_revoke"


def test_webhook_events_are_searchable_and_read_only(carol):
    StripeEvent.objects.create(
        id="evt_123", type="invoice.paid", payload={"id": "evt_123"}, last_error="boom"
    )
    client = console(carol)

    found = client.get(EVENTS_URL, {"q": "evt_123"})
    page = client.get(f"{EVENTS_URL}evt_123/change/")
    added = client.get(f"{EVENTS_URL}add/")
    deleted = client.post(f"{EVENTS_URL}evt_123/delete/", {"post": "yes"})

    assert [e.id for e in found.context["cl"].result_list] == ["evt_123"]
    assert page.status_code == 200
    assert b'name="type"' not in page.content  # shown, not editable
    assert (added.status_code, deleted.status_code) == (403, 403)
    assert StripeEvent.objects.filter(id="evt_123").exists()


def test_staff_who_are_not_moderators_cannot_refund(bobs_purchase):
    from django.contrib.auth.models import Permission

    dave = make_user("dave@example.com", is_staff=True)
    dave.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="billing", codename__in=["view_payment", "change_payment"]
        )
    )
    _, payment = bobs_purchase

    response = console(dave).post(
        PAYMENTS_URL,
        {"action": "refund", "_selected_action": [str(payment.pk)], "reason": "x", "index": 0},
    )

    assert response.status_code == 200  # the changelist again: no such action for dave
    assert not Payment.objects.filter(kind=PaymentKind.REFUND).exists()


def test_mallory_is_sent_to_the_admin_login(mallory, bobs_purchase):
    response = console(mallory).get(PAYMENTS_URL)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
