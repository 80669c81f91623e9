"""A garden's money through Stripe (the local Stripe-compatible server): the buyer is
charged on the platform's account (no destination charge), the renewal invoice bills the
metered calls, and its payment is paid out by one transfer per party, sized by the
shares of the calls it covers. Every party's statement shows exactly those transfers."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import stripe_gateway
from billing.gardens import split
from billing.metering import usage_report_to_stripe
from billing.models import (
    GardenPayout,
    GardenShare,
    IntentKind,
    IntentStatus,
    OfferKind,
    Payment,
    PaymentKind,
    ReconciliationIssue,
    StripeIntent,
)
from billing.reconciler import reconcile
from billing.refunds import payment_refund
from billing.selectors import month_start, statement_for
from billing.services import usage_record, usage_settle_served
from billing.stripe_sync import intent_run
from listings import gardens, services
from tests.billing.conftest import make_offer
from tests.billing.test_checkout_stripe import onboard
from tests.billing.test_money_defects import committed, deliver_all, pay, start_checkout
from tests.billing.test_webhooks_stripe import alice_paid_out as alice_paid_out
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def test_a_garden_invoice_is_paid_out_by_transfers_that_match_every_statement(
    alice, alice_paid_out, bob, carol, api, client, listing, stripe_server, settings
):
    settings.PLATFORM_FEE_PERCENT = 20
    cy = make_user("cy@example.com", display_name="Cy", is_expert=True)
    cy_account = onboard(api, cy, stripe_server, client)
    gardens.listing_set_composable(owner=alice, listing_id=listing.pk, composable=True)
    garden = gardens.garden_create(
        curator=cy, kind="router", members=[listing.slug], title="Radiology garden",
        summary="The best radiology triage.", domain="healthcare",
    )  # fmt: skip
    services.listing_submit(owner=cy, listing_id=garden.pk)
    services.listing_approve(moderator=carol, listing_id=garden.pk)
    offer = make_offer(garden, OfferKind.PER_CALL, unit_amount=1500)  # 1.5 cents a call

    licence = start_checkout(api, bob, offer)
    session = stripe_server.state.sessions[licence.stripe_checkout_session_id]
    # charged on the platform's account: no destination, no application fee
    assert "transfer_data" not in session["subscription_data"]
    assert "application_fee_percent" not in session["subscription_data"]
    pay(stripe_server, client, licence)
    assert licence.status == "active"

    # 7 calls answered by alice's listing, 3 by the generalist
    plan = gardens.garden_plan(listing_id=garden.pk)
    (member,) = plan.members
    answered = [(member.listing_id, member.owner_id)]
    for n in range(10):
        workers = answered if n < 7 else []
        shares = split(
            garden_id=garden.pk, curator_id=cy.pk, member_share_percent=70, workers=workers,
            generalist_steps=0 if workers else 1,
        )  # fmt: skip
        usage_record(licence_id=licence.pk, idempotency_key=f"call-{n}", shares=shares)
        usage_settle_served(idempotency_key=f"call-{n}")
    assert usage_report_to_stripe(now=timezone.now() + timedelta(minutes=5)).sent == 1

    stripe_server.advance_subscription(licence.stripe_subscription_id)
    committed(deliver_all, client, stripe_server)
    for intent in StripeIntent.objects.filter(
        kind=IntentKind.TRANSFER_CREATE, status=IntentStatus.PENDING
    ):
        intent_run(intent_id=intent.pk)

    (payment,) = Payment.objects.filter(licence=licence, kind=PaymentKind.INVOICE, amount__gt=0)
    assert payment.amount == 15  # 10 calls at 1.5 cents, as Stripe billed them
    assert payment.platform_fee == 3
    # what is left (12) by the shares: alice 7 x 1.2 x 0.7 = 5.88, cy 10 x 1.2 x 0.3 = 3.6,
    # the platform's generalist 3 x 1.2 x 0.7 = 2.52; largest remainder: 6, 4 and 2
    payouts = {p.payee_id: p for p in GardenPayout.objects.filter(payment=payment)}
    assert {who: p.amount for who, p in payouts.items()} == {alice.pk: 6, cy.pk: 4}
    assert payment_expert_amount(payment) == 10
    assert not GardenShare.objects.filter(licence=licence, paid_by__isnull=True).exists()

    transfers = {t["destination"]: t for t in stripe_server.state.transfers.values()}
    assert set(transfers) == {alice_paid_out.stripe_account_id, cy_account.stripe_account_id}
    for who, account in ((alice, alice_paid_out), (cy, cy_account)):
        transfer = stripe_gateway.transfer_retrieve(transfers[account.stripe_account_id]["id"])
        assert transfer.source_transaction == payment.stripe_charge_id
        assert transfer.amount == payouts[who.pk].amount
        assert payouts[who.pk].stripe_transfer_id == transfer.id
        (line,) = statement_for(expert=who, month=payment.period).gardens
        assert (line.paid, line.transfers) == (transfer.amount, 1)
    # accrued in the month of the calls, to the cent from the same shares: alice 5.88 -> 6,
    # cy 3.6 -> 4 (the invoice is paid when the next period starts: its month may differ)
    month = month_start(timezone.now())
    accrued = {
        who.pk: [(g.calls, g.accrued) for g in statement_for(expert=who, month=month).gardens]
        for who in (alice, cy)
    }
    assert accrued == {alice.pk: [(7, 6)], cy.pk: [(10, 4)]}
    # the curator's own sales never count the garden's payment
    assert statement_for(expert=cy, month=month).listings == []

    # delivered again, the invoice is paid out once
    committed(deliver_all, client, stripe_server)
    assert GardenPayout.objects.filter(payment=payment).count() == 2
    # the reconciler reads the payouts' transfers: nothing disagrees
    reconcile()
    assert not ReconciliationIssue.objects.filter(kind="payment_mismatch").exists()

    # A moderator refunds 10 of the 15 cents: the platform's charge is refunded (no
    # destination to reverse), and each payout is taken back in proportion: 2/3 of the
    # 10 paid out is 6.67, so 7, split 6:4 by largest remainder: alice 4.2 -> 4 of her 6,
    # cy 2.8 -> 3 of his 4.
    committed(payment_refund, payment=payment, actor=carol, reason="Wrong model.", amount=10)
    committed(deliver_all, client, stripe_server)
    for intent in StripeIntent.objects.filter(
        kind=IntentKind.TRANSFER_REVERSAL_CREATE, status=IntentStatus.PENDING
    ):
        intent_run(intent_id=intent.pk)
    refund = Payment.objects.get(refunds=payment, kind=PaymentKind.REFUND)
    assert "reverse_transfer" not in stripe_server.state.refund_options.get(
        refund.stripe_refund_id, {}
    )
    back = {r.payee_id: r.amount for r in GardenPayout.objects.filter(payment=refund)}
    assert back == {alice.pk: -4, cy.pk: -3}
    assert (refund.amount, refund_expert_amount(refund)) == (-10, -7)
    for who, account in ((alice, alice_paid_out), (cy, cy_account)):
        transfer = stripe_gateway.transfer_retrieve(transfers[account.stripe_account_id]["id"])
        assert transfer.amount_reversed == -back[who.pk]
        lines = statement_for(expert=who, month=refund.period).gardens
        paid = sum(line.paid for line in lines)
        if refund.period == payment.period:
            assert paid == transfer.amount - transfer.amount_reversed
        else:
            assert paid == -transfer.amount_reversed
    reconcile()
    assert not ReconciliationIssue.objects.filter(kind="payment_mismatch").exists()


def refund_expert_amount(refund: Payment) -> int:
    refund.refresh_from_db()
    return refund.expert_amount


def payment_expert_amount(payment: Payment) -> int:
    payment.refresh_from_db()
    return payment.expert_amount
