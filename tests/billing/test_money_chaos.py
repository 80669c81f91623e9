"""The money chaos test: random lives of a listing's commerce, against the local Stripe.

Hypothesis draws sequences of buyer actions (check out, pay, abandon, cancel, resume,
call, download), moderator actions (refund in full or in part, revoke, suspend), the
expert's (delist) and Stripe's own (a subscription's period ends: renewed, or ended; a
renewal's payment fails), while Stripe's webhooks arrive duplicated, out of order, or
never; sometimes Stripe is unreachable when the outbox sends. Then time passes (the
outbox's backoffs run out) and the reconciler runs. After it, the invariants that
docs/reliability.md states must hold, checked against Stripe's own records:

1. every amount paid is either live access or refunded;
2. no live subscription bills a licence that is not live;
3. no call is served without a live licence or trial;
4. the expert's statements equal what Stripe's side shows, to the cent;
5. no event fails forever (every stored event is processed) and the outbox is empty.

`make test` runs NICHE_CHAOS_EXAMPLES=50 sequences (the default); `make reliability`
runs 1,000. Each sequence runs in its own savepoint and a fresh local Stripe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import count

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from billing import stripe_gateway
from billing.errors import PaymentProviderUnavailable
from billing.export_bundle import export_bundle_check
from billing.models import (
    LIVE_LICENCE_STATUSES,
    IntentStatus,
    Licence,
    OfferKind,
    Payment,
    PaymentKind,
    StripeEvent,
    StripeIntent,
)
from billing.reconciler import reconcile
from billing.refunds import payment_refund
from billing.selectors import licence_for_call, statement_for
from billing.services import (
    licence_cancel_by_buyer,
    licence_resume,
    licence_revoke,
    usage_record,
    usage_settle,
)
from billing.stripe_sync import BILLING_SUBSCRIPTION_STATUSES, payment_refunded_amount
from listings.services import listing_delist, listing_suspend
from marketplace.errors import ApplicationError
from tests.billing.conftest import make_offer
from tests.billing.stripe_server import post_webhook
from tests.billing.test_checkout_stripe import CHECKOUT, onboard
from tests.billing.test_money_defects import committed
from tests.conftest import make_user
from tests.listings.conftest import make_listing

EXAMPLES = int(os.environ.get("NICHE_CHAOS_EXAMPLES", "50"))
KINDS = (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION, OfferKind.DOWNLOAD)
_names = count()

# Buying, paying and delivering come up more often than the rest, so most sequences
# reach money (weights by repetition: st.one_of picks a branch uniformly).
_CHECKOUT = st.tuples(st.just("checkout"), st.integers(0, 1), st.sampled_from(KINDS))
_PAY = st.tuples(st.just("pay"), st.integers(0, 5))
_DELIVER = st.tuples(st.just("deliver"), st.integers(0, 50))
_CALL = st.tuples(st.just("call"), st.integers(0, 1))
ACTIONS = st.one_of(
    _CHECKOUT,
    _CHECKOUT,
    _PAY,
    _PAY,
    _DELIVER,
    _DELIVER,
    _DELIVER,
    _DELIVER,
    _CALL,
    _CALL,
    st.tuples(st.just("abandon"), st.integers(0, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("resume"), st.integers(0, 5)),
    st.tuples(st.just("download"), st.integers(0, 1)),
    st.tuples(st.just("refund"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("revoke"), st.integers(0, 5)),
    st.tuples(st.just("period_ends"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("duplicate"), st.integers(0, 50)),
    st.tuples(st.just("lose"), st.integers(0, 50)),
    st.tuples(st.just("outage"), st.booleans()),
    st.tuples(st.just("suspend")),
    st.tuples(st.just("delist")),
)


@dataclass
class World:
    expert: object
    moderator: object
    buyers: list
    listing: object
    offers: dict
    api: object
    client: object
    stripe: object
    pool: list = field(default_factory=list)  # deliveries Stripe sent, not yet delivered
    served: list = field(default_factory=list)  # (licence id, when) of every admitted call
    fetched: list = field(default_factory=list)  # (licence id, when) of every bundle grant

    def licences(self):
        return Licence.objects.filter(listing=self.listing).order_by("created_at")

    def pick(self, index: int, **filters):
        rows = list(self.licences().filter(**filters))
        return rows[index % len(rows)] if rows else None

    def collect(self) -> None:
        self.pool.extend(self.stripe.undelivered_events())


def _try(action, *args, **kwargs):
    """Run an action as a request would; a refusal in the error contract is fine."""
    try:
        return committed(action, *args, **kwargs)
    except ApplicationError:
        return None


def step(world: World, action: tuple) -> None:
    name, *args = action
    now = timezone.now()
    if name == "checkout":
        buyer, kind = world.buyers[args[0]], args[1]
        committed(world.api(buyer).post, CHECKOUT, {"offer_id": str(world.offers[kind].id)},
                  format="json")  # fmt: skip
    elif name in ("pay", "abandon"):
        licence = world.pick(args[0], status="pending")
        if licence is None or not licence.stripe_checkout_session_id:
            return
        session = world.stripe.state.sessions.get(licence.stripe_checkout_session_id)
        if session is None or session["status"] != "open":
            return
        if name == "pay":
            world.pool.append(world.stripe.complete_checkout(session["id"]))
        else:
            stripe_gateway.checkout_session_expire(session_id=session["id"], key=f"x{now}")
            world.pool.append(world.stripe.send_event("checkout.session.expired", session["id"]))
    elif name == "cancel":
        licence = world.pick(args[0], status__in=LIVE_LICENCE_STATUSES)
        if licence is not None:
            _try(licence_cancel_by_buyer, buyer=licence.buyer, licence_id=licence.pk)
    elif name == "resume":
        licence = world.pick(args[0], cancel_at_period_end=True)
        if licence is not None:
            _try(licence_resume, buyer=licence.buyer, licence_id=licence.pk)
    elif name == "call":
        buyer = world.buyers[args[0]]
        try:
            check = licence_for_call(user=buyer, listing_slug=world.listing.slug)
            check.require_calls(1)
            key = f"call-{next(_names)}"
            usage_record(licence_id=check.licence_id, idempotency_key=key)
        except ApplicationError:
            return
        usage_settle(idempotency_key=key, status="ok")
        world.served.append((check.licence_id, timezone.now()))
    elif name == "download":
        buyer = world.buyers[args[0]]
        try:
            export_bundle_check(user=buyer, version_id=world.listing.live_version_id)
        except ApplicationError:
            return
        licence = world.licences().filter(buyer=buyer, kind=OfferKind.DOWNLOAD).first()
        world.fetched.append((licence.pk, timezone.now()))
    elif name == "refund":
        payments = list(
            Payment.objects.filter(licence__listing=world.listing)
            .exclude(kind=PaymentKind.REFUND)
            .order_by("id")
        )
        if payments:
            payment = payments[args[0] % len(payments)]
            amount = None if args[1] else max(1, payment.amount // 3)
            _try(payment_refund, payment=payment, actor=world.moderator, reason="Chaos",
                 amount=amount)  # fmt: skip
    elif name == "revoke":
        licence = world.pick(args[0], status__in=LIVE_LICENCE_STATUSES)
        if licence is not None:
            _try(licence_revoke, licence_id=licence.pk, actor=world.moderator, reason="Chaos")
    elif name == "period_ends":
        licence = world.pick(args[0], kind__in=(OfferKind.PER_CALL, OfferKind.SUBSCRIPTION))
        if licence is None or not licence.stripe_subscription_id:
            return
        sub = stripe_gateway.subscription_retrieve(licence.stripe_subscription_id)
        if sub.status in ("active", "past_due"):
            world.stripe.advance_subscription(sub.id, fail=args[1])
    elif name in ("deliver", "duplicate", "lose"):
        if not world.pool:
            return
        index = args[0] % len(world.pool)
        delivery = world.pool[index] if name == "duplicate" else world.pool.pop(index)
        if name != "lose":
            assert post_webhook(world.client, delivery).status_code == 200
    elif name == "outage":
        world.stripe.outage = args[0]
    elif name == "suspend":
        _try(listing_suspend, moderator=world.moderator, listing_id=world.listing.pk,
             reason="Chaos")  # fmt: skip
    elif name == "delist":
        _try(listing_delist, owner=world.expert, listing_id=world.listing.pk)
    world.collect()


def time_passes_and_the_reconciler_runs(world: World) -> None:
    world.stripe.outage = False
    for _ in range(3):  # the reconciler's repairs may need a second pass to settle
        StripeIntent.objects.filter(status=IntentStatus.PENDING).update(
            next_attempt_at=timezone.now() - timedelta(seconds=1),
            created_at=timezone.now() - timedelta(minutes=5),
        )
        StripeEvent.objects.filter(processed_at__isnull=True).update(
            next_attempt_at=None, received_at=timezone.now() - timedelta(minutes=10)
        )
        committed(reconcile)
        world.collect()
        world.pool.clear()  # what is still in flight is lost: the reconciler finds it


def check_invariants(world: World) -> None:
    licences = list(world.licences())
    by_id = {licence.pk: licence for licence in licences}
    # 1. Every amount paid is live access or refunded (and Stripe agrees on the refunds).
    for payment in Payment.objects.filter(licence__in=licences).exclude(kind=PaymentKind.REFUND):
        licence = by_id[payment.licence_id]
        refunded = payment_refunded_amount(payment)
        charge = stripe_gateway.charge_retrieve(payment.stripe_charge_id)
        assert refunded == charge.amount_refunded, (payment, refunded, charge.amount_refunded)
        covered = licence.activated_at is not None and (
            licence.ended_at is None or payment.created_at <= licence.ended_at
        )
        assert refunded == payment.amount or covered, (licence, payment, licence.end_reason)
    # 2. No live subscription bills a licence that is not live.
    for licence in licences:
        if not licence.stripe_subscription_id:
            continue
        sub = stripe_gateway.subscription_retrieve(licence.stripe_subscription_id)
        billing = sub.status in BILLING_SUBSCRIPTION_STATUSES and not sub.cancel_at_period_end
        assert not billing or licence.status in LIVE_LICENCE_STATUSES, (licence, sub.status)
    # 3. No call is served, and no bundle granted, outside a live licence's life.
    for licence_id, when in world.served + world.fetched:
        licence = by_id[licence_id]
        assert licence.activated_at is not None and licence.activated_at <= when, licence
        assert licence.ended_at is None or when <= licence.ended_at, licence
    # 4. The expert's statements equal Stripe's books, to the cent.
    account = world.expert.connect_account.stripe_account_id
    transfers = [t for t in world.stripe.state.transfers.values() if t["destination"] == account]
    charges = [stripe_gateway.charge_retrieve(t["source_transaction"]) for t in transfers]
    fees = [
        stripe_gateway.application_fee_retrieve(c.application_fee_id)
        for c in charges
        if c.application_fee_id
    ]
    stripe_books = {
        "gross": sum(c.amount for c in charges),
        "refunds": -sum(c.amount_refunded for c in charges),
        "platform_fee": sum(f.amount - f.amount_refunded for f in fees),
        "net": sum(
            stripe_gateway.transfer_retrieve(t["id"]).amount
            - stripe_gateway.transfer_retrieve(t["id"]).amount_reversed
            for t in transfers
        ),
    }
    ours = {"gross": 0, "refunds": 0, "platform_fee": 0, "net": 0}
    months = set(Payment.objects.filter(licence__in=licences).values_list("period", flat=True))
    for month in months:
        totals = statement_for(expert=world.expert, month=month).totals.get("usd", {})
        for name in ours:
            ours[name] += totals.get(name, 0)
    assert ours == stripe_books
    # 5. No event fails forever; nothing is left in the outbox.
    assert not StripeEvent.objects.filter(processed_at__isnull=True).exists()
    assert not StripeIntent.objects.filter(status=IntentStatus.PENDING).exists()
    failed = StripeIntent.objects.filter(status=IntentStatus.FAILED)
    assert all("refund" in f.kind or "expire" in f.kind for f in failed), list(failed)


@pytest.fixture
def unreachable_when_out(stripe_server, monkeypatch):
    """`stripe_server.outage = True` makes the outbox's writes fail as an unreachable
    Stripe does (reads still answer, as in a partial outage)."""
    from billing import stripe_outbox

    stripe_server.outage = False
    real_call = stripe_outbox._call

    def call(intent):
        if stripe_server.outage:
            raise PaymentProviderUnavailable("Stripe is unreachable (chaos)")
        return real_call(intent)

    monkeypatch.setattr(stripe_outbox, "_call", call)
    return stripe_server


@pytest.mark.timeout(max(300, EXAMPLES * 4))  # ~0.6 s a sequence on 2 idle cores
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    # Every sequence opens with purchases paid at Stripe (their webhooks in flight), so
    # what follows acts on money; then anything may happen.
    opening=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(KINDS)), min_size=1, max_size=3),
    delivered=st.booleans(),  # their webhooks arrive before anything else happens
    actions=st.lists(ACTIONS, min_size=4, max_size=24),
)
def test_money_invariants_hold_after_any_sequence(
    opening, delivered, actions, db, api, client, unreachable_when_out
):
    stripe_server = unreachable_when_out
    stripe_server.reset()
    example = transaction.atomic()
    example._from_testcase = True  # the example's rollback scope counts as the test's own
    example.__enter__()
    try:
        n = next(_names)
        expert = make_user(f"expert{n}@chaos.test", is_expert=True)
        moderator = make_user(f"moderator{n}@chaos.test", is_staff=True)
        from django.contrib.auth.models import Group

        from accounts.models import MODERATORS_GROUP

        moderator.groups.add(Group.objects.get(name=MODERATORS_GROUP))
        listing = make_listing(expert, moderator=moderator, title=f"Chaos {n}",
                               on_prem_download=True, commercial_use=True)  # fmt: skip
        onboard(api, expert, stripe_server, client)
        world = World(
            expert=expert,
            moderator=moderator,
            buyers=[make_user(f"buyer{n}-{i}@chaos.test") for i in range(2)],
            listing=listing,
            offers={kind: make_offer(listing, kind) for kind in KINDS},
            api=api,
            client=client,
            stripe=stripe_server,
        )
        for buyer, kind in opening:
            step(world, ("checkout", buyer, kind))
            step(world, ("pay", -1))
        while delivered and world.pool:
            step(world, ("deliver", 0))
        for action in actions:
            step(world, action)
        time_passes_and_the_reconciler_runs(world)
        check_invariants(world)
        payments = Payment.objects.filter(licence__listing=world.listing)
        event(f"licences activated: {world.licences().exclude(activated_at=None).count()}")
        event(f"payments: {payments.exclude(kind=PaymentKind.REFUND).count()}")
        event(f"refunds: {payments.filter(kind=PaymentKind.REFUND).count()}")
        event(f"calls served: {len(world.served)}")
    finally:
        transaction.set_rollback(True)
        example.__exit__(None, None, None)
